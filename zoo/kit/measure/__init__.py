"""Measuring models: logits and metrics on a split (``predict``, ``evaluate_model``, ``Metrics``,
``macs_per_image``), selective classification (``scores``, ``risk_coverage``, ``selective_metrics``),
cached pre-logits features (``extract``), the loss barrier along the linear path between two
models (``alpha_grid``, ``loss_path``, ``path_barrier``), measurements kept on disk by what they were computed
from (``cached_json``, ``member_identity``, ``data_identity``) and the transferability-metric contract
(``TransferMetric``, ``TargetView``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "Metrics": "zoo.kit.measure.metrics",
    "predict": "zoo.kit.measure.metrics",
    "evaluate_model": "zoo.kit.measure.metrics",
    "macs_per_image": "zoo.kit.measure.metrics",
    "scores": "zoo.kit.measure.selective",
    "risk_coverage": "zoo.kit.measure.selective",
    "selective_metrics": "zoo.kit.measure.selective",
    "extract": "zoo.kit.measure.features",
    "alpha_grid": "zoo.kit.measure.barrier",
    "loss_path": "zoo.kit.measure.barrier",
    "path_barrier": "zoo.kit.measure.barrier",
    "cached_json": "zoo.kit.measure.cached",
    "member_identity": "zoo.kit.measure.cached",
    "data_identity": "zoo.kit.measure.cached",
    "TransferMetric": "zoo.kit.measure.transferability",
    "TargetView": "zoo.kit.measure.transferability",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
