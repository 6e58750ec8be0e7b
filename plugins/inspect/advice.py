"""Advice in plain words from what `zoo inspect` measured, and the thresholds behind it.

The barrier thresholds come from the measurements in bench/RESULTS.md, section "Permutation alignment",
sub-section "Weight matching against activation matching" (held-out loss barrier along the linear path,
BatchNorm statistics recomputed, then merges of 3 with `zoo combine -s rebasin`); docs/usage.md
("zoo inspect") states them with those numbers. The cosine threshold is a sign rule, not a measurement.
"""

from __future__ import annotations

#: pairs below this loss barrier merged well in the bench: barriers 0.027–0.241 gave merges of 3 at
#: 91.1–99.2% top-1 (best member 99.7–100%)
BARRIER_CONNECTED = 0.3
#: pairs above this merged near chance unless alignment brought them under BARRIER_CONNECTED: 1.519 (narrow
#: ResNet, weight matching) → 24.5%, the ViTs' 1.9–3.7 → 10–23%; the unaligned wide ResNet at 0.785 kept 37.9%
BARRIER_FAR = 1.5
#: task vectors pointing against each other (negative cosine) pull the merge in opposite directions: the
#: sign conflicts TIES elects away and TSV decorrelates. A sign rule, not a bench measurement.
COSINE_CONFLICT = 0.0


def _pair(key: str) -> str:
    a, b = key.split("|", 1)
    return f"{a} and {b}"


def advise(report: dict) -> list[str]:
    """Lines of advice from ``report`` (`zoo inspect`'s measurements), most important first."""
    lines: list[str] = []
    barriers = {k: v["loss_barrier"] for k, v in report.get("barriers", {}).items()}
    if barriers:
        worst_key = max(barriers, key=barriers.get)
        worst = barriers[worst_key]
        if worst < BARRIER_CONNECTED:
            lines.append(f"connected: every pairwise loss barrier is below {BARRIER_CONNECTED} (largest {worst:.3f}, "
                         f"{_pair(worst_key)}): a soup will do (zoo combine -s soup)")
        else:
            far = sorted(k for k, v in barriers.items() if v >= BARRIER_CONNECTED)
            lines.append(f"barrier {worst:.3f} between {_pair(worst_key)} ({len(far)} of {len(barriers)} pairs at "
                         f"or above {BARRIER_CONNECTED}): align first (zoo align MEMBER --to REFERENCE, or zoo "
                         "combine -s rebasin; --method activations where weight matching does not connect them), "
                         "then inspect again")
            if worst >= BARRIER_FAR:
                lines.append(f"barriers at or above {BARRIER_FAR} merged near chance in the bench unless alignment "
                             f"brought them below {BARRIER_CONNECTED}; if it does not, ensemble their outputs instead "
                             "(zoo combine -s ensemble)")
        if report.get("batchnorm") and not report.get("batchnorm_recomputed"):
            lines.append("these members have BatchNorm and the barriers were measured with interpolated statistics, "
                         "which overstate them (the bench: 4.09 against 0.749 recomputed): pass --train-data to "
                         "recompute them along the path")
    tv = report.get("task_vectors")
    if tv:
        known = {k: c for k, c in tv["cosines"].items() if c is not None}
        conflicts = {k: c for k, c in known.items() if c < COSINE_CONFLICT}
        if not known:
            lines.append("no pair of non-zero task vectors: every member but one is the base itself")
        elif conflicts:
            shown = ", ".join(f"{_pair(k)} {c:.3f}" for k, c in sorted(conflicts.items(), key=lambda kv: kv[1])[:3])
            lines.append(f"task vectors interfere (cosines below {COSINE_CONFLICT}: {shown}): try TIES or TSV "
                         "(zoo combine -s ties / -s tsv --base BASE)")
        else:
            low = min(known.values())
            lines.append(f"task vectors do not conflict (every cosine ≥ {COSINE_CONFLICT}; lowest {low:.3f}): task "
                         "arithmetic or a soup of them has no sign conflict to resolve")
    return lines
