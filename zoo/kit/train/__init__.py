"""Training: the one loop (``train``, its ``LoopOptions``, a ``Step``'s loss, ``ddp``/``unwrap``/``share`` under
torchrun, the ``CHECKPOINT`` file name), ``resume_state`` for ``--resume``, the LP / FT / LP-FT recipe of
``zoo finetune`` (``Recipe``, ``fit``, ``probe_head`` — its linear probe on fixed features —, ``model_for``,
``config_for``, ``class_names``), BatchNorm statistics
(``has_batchnorm``, ``recompute_bn_stats``, ``freeze_bn_stats``), the diagonal Fisher
(``diagonal_fisher``), devices (``resolve_device``, ``autocast``, ``to_device``) and LoRA through PEFT
(``LoraSpec``, ``parse_lora``, ``wrap_lora``, ``adaptable``: ``zoo finetune --lora``; ``fit(..., lora=)``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "train": "zoo.kit.train.loop",
    "LoopOptions": "zoo.kit.train.loop",
    "Step": "zoo.kit.train.loop",
    "ddp": "zoo.kit.train.loop",
    "unwrap": "zoo.kit.train.loop",
    "share": "zoo.kit.train.loop",
    "CHECKPOINT": "zoo.kit.train.loop",
    "resume_state": "zoo.kit.train.checkpoint",
    "Recipe": "zoo.kit.train.recipe",
    "fit": "zoo.kit.train.recipe",
    "probe_head": "zoo.kit.train.recipe",
    "model_for": "zoo.kit.train.recipe",
    "config_for": "zoo.kit.train.recipe",
    "class_names": "zoo.kit.train.recipe",
    "has_batchnorm": "zoo.kit.train.batchnorm",
    "recompute_bn_stats": "zoo.kit.train.batchnorm",
    "freeze_bn_stats": "zoo.kit.train.batchnorm",
    "diagonal_fisher": "zoo.kit.train.fisher",
    "resolve_device": "zoo.kit.train.device",
    "autocast": "zoo.kit.train.device",
    "to_device": "zoo.kit.train.device",
    "state_on_cpu": "zoo.kit.train.device",
    "recomputed_state": "zoo.kit.train.batchnorm",
    "LoraSpec": "zoo.kit.train.lora",
    "parse_lora": "zoo.kit.train.lora",
    "wrap_lora": "zoo.kit.train.lora",
    "adaptable": "zoo.kit.train.lora",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
