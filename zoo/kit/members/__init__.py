"""Members and the folders they live in: ``Member`` (lazy tensors, pinned files), the layouts a member comes
in (``MemberFormat``, timm's ``TimmFormat``; the formats in use: ``formats``, one by name: ``named_format``),
a member computed from another's tensors (``derived``: a conversion between formats), a member from a folder
or a file (``from_folder``, ``from_file``, what a repo holds: ``SAFE_INDEX``, ``PICKLE_NAMES``), from the
Hub (``PREFIX`` of ``hf-hub:`` specs, ``parse``, ``download``; ``folder_of`` for either kind of spec), and
an output folder of one's own, written atomically (``check_out``, ``atomic_folder``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "Member": "zoo.kit.members.member",
    "derived": "zoo.kit.members.derived_member",
    "PREPROCESSING": "zoo.kit.members.member",
    "joined": "zoo.kit.members.derived_member",
    "MemberFormat": "zoo.kit.members.format",
    "TimmFormat": "zoo.kit.members.timm_format",
    "formats": "zoo.kit.members.format_registry",
    "named_format": "zoo.kit.members.format_registry",
    "convert": "zoo.kit.members.format_registry",
    "from_folder": "zoo.kit.members.member",
    "from_file": "zoo.kit.members.member",
    "SAFE_INDEX": "zoo.kit.members.member",
    "PICKLE_NAMES": "zoo.kit.members.member",
    "PREFIX": "zoo.kit._infra.hub_client",
    "parse": "zoo.kit._infra.hub_client",
    "download": "zoo.kit._infra.hub_client",
    "folder_of": "zoo.kit._infra.hub_client",
    "check_out": "zoo.kit._infra.output_folder",
    "atomic_folder": "zoo.kit._infra.output_folder",
    "timm_config": "zoo.kit._infra.output_folder",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)
