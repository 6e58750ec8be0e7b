"""Tensors of every member, streamed: the streaming core (``map_tensors``; ``scan_tensors``, a pass that
keeps nothing; ``result_dtypes``, the dtypes it writes, ``torch_dtype`` of a safetensors dtype name), state-dict
arithmetic on it (``weighted_sum``, ``uniform_average``, ``lerp``,
``fisher_lerp``, ``task_vector(s)``, ``add``, ``scale``, ``keep_largest``), the check that members have
the same tensors (``check_compatible``) and per-member statistics kept on disk (``Spill``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "map_tensors": "zoo.kit.tensors.stream",
    "scan_tensors": "zoo.kit.tensors.stream",
    "result_dtypes": "zoo.kit.tensors.stream",
    "torch_dtype": "zoo.kit._infra.safetensors_reader",
    "check_compatible": "zoo.kit.tensors.headers",
    "weighted_sum": "zoo.kit.tensors.weights",
    "uniform_average": "zoo.kit.tensors.weights",
    "lerp": "zoo.kit.tensors.weights",
    "fisher_lerp": "zoo.kit.tensors.weights",
    "task_vector": "zoo.kit.tensors.weights",
    "task_vectors": "zoo.kit.tensors.weights",
    "add": "zoo.kit.tensors.weights",
    "scale": "zoo.kit.tensors.weights",
    "keep_largest": "zoo.kit.tensors.weights",
    "is_statistic": "zoo.kit.tensors.weights",
    "Spill": "zoo.kit.tensors.spill",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
