"""The kit: everything a plugin (built-in or outside) builds on, and nothing above it.

Two layers. What a plugin may use is grouped in sub-packages whose names say what they hold; each
exports its names in ``__all__`` (its ``NAMES`` table), and a plugin imports only those:

- ``zoo.kit.strategy``: the strategy contract (Strategy, Context, Combined), options, errors;
- ``zoo.kit.members``: Member, members from folders, files and the Hub, output folders of one's own;
- ``zoo.kit.tensors``: the streaming core over members' tensors and state-dict arithmetic, Spill;
- ``zoo.kit.merge``: ``merge_method``, the merge contract, and the model-wide top-k of task vectors;
- ``zoo.kit.train``: the one training loop, checkpoints, the fine-tune recipe, BatchNorm, Fisher, devices;
- ``zoo.kit.data``: labelled image data preprocessed the member's way;
- ``zoo.kit.measure``: metrics, selective classification, features, the transferability contract;
- ``zoo.kit.card``: model-card sections and figures.

Below them, ``zoo.kit._infra`` is the private infrastructure (reading and writing tensors, the output
folder, caches, the Hub client, path scrubbing, progress, distributed start-up): only zoo's API, CLI,
demos and the kit itself import it. The kit imports nothing from zoo's API, CLI, plugins or registry.
"""
