"""Transferability metrics for ``zoo select``: one member's (``metrics.py``: LogME, LEEP, NCE, H-score,
GBC) and a team's (``team.py``: OSBORN, MS-LEEP, E-LEEP)."""

import zoo



@zoo.hookimpl
def zoo_transferability_metrics():
    from zoo.plugins.transfer.metrics import METRICS
    from zoo.plugins.transfer.team import TEAM_METRICS

    return [*METRICS, *TEAM_METRICS]
