"""Labelled image data, preprocessed the member's way (timm's data config): a held-out ``Split``
(``load_split``, ``data_config``) and an augmented training loader (``augmented_loader``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "Split": "zoo.kit.data.splits",
    "load_split": "zoo.kit.data.splits",
    "data_config": "zoo.kit.data.splits",
    "augmented_loader": "zoo.kit.data.splits",
    "common_labels": "zoo.kit.data.splits",
    "label_names": "zoo.kit.data.splits",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
