"""zoo select: rank members for a target task from one forward pass each, and pick a team.

Data flow: resolve each member → its features and source softmax on the target data
(``zoo.kit.measure.features``, cached on disk) → a :class:`zoo.TargetView` per member → every metric
is a plugin (``zoo_transferability_metrics``): per-member metrics rank, a team metric
drives greedy ensemble selection → optional validation by a real linear probe per member
(Kendall's τ between metric and probe accuracy) → the output folder (``zoo.api.selection.output``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from zoo.kit.strategy.errors import BadInput, ZooError
from zoo.kit._infra.progress import Progress, Silent
from zoo.kit.measure.transferability import TargetView, check_views

DEFAULT_TEAM_METRIC = "osborn"


@dataclass
class Selection:
    """What ``zoo select`` found: the ranking, the team (with --ensemble) and the validation."""

    metric: str
    target_data: str
    classes: list[str]
    ranking: list[dict[str, Any]]  # best first: member, spec, score, rank, seconds, ...
    selected: list[str]  # specs of the selected members (top-k, or the team), in order of choice
    team: dict[str, Any] | None = None  # team metric, weights, greedy steps
    validation: dict[str, Any] | None = None  # probe accuracies, Kendall's τ
    failed: list[dict[str, str]] = field(default_factory=list)  # members skipped with --skip-failed
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


def _metric(host, name: str, kind: str):
    known = host.transfer_metrics()
    of_kind = [n for n, (m, _) in known.items() if m.kind == kind]
    if name not in known or known[name][0].kind != kind:
        flag = "--metric" if kind == "member" else "--team-metric"
        raise BadInput(f"unknown {flag} {name!r}; available: {', '.join(of_kind) or 'none'} "
                       "(see `zoo select --list-metrics`)")
    return known[name][0]


def _view(member, extracted, classes: list[str], source=None) -> TargetView:
    view = TargetView(member=member.name, features=extracted.features.double().numpy(),
                      probs=None if extracted.probs is None else extracted.probs.double().numpy(),
                      labels=extracted.labels.numpy(), num_classes=len(classes))
    if source is not None:
        view.source_features = source.features.double().numpy()
        view.extra["source_labels"] = source.labels.numpy()
    return view


def _greedy_team(views: list[TargetView], specs: list[str], metric, weights: dict[str, float], k: int,
                 progress: Progress) -> tuple[list[int], list[dict[str, Any]]]:
    """Add, k times, the member whose addition gives the team the highest score."""
    chosen: list[int] = []
    steps = []
    current = None
    task = progress.task(f"choosing a team of {k} ({metric.name})", total=k)
    for _ in range(k):
        best, best_score = None, -np.inf
        for i in range(len(views)):
            if i in chosen:
                continue
            score = metric.fn([views[j] for j in chosen + [i]], weights)
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
        steps.append({"added": views[best].member, "spec": specs[best], "score": best_score,
                      "gain": best_score - current if current is not None else None})
        current = best_score
        task.advance()
    task.close()
    return chosen, steps


def select(specs: Sequence[str], target_data: str, *, metric: str = "logme", top_k: int | None = None,
           ensemble: bool = False, team_metric: str = DEFAULT_TEAM_METRIC, weights: dict[str, float] | None = None,
           validate: bool = False, val_data: str | None = None, sources: dict[str, str] | None = None,
           skip_failed: bool = False, host=None, device: str = "auto", arch: str | None = None,
           allow_pickle: bool = False, batch_size: int = 128, progress: Progress | None = None,
           log: Callable[[str], None] | None = None, given: dict[str, str] | None = None) -> Selection:
    """Score every member on ``target_data`` with ``metric``; with ``ensemble``, pick a team of ``top_k``.
    ``given``: folder → how the user gave it (``--target-data DIR``, a zoo's data), named when it is wrong."""
    from zoo import host as _host
    from zoo.kit.train.device import resolve_device
    from zoo.kit.measure.features import extract
    from zoo.registry import resolve
    from zoo.api.selection.data import classes_of

    host = host or _host.load()
    progress, log = progress or Silent(), log or (lambda message: None)
    member_metric = _metric(host, metric, "member")
    team = _metric(host, team_metric, "team") if ensemble else None
    specs = list(specs)
    if not specs:
        raise BadInput("no members to select from; give them with -m SPEC, --zoo NAME or --members-from FILE")
    if top_k is not None and top_k < 1:
        raise BadInput(f"--top-k {top_k}: give a positive number of members to select")
    if top_k is not None and top_k > len(specs):
        raise BadInput(f"--top-k {top_k} is larger than the pool: {len(specs)} member(s) were given")
    if validate and not val_data:
        raise BadInput("--validate needs --val-data: the linear probes are scored on held-out data")
    # the data first: a folder without images is the data's fault, not a member's to skip
    given = given or {}
    classes = classes_of(target_data, given.get(target_data))
    if validate:
        classes_of(val_data, given.get(val_data, f"--val-data {val_data}"))
    for spec, folder in (sources or {}).items():
        classes_of(folder, given.get(folder, f"--source-data {spec}={folder}"))
    dev = resolve_device(device)

    members, views, rows, failed = [], [], [], []
    from zoo.api.selection.headers import problems

    early = problems(specs, allow_pickle=allow_pickle, progress=progress)
    if early and not skip_failed:
        spec, e = next(iter(early.items()))
        raise BadInput(f"{e} — fix or remove it, or pass --skip-failed to rank the others without it")
    task = progress.task("members", total=len(specs))
    for spec in specs:
        try:
            if spec in early:
                raise early[spec]
            member = resolve(spec, host, arch=arch, allow_pickle=allow_pickle)
            member.check_architecture()
            got = extract(member, target_data, classes, dev, batch_size=batch_size, progress=progress)
            src = None
            if sources and spec in sources:
                src = extract(member, sources[spec], classes_of(sources[spec]), dev, batch_size=batch_size,
                              progress=progress)
        except (ZooError, OSError, RuntimeError, ValueError) as e:
            if not skip_failed:
                message = f"{e} — fix or remove it, or pass --skip-failed to rank the others without it"
                if not str(e).startswith(("member ", spec)):
                    message = f"member {spec}: {message}"
                # keep the failure's kind (and exit code): a Hub that is down is not bad input
                raise (type(e) if isinstance(e, ZooError) else BadInput)(message) from None
            failed.append({"spec": spec, "error": str(e)})
            log(f"[yellow]skipped[/] {spec}: {e}")
            task.advance()
            continue
        members.append(member)
        views.append(_view(member, got, classes, src))
        rows.append({"member": member.name, "spec": spec, "architecture": member.architecture,
                     "revision": member.revision, "features_dim": int(got.features.shape[1]),
                     "features": "cache" if got.cached else "computed", "seconds_features": got.seconds})
        task.advance()
    task.close()
    if not views:
        raise BadInput("every member failed; nothing to rank (see the messages above)")
    if top_k is not None and top_k > len(views):
        raise BadInput(f"--top-k {top_k} is larger than the {len(views)} member(s) left after --skip-failed")
    check_views(views)
    notes = []
    headless = [v.member for v in views if v.probs is None]
    if headless and (member_metric.needs != "features" or (team is not None and team.needs != "features")):
        raise BadInput(f"member(s) {', '.join(headless)} have no classifier head, so metrics built on source "
                       f"predictions cannot score them; use --metric logme, hscore or gbc")
    if ensemble and any(v.source_features is None for v in views) and any(v.source_features is not None
                                                                          for v in views):
        # a term measured for some members only would favour the others: use it for all or none
        for v in views:
            v.source_features = None
        notes.append("domain difference left out: source data was given for some members only")

    for row, view in zip(rows, views):
        start = time.perf_counter()
        row["score"] = float(member_metric.fn(view))
        row["seconds_metric"] = time.perf_counter() - start
        if not np.isfinite(row["score"]):
            raise BadInput(f"member {view.member}: {metric} is {row['score']} on this data; its features may be "
                           "degenerate (check with zoo eval), or try another --metric")
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["score"])
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank
    ranking = [rows[i] for i in order]

    result = Selection(metric=metric, target_data=str(target_data), classes=classes, ranking=ranking,
                       selected=[r["spec"] for r in ranking[:top_k or len(ranking)]], failed=failed, notes=notes)
    if ensemble:
        k = top_k or min(3, len(views))
        w = dict(weights or {})
        chosen, steps = _greedy_team(views, [r["spec"] for r in rows], team, w, k, progress)
        result.selected = [rows[i]["spec"] for i in chosen]
        result.team = {"metric": team.name, "weights": w, "k": k, "steps": steps,
                       "terms": {views[i].member: views[i].extra.get("osborn") for i in chosen
                                 if "osborn" in views[i].extra}}
    if validate:
        from zoo.api.selection.validate import validate as _validate

        result.validation = _validate(members, views, rows, ranking, val_data, classes, dev,
                                      batch_size=batch_size, progress=progress, team=result.team)
        from zoo.kit.card.figures import score_vs_accuracy

        result.figures["validation.png"] = score_vs_accuracy(ranking, metric=metric, tau=result.validation["tau"],
                                                             selected=result.selected)
    return result
