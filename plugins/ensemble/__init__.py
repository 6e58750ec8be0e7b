"""Output ensembles and early-exit cascades: members of any architecture and one label space, combined by
their predictions (Xia & Bouganis, "Window-Based Early-Exit Cascades for Uncertainty Estimation", 2023); and
ensembles of representations (``concat``: Zhang & Bottou 2023), the members' features under one new head.

- ``strategy.py``: ``--strategy ensemble`` and ``--strategy cascade``
- ``module.py``: the module the output loads as (members, their preprocessing, exits, MACs), on disk and back
- ``concat.py``, ``concat_net.py``: ``--strategy concat`` (the members' features side by side, one linear head)
  and the module it loads as
- ``selective.py``: scores, the risk–coverage curve, AURC, operating thresholds and the paper's windows
"""

import zoo



@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.ensemble.concat import Concat
    from zoo.plugins.ensemble.strategy import Cascade, Ensemble

    return [Ensemble, Cascade, Concat]


@zoo.hookimpl
def zoo_open_output(folder, config):
    if config.get("zoo_type") == "concat":
        from zoo.plugins.ensemble import concat_net, module

        return module.load_folder(folder, concat_net.from_config)
    if config.get("zoo_type") != "ensemble":
        return None
    from zoo.plugins.ensemble import module

    return module.load_folder(folder)
