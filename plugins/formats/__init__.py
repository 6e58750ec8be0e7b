"""The built-in member formats: timm's layout and transformers' image classifiers (``transformers_format``),
with exact conversion between the two for the families whose layers correspond (``convert``)."""

from __future__ import annotations

import zoo


@zoo.hookimpl
def zoo_member_formats():
    from zoo.kit.members import TimmFormat
    from zoo.plugins.formats.transformers_format import TransformersFormat

    return [TimmFormat(), TransformersFormat()]
