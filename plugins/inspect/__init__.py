"""`zoo inspect`: will these members merge? Measured before merging, on held-out data.

- ``measure.py``: the measurements, in order, and the checks of the input
- ``landscape.py``: sharpness (Hessian top eigenvalue, power iteration) and Hessian trace (Hutchinson)
- ``geometry.py``: task-vector norms and cosines (streamed), pairwise agreement of predictions
- ``advice.py``: the advice in plain words and its thresholds; ``heatmap.py``: the figure of the barriers
- ``cli.py``: the ``zoo inspect`` command
"""

import zoo


@zoo.hookimpl
def zoo_commands(app, cli):
    from zoo.plugins.inspect.cli import add_inspect

    add_inspect(app, cli)
