"""Output ensembles and early-exit cascades: members of any architecture and one label space, combined by
their predictions (Xia & Bouganis, "Window-Based Early-Exit Cascades for Uncertainty Estimation", 2023).

- ``strategy.py``: ``--strategy ensemble`` and ``--strategy cascade``
- ``module.py``: the module the output loads as (members, their preprocessing, exits, MACs), on disk and back
- ``selective.py``: scores, the risk–coverage curve, AURC, operating thresholds and the paper's windows
"""

import zoo



@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.ensemble.strategy import Cascade, Ensemble

    return [Ensemble, Cascade]


@zoo.hookimpl
def zoo_open_output(folder, config):
    if config.get("zoo_type") != "ensemble":
        return None
    from zoo.plugins.ensemble import module

    return module.load_folder(folder)
