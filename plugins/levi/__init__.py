"""LEVI (Roh et al. 2024): a pre-trained model ensembled layer by layer with a small model trained from scratch.

- ``strategy.py``: ``zoo combine --strategy levi`` (options, training with the kit's loop)
- ``net.py``: the network (views, adapting layers) and its files
"""

import zoo



@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.levi.strategy import Levi

    return [Levi]


@zoo.hookimpl
def zoo_open_output(folder, config):
    if config.get("zoo_type") != "levi":
        return None
    from zoo.plugins.levi import net

    return net.load_folder(folder)
