"""Before ``zoo select`` downloads any weights: every Hub candidate's config and safetensors header.

Selection ranks candidates of any architecture, so "compatible" here means "can be ranked": a timm
architecture timm knows, in a config.json, and safetensors weights (or a pickle with --allow-pickle). A
candidate that cannot is reported in seconds, from two small reads (config.json, and the safetensors
header by HTTP range requests), instead of after the other candidates' downloads.
"""

from __future__ import annotations

import json
from typing import Sequence

from zoo.kit.strategy.errors import BadInput
from zoo.kit._infra.progress import Progress, Silent


def problems(specs: Sequence[str], *, allow_pickle: bool = False, progress: Progress | None = None) -> dict[str, BadInput]:
    """{spec: what is wrong} for the Hub candidates that cannot be ranked; local ones are left to loading."""
    from zoo.kit.members.timm_format import check_architecture
    from zoo.kit._infra.hub_client import PREFIX, parse, safetensors_header, small_file

    hub = [s for s in specs if s.startswith(PREFIX)]
    found: dict[str, BadInput] = {}
    if not hub:
        return found
    task = (progress or Silent()).task("reading configs and headers", total=len(hub))
    for spec in hub:
        try:
            repo_id, revision = parse(spec)
            config = small_file(repo_id, "config.json", revision, f"member {spec}")
            if config is None:
                raise BadInput(f"member {spec}: no config.json: not a timm model repo")
            arch = json.loads(config.read_text()).get("architecture")
            if not arch:
                raise BadInput(f"member {spec}: its config.json names no timm architecture")
            check_architecture(arch, spec)
            if not allow_pickle:
                safetensors_header(repo_id, revision, f"member {spec}")
        except BadInput as e:  # a Hub that is down (HubError) is not the member's fault: it stops the run
            found[spec] = BadInput(f"{e} (seen before downloading any weights)")
        task.advance()
    task.close()
    return found
