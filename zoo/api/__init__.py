"""The Python API: what the CLI calls and users import as ``zoo.combine``, ``zoo.select`` …

- ``combine.py``: resolve members, run a strategy, save the result (``combine``, ``save``, ``load_member(s)``)
- ``finetune.py``, ``evaluate.py``, ``load.py``, ``push.py``: one command each
- ``selection/``: ``zoo select`` (ranking, validation, the output folder, the early config/header check)
- ``discover.py``: ``zoo discover`` (the Hub's models derived from a base, which fit it, a zoo file of them)
- ``recipe.py``: ``zoo run`` (recipe files: steps checked as a whole, then run in order)
- ``reproduce.py``: ``zoo reproduce`` (re-run an output's zoo.json, compare the bytes, name the cause)
- ``card.py``: the model card of an output
"""
