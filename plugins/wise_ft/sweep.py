"""WiSE-FT (Wortsman et al., 2022): interpolate a pretrained start and its fine-tune in weight space.

θ(α) = (1−α)·θ₀ + α·θ₁, swept over a grid of α and measured on held-out (in-distribution) and,
with ``--ood-data``, shifted data; the output is θ at the α the pick rule chooses. Optionally
Fisher-weighted. BatchNorm models get their running statistics either interpolated or
re-estimated on training data at every interior α (see ``bn``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import zoo
from zoo.kit.card import Section
from zoo.kit.tensors import check_compatible, fisher_lerp

PICKS = ("best-id", "best-ood", "best-avg")


class WiseFT(zoo.Strategy):
    name = "wise-ft"
    same_tensors = True
    summary = "interpolate a pretrained (or linear-probed) start and its fine-tune in weight space (WiSE-FT)"
    min_members = 2

    @dataclass
    class Options:
        alphas: list[float] = zoo.option(
            [round(0.1 * i, 10) for i in range(11)],
            "the α grid (0 = pretrained end, 1 = fine-tuned end): start:stop:step or a,b,c", min=0, max=1)
        pick: str = zoo.option(
            "alpha=0.5", "which α to output: alpha=X (fixed; the paper's default is 0.5), best-id (held-out "
            "top-1), best-ood or best-avg (need --ood-data: choosing on the shifted data tunes on it)")
        fisher: bool = zoo.option(False, "Fisher-weighted interpolation (needs --train-data)")
        fisher_samples: int = zoo.option(256, "examples for each end's diagonal Fisher (batch 1)", min=1)
        bn: Literal["auto", "interpolate", "recompute"] = zoo.option(
            "auto", "BatchNorm statistics at interior α: interpolate them, recompute them on --train-data, or "
            "auto (with --train-data: both, keeping per α the one with the better held-out top-1)")
        bn_batches: int = zoo.option(20, "batches of --train-data used to recompute BatchNorm statistics", min=1)

    def combine(self, members, options, ctx: zoo.Context) -> zoo.Combined:
        if len(members) != 2:
            raise zoo.BadInput(f"wise-ft takes exactly two members, the pretrained (or linear-probed) end first and "
                               f"the fine-tuned end second; got {len(members)}")
        start, tuned = members
        try:
            check_compatible(members)
        except zoo.IncompatibleMembers as e:
            raise zoo.IncompatibleMembers(
                f"{e}. WiSE-FT interpolates two ends of one fine-tuning run: the start must have the fine-tune's "
                "architecture and head; give a pretrained model a head for the target classes first by fitting "
                "only its classifier on frozen features (a linear probe), and fine-tune from that") from None
        fixed = _parse_pick(options.pick)
        if fixed is None and not ctx.eval_data:
            raise zoo.BadInput(f"pick={options.pick} chooses α by measuring: pass --eval-data (held-out data)")
        if options.pick in ("best-ood", "best-avg") and not ctx.ood_data:
            raise zoo.BadInput(f"pick={options.pick} needs shifted data: pass --ood-data DIR")
        alphas = sorted(set(options.alphas) | ({fixed} if fixed is not None else set()))
        if not ctx.eval_data:
            alphas = [fixed]  # nothing to measure: just the requested point
        # load (and so check) every data set now, before any work
        id_split = ctx.eval_split(start) if ctx.eval_data else None
        ood_split = ctx.ood_split(start) if ctx.ood_data else None
        if options.fisher or options.bn == "recompute":
            ctx.train_split(start)
        a, b = start.state_dict(), tuned.state_dict()
        fa = fb = {}
        if options.fisher:
            from zoo.kit.train import diagonal_fisher

            train = ctx.train_split(start)
            fa = diagonal_fisher(ctx.model(a, start), train, options.fisher_samples, ctx.device, seed=ctx.seed,
                                 progress=ctx.progress)
            fb = diagonal_fisher(ctx.model(b, start), train, options.fisher_samples, ctx.device, seed=ctx.seed,
                                 progress=ctx.progress)
        variants = self._bn_variants(options, start, ctx)

        points, held_out = [], {}  # held_out: (α, variant) → the held-out Metrics (with plugins' metrics)
        task = ctx.progress.task("WiSE-FT sweep", total=sum(len(variants) if 0 < x < 1 else 1 for x in alphas))
        for alpha in alphas:
            mixed = fisher_lerp(a, b, fa, fb, alpha)
            measured = []
            for variant in variants if 0.0 < alpha < 1.0 else variants[:1]:  # the ends are the given models
                sd = _finish(mixed, alpha, variant, start, options, ctx)
                point = {"alpha": alpha, "bn": variant}
                if id_split is not None:
                    m = ctx.evaluate(sd, like=start, split=id_split)
                    held_out[alpha, variant] = m
                    point.update(id_top1=m.top1, id_nll=m.nll, id_ece=m.ece, id_confidence=m.confidence)
                if ood_split is not None:
                    m = ctx.evaluate(sd, like=start, split=ood_split)
                    point.update(ood_top1=m.top1, ood_nll=m.nll, ood_ece=m.ece, ood_confidence=m.confidence)
                measured.append(point)
                task.advance()
            # BN choice per α on held-out data only (ties: the first variant, interpolate)
            max(measured, key=lambda p: p.get("id_top1", 0.0))["kept"] = True
            points += measured
        task.close()
        kept = [p for p in points if p.get("kept")]
        picked = fixed if fixed is not None else _choose(kept, options.pick)
        chosen = next(p for p in kept if p["alpha"] == picked)
        # rebuilt rather than kept from the sweep (one state dict in memory, not one per α); deterministic
        state = _finish(fisher_lerp(a, b, fa, fb, picked), picked, chosen["bn"], start, options, ctx)
        result = zoo.Combined(state_dict=state, report={
            "pretrained_end": start.name, "fine_tuned_end": tuned.name, "picked_alpha": picked,
            "pick": options.pick, "fisher": options.fisher, "bn_variants": variants,
            "bn_at_picked": chosen["bn"], "sweep": points})
        if (picked, chosen["bn"]) in held_out:
            result.metrics = held_out[picked, chosen["bn"]].as_dict()
        if "ood_top1" in chosen:
            result.report["ood_metrics"] = {k[4:]: v for k, v in chosen.items() if k.startswith("ood_")}
        if id_split is not None:
            from zoo.kit.card import robustness_curve

            result.figures["wise-ft.png"] = robustness_curve(
                kept, picked=picked, title=f"WiSE-FT: {start.name} → {tuned.name}")
        result.card_sections.append(_card_table(points, picked, start.name, tuned.name, variants))
        return result

    @staticmethod
    def _bn_variants(options, start, ctx: zoo.Context) -> list[str]:
        if options.bn == "interpolate":
            return ["interpolate"]
        model = ctx.model(start.state_dict(), start)
        from zoo.kit.train import has_batchnorm

        if not has_batchnorm(model):
            return ["interpolate"]  # nothing to choose: no running statistics
        if options.bn == "recompute":
            return ["recompute"]
        if not ctx.train_data or not ctx.eval_data:
            ctx.log("wise-ft: the model has BatchNorm; interpolated statistics fit neither end well at interior α. "
                    "Pass --train-data (and --eval-data) to also try recomputed statistics (bn=auto).")
            return ["interpolate"]
        return ["interpolate", "recompute"]


def _parse_pick(pick: str) -> float | None:
    if pick in PICKS:
        return None
    key, sep, value = pick.partition("=")
    if key == "alpha" and sep:
        try:
            alpha = float(value)
        except ValueError:
            alpha = -1.0
        if 0.0 <= alpha <= 1.0:
            return alpha
    raise zoo.BadInput(f"option pick={pick!r}: use alpha=X with X in [0, 1], or one of {', '.join(PICKS)}")


def _choose(points: list[dict], pick: str) -> float:
    if pick == "best-id":
        key = lambda p: (p["id_top1"], -p["id_nll"])  # noqa: E731
    elif pick == "best-ood":
        key = lambda p: (p["ood_top1"], -p["ood_nll"])  # noqa: E731
    else:
        key = lambda p: ((p["id_top1"] + p["ood_top1"]) / 2, -(p["id_nll"] + p["ood_nll"]))  # noqa: E731
    return max(points, key=key)["alpha"]  # ties: the first, i.e. the smaller α


def _finish(sd: dict, alpha: float, variant: str, like, options, ctx: zoo.Context) -> dict:
    """θ(α) with its BatchNorm statistics as ``variant`` says; the ends stay exactly the given models."""
    if variant != "recompute" or alpha in (0.0, 1.0):
        return sd
    from zoo.kit.train import recomputed_state

    return recomputed_state(ctx.model(sd, like), ctx.train_split(like), options.bn_batches, ctx.device, seed=ctx.seed)


def _card_table(points: list[dict], picked: float, start: str, tuned: str, variants: list[str]) -> Section:
    cols = [("id_top1", "held-out top-1"), ("id_ece", "held-out ECE"), ("ood_top1", "shifted top-1"),
            ("ood_ece", "shifted ECE"), ("ood_confidence", "shifted confidence")]
    cols = [c for c in cols if any(c[0] in p for p in points)]
    rows = []
    for p in points:
        mark = "**output**" if p.get("kept") and p["alpha"] == picked else ("kept" if p.get("kept") and
                                                                            len(variants) > 1 else "")
        bn = p["bn"] if 0 < p["alpha"] < 1 else "as given"
        rows.append([f"{p['alpha']:g}", bn, *(p.get(k) for k, _ in cols), mark])
    after = ""
    if len(variants) > 1:
        after = ("BatchNorm: at interior α the interpolated running statistics match neither end's "
                 "activations; recomputing them on training data usually recovers accuracy, but the "
                 "statistics a linear-probed head was fit on are then gone. Both were measured; per α "
                 "the one with the better held-out top-1 is kept.")
    return Section("WiSE-FT sweep", f"θ(α) = (1−α)·θ({start}) + α·θ({tuned}); α={picked:g} is the output.",
                   columns=["α", "BN statistics", *(label for _, label in cols), ""], rows=rows, after=after)
