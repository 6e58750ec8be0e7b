"""SN-Net stitching (Pan et al., Stitchable Neural Networks, 2023): the strategy, the stitched network, its
files, and the `zoo stitch` commands — all of stitching, in one plugin.

- ``strategy.py``: ``zoo combine --strategy stitch`` (options, members → a trained stitched network)
- ``blocks.py``: how a timm family (ViT, EfficientNet) splits into stem, blocks and head
- ``snnet.py``: the stitched network (configurations, stitching layers, least squares, ``select``)
- ``loop.py``: its training and measurement (FLOPs, accuracy, Pareto front)
- ``io.py``: config.json + safetensors in and out; ``export.py``: list and export configurations
- ``cli.py``: ``zoo stitch list`` and ``zoo stitch export``
"""

import zoo



@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.stitch.strategy import Stitch

    return [Stitch]


@zoo.hookimpl
def zoo_commands(app, cli):
    from zoo.plugins.stitch.cli import stitch_app

    app.add_typer(stitch_app(cli), name="stitch")


@zoo.hookimpl
def zoo_open_output(folder, config):
    from zoo.plugins.stitch import io

    return io.load_folder(folder) if io.is_snnet(config) else None
