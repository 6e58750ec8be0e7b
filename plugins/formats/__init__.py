"""The built-in member formats: timm's layout, transformers' image classifiers (``transformers_format``) with
exact conversion between the two for the families whose layers correspond (``convert``), and PEFT's LoRA
adapters, differences to a base in either (``peft_adapter``)."""

from __future__ import annotations

import zoo


@zoo.hookimpl
def zoo_member_formats():
    from zoo.kit.members import TimmFormat
    from zoo.plugins.formats.peft_adapter import AdapterFormat
    from zoo.plugins.formats.transformers_format import TransformersFormat

    return [TimmFormat(), TransformersFormat(), AdapterFormat()]
