"""``--strategy ensemble`` and ``--strategy cascade``: members of any architecture and one label space,
combined by their outputs, not their weights (``zoo.plugins.ensemble.module``).

- **ensemble**: the mean of the members' softmax (``weights`` optional), each member preprocessing
  the images its own way.
- **cascade** (Xia & Bouganis, ICCV 2023): the members run cheapest first (multiply–accumulates from
  torch's flop counter); after each stage a sample exits unless its score lies inside the stage's
  window, chosen on ``--eval-data`` around the threshold of the operating point asked for
  (``target=risk@5%``, ``coverage@80%`` or ``tpr@95%``; ``zoo.plugins.ensemble.selective``).
  ``exit=confidence`` is the plain early exit instead: a sample goes on when its score is at most
  ``threshold`` (``auto``: the validation score 20% of samples are below, so 80% exit, as the paper's
  baseline).

Both report, on ``--eval-data``: top-1, NLL, ECE, the risk–coverage curve with its AURC and the coverage
at the target risk, the average MACs per image, and the members' disagreement (diversity); each
member alone beside them. A cascade's figures are on the data its windows were chosen on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import zoo
from zoo.kit.train import state_on_cpu
from zoo.kit.measure import selective_metrics
from zoo.plugins.ensemble import selective

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.plugins.ensemble import module as ens


def _shared_input(members) -> dict:
    """The output's own preprocessing: the largest member's size and crop, not normalised (each member
    normalises inside the module)."""
    from zoo.kit.data import data_config

    largest = max(members, key=lambda m: data_config(m.pretrained_cfg)["input_size"][-1])
    cfg = {k: v for k, v in largest.pretrained_cfg.items() if k not in ("test_input_size", "test_crop_pct")}
    return {**cfg, "input_size": list(data_config(largest.pretrained_cfg)["input_size"]),
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


class _Built:
    """The members as modules, their preprocessing and cost, in the order the output runs them."""

    def __init__(self, members, ctx, *, by_cost: bool):
        from zoo.kit.data import common_labels, data_config
        from zoo.plugins.ensemble import module as ens

        self.labels = common_labels(members, why="an ensemble averages their predictions class by class, so give "
                                                  "members of one task")
        models = [m.create_model() for m in members]
        cfgs = [data_config(m.pretrained_cfg) for m in members]
        task = ctx.progress.task("counting MACs", total=len(models))
        macs = []
        for model, cfg in zip(models, cfgs):
            macs.append(ens.macs_of(model, tuple(cfg["input_size"])))
            task.advance()
        task.close()
        order = sorted(range(len(members)), key=lambda i: macs[i]) if by_cost else list(range(len(members)))
        self.members = [members[i] for i in order]
        self.models, self.cfgs, self.macs = [models[i] for i in order], [cfgs[i] for i in order], [macs[i] for i in order]
        self.pretrained_cfg = _shared_input(self.members)

    def net(self, **kw) -> ens.EnsembleNet:
        from zoo.plugins.ensemble import module as ens

        return ens.EnsembleNet(self.models, self.cfgs, macs=self.macs, **kw).eval()


def _probs(net: ens.EnsembleNet, split, ctx) -> list[torch.Tensor]:
    """Every member's softmax on ``split`` (each through its own preprocessing), on the CPU."""
    import torch

    from zoo.kit.train import to_device

    net = net.to(ctx.device)
    outs: list[list[torch.Tensor]] = [[] for _ in net.members]
    task = ctx.progress.task("members on held-out data", total=len(net.members))
    with torch.inference_mode():
        for i in range(len(net.members)):
            for images, _ in split.batches(ctx.batch_size):
                outs[i].append(net.member_probs(i, to_device(images, ctx.device)).cpu())
            task.advance()
    task.close()
    return [torch.cat(o) for o in outs]


def _figures_of(name: str, probs: torch.Tensor, targets, macs_per_image: float, risk_target: float, ctx) -> dict:
    m = ctx.metrics_of(probs.clamp_min(1e-12).log(), targets).as_dict()
    return {"name": name, **m, **selective_metrics(probs, targets, risk_target), "macs_per_image": float(macs_per_image)}


def _risk_coverage_figure(curves: dict[str, tuple[torch.Tensor, torch.Tensor]], title: str):
    from zoo.kit.card import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, (correct, score) in curves.items():
        risk, coverage, _ = selective.risk_coverage(correct, score)
        ax.plot(coverage.numpy(), (risk * 100).numpy(), label=label, lw=2 if label.startswith(("ensemble", "cascade"))
                else 1)
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk (% errors among those kept)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _table(rows: list[dict], risk_key: str) -> str:
    lines = ["| | top-1 | NLL | ECE | AURC | " + risk_key + " | MACs / image |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['top1']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | {r['aurc']:.4f} | "
                     f"{r[risk_key]:.3f} | {r['macs_per_image'] / 1e6:.3f} M |")
    return "\n".join(lines)


_USAGE = """{article} {kind} of {n} members (not one timm architecture): it loads with zoo, from the folder or the Hub,
with every member's weights inside.

```python
import zoo
m = zoo.load("hf-hub:ORG/NAME")     # or the folder
probs = m(images).softmax(dim=1)    # images: timm's eval transform of this repo's pretrained_cfg (not normalised)
print(m.last_macs, m.last_exits)    # multiply-accumulates the last batch cost, and the stage each image left at
```"""


def _combined(built: _Built, net: ens.EnsembleNet, metrics, report, figures, section: str) -> zoo.Combined:
    from zoo.plugins.ensemble import module as ens

    config = ens.to_config(net, [ens.member_config(m) for m in built.members], pretrained_cfg=built.pretrained_cfg,
                           label_names=built.labels, num_classes=len(built.labels))
    return zoo.Combined(state_dict=state_on_cpu(net), config=config, metrics=metrics, report=report, figures=figures,
                        card_sections=[section], usage=_USAGE.format(article="An" if config["kind"] == "ensemble" else "A",
                                                    kind=config["kind"], n=len(built.members)))


class Ensemble(zoo.Strategy):
    name = "ensemble"
    member_formats = ("timm",)  # its output rebuilds each member with timm: other formats are converted first
    summary = "average the members' softmax (any architectures, one label space); every member inside the output"
    min_members = 2
    relation = "merge"

    @dataclass
    class Options:
        weights: list[float] = zoo.option([], "one weight per member, in the order given (default: equal); "
                                          "normalised to sum to 1")
        risk: float = zoo.option(0.05, "the risk the card's coverage is reported at (selective classification)",
                                 min=0.0, max=1.0)

    @classmethod
    def check(cls, options) -> None:
        if any(w < 0 for w in options.weights) or (options.weights and sum(options.weights) <= 0):
            raise zoo.BadInput("option weights: give non-negative weights that do not all vanish")

    def combine(self, members, options, ctx):
        if options.weights and len(options.weights) != len(members):
            raise zoo.BadInput(f"option weights: {len(options.weights)} weights for {len(members)} members")
        built = _Built(members, ctx, by_cost=False)
        net = built.net(weights=options.weights or None)
        metrics, report, figures = None, {"members": [m.name for m in built.members], "macs": built.macs}, {}
        section = f"Ensemble of {len(members)} members: " + ", ".join(m.name for m in built.members) + "."
        if ctx.eval_data:
            split = ctx.split("eval", built.pretrained_cfg, labels=built.labels)
            probs = _probs(net, split, ctx)
            mixed = sum(w * p for w, p in zip(net.weights, probs))
            key = f"coverage@risk{options.risk * 100:g}%"
            rows = [_figures_of(m.name, p, split.targets, c, options.risk, ctx)
                    for m, p, c in zip(built.members, probs, built.macs)]
            mine = _figures_of("ensemble", mixed, split.targets, sum(built.macs), options.risk, ctx)
            mine["disagreement"] = selective.disagreement([p.argmax(1) for p in probs])
            metrics = {k: v for k, v in mine.items() if k != "name"}
            report["rows"] = rows + [mine]
            curves = {r["name"]: (p.argmax(1).eq(split.targets), selective.scores(p)) for r, p in zip(rows, probs)}
            curves["ensemble"] = (mixed.argmax(1).eq(split.targets), selective.scores(mixed))
            figures["risk-coverage.png"] = _risk_coverage_figure(curves, "risk–coverage on held-out data")
            section += ("\n\n" + _table(rows + [mine], key) +
                        f"\n\nThe members disagree on {mine['disagreement']:.1%} of the held-out images (top-1, "
                        "averaged over pairs): reported, not optimised.")
        return _combined(built, net, metrics, report, figures, section)


class Cascade(zoo.Strategy):
    name = "cascade"
    member_formats = ("timm",)  # its output rebuilds each member with timm: other formats are converted first
    summary = "run members cheapest first; only samples inside a window around the operating threshold go on (Xia & Bouganis 2023)"
    min_members = 2
    needs = ("eval",)
    relation = "merge"

    @dataclass
    class Options:
        target: str = zoo.option("risk@5%", "operating point the windows are chosen for, on --eval-data: risk@R% "
                                        "(selective classification), coverage@C%, or tpr@P% (OOD detection)")
        exit: Literal["window", "confidence"] = zoo.option(
            "window", "window: go on inside a window around the target's threshold (the paper's); confidence: "
                      "go on when the score is at most `threshold` (plain early exit)")
        window: float = zoo.option(0.1, "the window's half-width, in quantiles of the validation scores (the paper: "
                                    "0.1, i.e. 10% of samples either side of the threshold); 0: member 1 alone; "
                                    "inf: every sample goes on (the full ensemble)", min=0.0)
        threshold: str = zoo.option("auto", "with exit=confidence: the score at or below which a sample goes on; "
                                        "auto: the validation score 20% of samples are below (80% exit)")
        score: Literal["msp", "entropy"] = zoo.option("msp", "a stage's confidence: maximum softmax probability, or "
                                                          "minus the entropy")

    @classmethod
    def check(cls, options) -> None:
        selective.parse_target(options.target)
        if 1 < options.window < math.inf:
            raise zoo.BadInput(f"option window={options.window:g} is wider than the data allows: it is a half-width in "
                               "quantiles of the validation scores (0–1; 1 already sends every sample on); give inf "
                               "for the full ensemble")
        if options.threshold != "auto":
            try:
                float(options.threshold)
            except ValueError:
                raise zoo.BadInput(f"option threshold={options.threshold!r}: give a number or auto") from None

    def combine(self, members, options, ctx):
        import torch

        target = selective.parse_target(options.target)
        built = _Built(members, ctx, by_cost=True)
        ctx.log("stages, cheapest first: " + ", ".join(f"{m.name} ({c / 1e6:.2f} M MACs)"
                                                        for m, c in zip(built.members, built.macs)))
        split = ctx.split("eval", built.pretrained_cfg, labels=built.labels)
        probs = _probs(built.net(), split, ctx)
        targets = split.targets
        windows, chosen = [], []
        so_far = probs[0]
        for stage in range(1, len(built.members)):
            score = selective.scores(so_far, options.score)
            correct = so_far.argmax(1).eq(targets)
            if options.exit == "window":
                tau = selective.threshold(correct, score, target)
                bounds = selective.window(score, tau, options.window)
            else:
                tau = (float(torch.quantile(score.double(), 0.2)) if options.threshold == "auto"
                       else float(options.threshold))
                bounds = (None, tau)
            windows.append(bounds)
            chosen.append({"stage": stage, "threshold": tau, "window": list(bounds)})
            so_far = sum(probs[: stage + 1]) / (stage + 1)
        net = built.net(windows=windows, score=options.score).to(ctx.device)
        # the cascade itself on the held-out data: exits, cost and outputs as the loaded module computes them
        from zoo.kit.train import to_device

        outs, spent, exits = [], 0, []
        with torch.inference_mode():
            for images, _ in split.batches(ctx.batch_size):
                outs.append(net(to_device(images, ctx.device)).float().cpu())
                spent += net.last_macs
                exits.append(net.last_exits)
        out = torch.cat(outs).softmax(dim=1)
        exits = torch.cat(exits)
        risk_target = target.value if target.kind == "risk" else 0.05
        key = f"coverage@risk{risk_target * 100:g}%"
        rows = [_figures_of(m.name, p, targets, c, risk_target, ctx) for m, p, c in zip(built.members, probs, built.macs)]
        full = sum(probs) / len(probs)
        rows.append(_figures_of(f"ensemble of all {len(probs)}", full, targets, sum(built.macs), risk_target, ctx))
        mine = _figures_of(f"cascade ({options.exit})", out, targets, spent / len(targets), risk_target, ctx)
        mine["disagreement"] = selective.disagreement([p.argmax(1) for p in probs])
        exited = {str(s + 1): int((exits == s + 1).sum()) for s in range(len(built.members))}
        metrics = {k: v for k, v in mine.items() if k != "name"}
        report = {"stages": [m.name for m in built.members], "macs": built.macs, "target": str(target),
                  "windows": chosen, "exited_at_stage": exited, "rows": rows + [mine]}
        curves = {r["name"]: (p.argmax(1).eq(targets), selective.scores(p)) for r, p in zip(rows, probs)}
        curves[rows[-1]["name"]] = (full.argmax(1).eq(targets), selective.scores(full))
        curves[mine["name"]] = (out.argmax(1).eq(targets), selective.scores(out))
        figures = {"risk-coverage.png": _risk_coverage_figure(curves, f"risk–coverage (cascade for {target})")}
        share = ", ".join(f"{n / len(targets):.0%} after stage {s}" for s, n in exited.items())
        section = (f"Cascade of {len(members)} members, cheapest first, for {target} ({options.exit} exit): "
                   f"{share}. The figures are on the held-out data the windows were chosen on.\n\n"
                   + _table(rows + [mine], key))
        ctx.log(f"exits: {share}; {mine['macs_per_image'] / 1e6:.3f} M MACs per image against "
                f"{sum(built.macs) / 1e6:.3f} M for the full ensemble")
        return _combined(built, net, metrics, report, figures, section)

