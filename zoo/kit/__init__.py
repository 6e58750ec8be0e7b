"""The kit: everything a plugin (built-in or outside) builds on, and nothing above it.

A module a name says: ``strategy`` (Strategy, Context, Combined), ``options``, ``member``, ``weights``
(streamed state-dict arithmetic), ``merge`` and ``stream`` (the merge-method contract and its streaming core),
``topk`` (the top-k of task vectors by magnitude), ``data``, ``metrics``, ``device``, ``distributed``, ``checkpoint``,
``finetune`` (the LP / FT / LP-FT recipe), ``batchnorm``, ``fisher``, ``features``, ``plots``,
``progress``, ``output`` (atomic writes), ``network`` (the Hub), ``transfer`` (transferability
metrics' contract), ``errors``. The kit imports nothing from zoo's API, CLI, plugins or registry.
"""
