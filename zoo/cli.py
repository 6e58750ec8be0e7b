"""The `zoo` command: parses, calls zoo.api, prints with rich. Imports nothing heavy at start-up."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Combine pretrained models: weight soups and more, as pluggy plugins.")
strategies_app = typer.Typer(help="List strategies, or show one's options.", invoke_without_command=True)
app.add_typer(strategies_app, name="strategies")


def _add_stitch() -> None:
    from zoo.cli_stitch import stitch_app

    app.add_typer(stitch_app, name="stitch")


class _State:
    quiet = False
    debug = False
    plugins: list[str] = []


def _console():
    from rich.console import Console

    return Console(stderr=True, quiet=_State.quiet)


def _progress():
    from zoo.progress import Rich, Silent

    if _State.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        return Silent()
    return Rich(_console())


def _fail(e: BaseException) -> None:
    from zoo.errors import ZooError

    if _State.debug:
        raise e
    code = e.exit_code if isinstance(e, ZooError) else 1
    message = str(e) if isinstance(e, ZooError) else f"{type(e).__name__}: {e} (run with --debug for the traceback)"
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn, progress=None):
    """Call ``fn``; turn any failure into one line on stderr and the right exit code."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _console().print("interrupted; nothing was written")
        raise typer.Exit(130)
    except Exception as e:
        _fail(e)
    finally:
        if progress is not None and hasattr(progress, "stop"):
            progress.stop()


@app.callback()
def _main(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages; errors only."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    plugin: List[str] = typer.Option([], "--plugin", help="Load one more plugin module (repeatable; also "
                                      "ZOO_PLUGINS=mod1,mod2)."),
):
    _State.quiet, _State.debug, _State.plugins = quiet, debug, list(plugin)


@app.command()
def combine(
    strategy: str = typer.Option(..., "--strategy", "-s", help="Strategy name (see `zoo strategies`)."),
    member: List[str] = typer.Option([], "--member", "-m",
                                     help="A member: hf-hub:ORG/NAME[@REV], a folder, or a .safetensors file."),
    zoo_name: Optional[str] = typer.Option(None, "--zoo", help="A named zoo (registry/zoos) or a zoo .toml."),
    members_from: Optional[str] = typer.Option(None, "--members-from", help="Members listed in a zoo .toml, "
                                               "e.g. a zoo select output's zoo.toml (its data is not used)."),
    base: Optional[str] = typer.Option(None, "--base", help="The model the members were fine-tuned from, for "
                                       "strategies that merge task vectors (ties); any member spec."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out data: image folder (class per "
                                            "sub-folder) or timm dataset spec."),
    train_data: Optional[str] = typer.Option(None, "--train-data", help="Training data (e.g. for recompute_bn)."),
    ood_data: Optional[str] = typer.Option(None, "--ood-data", help="Shifted (out-of-distribution) data, for "
                                           "strategies that report robustness (wise-ft)."),
    option: List[str] = typer.Option([], "--option", "-o", help="Strategy option key=value (repeatable)."),
    out: str = typer.Option(..., "--out", help="Output folder (a timm / Hub repo)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    push: Optional[str] = typer.Option(None, "--push", help="Also upload the result to ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="With --push: create the repo private."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of bare .safetensors members."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled checkpoints (loaded with "
                                      "weights_only=True). Off by default: pickles can run code."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="For strategies that train (distill, bang): "
                                         "the same as --option epochs=N."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training strategy (distill) "
                                "of the same --out from its last checkpoint (same options)."),
    max_shard_size: str = typer.Option("20GB", "--max-shard-size", help="Split model.safetensors into shards "
                                       "with an index past this size. timm's hf-hub: loader reads a single "
                                       "model.safetensors, so shard only when you must."),
):
    """Combine members into one model with a strategy and write it to --out."""
    from zoo import api
    from zoo.options import parse_pairs

    def options():
        from zoo.errors import BadInput

        pairs = parse_pairs(option)
        if epochs is not None:
            if "epochs" in pairs and pairs["epochs"] != str(epochs):
                raise BadInput(f"--epochs {epochs} and --option epochs={pairs['epochs']} disagree; give one")
            pairs["epochs"] = str(epochs)
        return pairs

    progress = _progress()
    console = _console()
    result = _run(lambda: api.combine(
        strategy, member, zoo=zoo_name, members_from=members_from, base=base, eval_data=eval_data, train_data=train_data,
        ood_data=ood_data,
        options=options(), out=out, force=force, push=push, private=private, device=device,
        arch=arch, allow_pickle=allow_pickle, plugins=_State.plugins, seed=seed, max_shard_size=max_shard_size,
        resume=resume, progress=progress,
        log=console.print), progress=progress)
    m = result.metrics
    summary = f"wrote {out}"
    if m:
        shown = [f"{label} {m[key]:.4f}" for key, label in (("top1", "held-out top-1"), ("nll", "NLL"), ("ece", "ECE"))
                 if key in m]
        summary += " — " + ", ".join(shown)
        if "configurations" in m:  # a stitched network: the figures above are its default configuration's
            summary += f" (configuration {m['default_config']} of {m['configurations']}; zoo stitch list {out})"
    console.print(summary, highlight=False)
    if result.report.get("pushed"):
        console.print(f"pushed: {result.report['pushed']}", highlight=False)


@app.command("select")
def select_cmd(
    member: List[str] = typer.Option([], "--member", "-m", help="A candidate member (repeatable): "
                                     "hf-hub:ORG/NAME[@REV], a folder, or a .safetensors file."),
    zoo_name: Optional[str] = typer.Option(None, "--zoo", help="Candidates from a named zoo or zoo .toml (its "
                                           "train/eval data are the defaults for --target-data/--val-data)."),
    members_from: Optional[str] = typer.Option(None, "--members-from", help="Candidates from a zoo .toml (e.g. "
                                               "an earlier selection's zoo.toml); its data is not used."),
    target_data: Optional[str] = typer.Option(None, "--target-data", help="Labelled target data: image folder, "
                                              "one sub-folder per class."),
    metric: str = typer.Option("logme", "--metric", help="Ranking metric: logme, leep, nce, hscore, "
                               "hscore-shrinkage, gbc, or a plugin's (see --list-metrics)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Select this many (default: all, ranked; "
                                        "3 with --ensemble)."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Pick a team greedily by --team-metric instead of "
                                  "the top-k of the ranking."),
    team_metric: str = typer.Option("osborn", "--team-metric", help="With --ensemble: osborn, ms-leep or e-leep."),
    weight: List[str] = typer.Option([], "--weight", help="With --ensemble: a team-metric weight NAME=VALUE "
                                     "(osborn: domain, task, cohesion; default 1 each). Repeatable."),
    source_data: List[str] = typer.Option([], "--source-data", help="SPEC=FOLDER: the data a member was "
                                          "trained on, for OSBORN's domain term. Repeatable."),
    validate: bool = typer.Option(False, "--validate", help="Also linear-probe every member on --target-data "
                                  "and report how well the metric ranked them (Kendall's τ, plot)."),
    val_data: Optional[str] = typer.Option(None, "--val-data", help="Held-out folder for --validate."),
    skip_failed: bool = typer.Option(False, "--skip-failed", help="Rank the others when a member fails to "
                                     "download or load (it is reported, never silently dropped)."),
    out: Optional[str] = typer.Option(None, "--out", help="Write ranking.csv, ranking.json, zoo.toml (and "
                                      "validation.png) here."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of bare .safetensors members."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickled checkpoints (weights_only)."),
    list_metrics: bool = typer.Option(False, "--list-metrics", help="List the metrics and exit."),
):
    """Rank members for a target task without fine-tuning them (transferability), or pick a team."""
    from rich.console import Console
    from rich.table import Table

    from zoo import api

    console = _console()
    if list_metrics:
        table = Table()
        for col in ("metric", "kind", "needs", "from", "summary", "reference"):
            table.add_column(col)
        from rich.markup import escape

        found = _run(lambda: api.transfer_metrics(_State.plugins))
        for name, (m, origin) in sorted(found.items(), key=lambda kv: (kv[1][0].kind != "member", kv[0])):
            table.add_row(*(escape(str(c)) for c in (name, m.kind, m.needs, origin, m.summary, m.reference)))
        Console().print(table)
        return
    from zoo.options import parse_pairs

    def parsed():
        weights = {k: _float(k, v) for k, v in parse_pairs(weight, "--weight", "domain=0.5").items()}
        return weights, parse_pairs(source_data, "--source-data", "./member=./its-train-data")

    progress = _progress()
    weights, sources = _run(parsed)
    sel = _run(lambda: api.select(
        member, target_data, zoo=zoo_name, members_from=members_from, metric=metric, top_k=top_k,
        ensemble=ensemble, team_metric=team_metric, weights=weights, validate=validate, val_data=val_data,
        sources=sources, skip_failed=skip_failed, out=out, force=force, device=device, arch=arch,
        allow_pickle=allow_pickle, plugins=_State.plugins, progress=progress, log=console.print),
        progress=progress)
    chosen = set(sel.selected)
    table = Table(title=f"{sel.metric} on {sel.target_data} ({len(sel.classes)} classes)")
    for col in ("rank", "member", "architecture", sel.metric, *(["probe top-1"] if sel.validation else []),
                "features"):
        table.add_column(col, justify="right" if col in ("rank", sel.metric, "probe top-1") else "left")
    for r in sel.ranking:
        mark = "[bold]" if r["spec"] in chosen else ""
        table.add_row(str(r["rank"]), f"{mark}{r['member']}", r["architecture"], f"{r['score']:.4f}",
                      *([f"{r['probe_top1'] * 100:.1f}%"] if sel.validation else []), r["features"])
    Console().print(table)
    for f in sel.failed:
        console.print(f"[yellow]skipped[/] {f['spec']}: {f['error']}", highlight=False)
    for note in sel.notes:
        console.print(f"note: {note}", highlight=False)
    if sel.team:
        console.print(f"team ({sel.team['metric']}): " + " → ".join(
            f"{s['added']} ({s['score']:.4f})" for s in sel.team["steps"]), highlight=False)
    if sel.validation:
        v = sel.validation
        console.print(f"Kendall τ between {sel.metric} and linear-probe accuracy: {v['tau']:.3f}", highlight=False)
        for name, acc in v.get("ensembles", {}).items():
            console.print(f"  ensemble {name}: {acc * 100:.1f}%", highlight=False)
    if out:
        console.print(f"wrote {out} (ranking.csv, ranking.json, zoo.toml"
                      f"{', validation.png' if sel.validation else ''})", highlight=False)


def _float(key: str, value: str) -> float:
    from zoo.errors import BadInput

    try:
        return float(value)
    except ValueError:
        raise BadInput(f"--weight {key}={value}: the value must be a number") from None


@app.command()
def finetune(
    member: str = typer.Argument(..., help="The member to start from: hf-hub:ORG/NAME[@REV], a folder or a file."),
    train_data: str = typer.Option(..., "--train-data", help="Image folder, one sub-folder per class."),
    out: str = typer.Option(..., "--out", help="Output folder (a member: timm / Hub repo)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Check: the number of classes "
                                              "(the class folders of --train-data define them)."),
    mode: str = typer.Option("ft", "--mode", help="lp: linear probe only; ft: fine-tune everything; "
                             "lp-ft: linear probe, then fine-tune from it."),
    linear_probe_first: bool = typer.Option(False, "--linear-probe-first", help="Same as --mode lp-ft."),
    epochs: int = typer.Option(3, "--epochs", help="Fine-tuning epochs."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate (cosine schedule with warmup)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="AdamW weight decay."),
    warmup_epochs: float = typer.Option(0.5, "--warmup-epochs", help="Linear warmup, in epochs."),
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", help="Label smoothing ε (timm's loss)."),
    mixup: float = typer.Option(0.0, "--mixup", help="Mixup α (timm's Mixup); 0 turns it off."),
    lp_epochs: int = typer.Option(20, "--lp-epochs", help="Linear-probe epochs (on features computed once)."),
    lp_lr: float = typer.Option(1e-2, "--lp-lr", help="Linear-probe learning rate."),
    bn: str = typer.Option("auto", "--bn", help="BatchNorm statistics while fine-tuning: train (updated as "
                           "usual), frozen (the start's kept: a linear-probed head keeps the features it was fit "
                           "on), recompute (updated, then re-estimated on the training data at the end); auto: "
                           "frozen with --linear-probe-first, train otherwise."),
    augment: bool = typer.Option(False, "--augment", help="Fine-tune through timm's training transform (random "
                                 "resized crop, flip, colour jitter), decoding the images every epoch; off: the "
                                 "decoded eval-transformed images, faster."),
    hflip: float = typer.Option(0.5, "--hflip", help="With --augment: horizontal flip probability (0 for digits "
                                "or text)."),
    crop_scale: float = typer.Option(0.08, "--crop-scale", help="With --augment: smallest random crop, as a "
                                     "fraction of the image area."),
    auto_augment: str = typer.Option("", "--auto-augment", help="With --augment: a timm policy, e.g. "
                                     "rand-m9-mstd0.5 (RandAugment) or original (AutoAugment)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Held-out folder: metrics in the card."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same --out."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of a bare .safetensors member."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
):
    """Fine-tune a member (linear probe, full, or LP then FT); the output is a member."""
    from zoo.train import Recipe, finetune as _finetune

    progress = _progress()
    console = _console()
    recipe = Recipe(mode="lp-ft" if linear_probe_first else mode, epochs=epochs, lr=lr, weight_decay=weight_decay,
                    warmup_epochs=warmup_epochs, batch_size=batch_size, label_smoothing=label_smoothing,
                    mixup=mixup, lp_epochs=lp_epochs, lp_lr=lp_lr, augment=augment, hflip=hflip,
                    crop_scale=crop_scale, auto_augment=auto_augment, bn=bn, seed=seed)
    result = _run(lambda: _finetune(member, train_data, out, recipe=recipe, num_classes=num_classes,
                                    eval_data=eval_data, resume=resume, force=force, device=device, arch=arch,
                                    progress=progress, log=console.print), progress=progress)
    m = result.metrics
    summary = f"wrote {out}"
    if m:
        shown = [f"{label} {m[key]:.4f}" for key, label in (("top1", "held-out top-1"), ("nll", "NLL"), ("ece", "ECE"))
                 if key in m]
        summary += " — " + ", ".join(shown)
        if "configurations" in m:  # a stitched network: the figures above are its default configuration's
            summary += f" (configuration {m['default_config']} of {m['configurations']}; zoo stitch list {out})"
    console.print(summary, highlight=False)


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="A zoo output folder, hf-hub:ORG/NAME[@REV], or any member spec."),
    data: str = typer.Option(..., "--data", help="Image folder (class per sub-folder) or timm dataset spec."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="timm architecture of a bare .safetensors file."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
):
    """Evaluate a model on labelled data: top-1, NLL, ECE."""
    import json

    from zoo import api

    progress = _progress()
    metrics = _run(lambda: api.evaluate(model, data, device=device, arch=arch, plugins=_State.plugins,
                                        progress=progress), progress=progress)
    if json_out:
        typer.echo(json.dumps(metrics.as_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.as_dict().items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


@app.command("push")
def push_cmd(
    folder: str = typer.Argument(..., help="A zoo output folder."),
    repo_id: str = typer.Argument(..., help="ORG/NAME on the Hub."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
):
    """Upload an output folder to the Hub in one commit (token from HF_TOKEN or `hf auth login`)."""
    from zoo import api

    url = _run(lambda: api.push(folder, repo_id, private=private))
    _console().print(f"pushed: {url}", highlight=False)


@strategies_app.callback()
def strategies_list(ctx: typer.Context):
    """Every strategy, with where it comes from."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from zoo import host as _host

    host = _run(lambda: _host.load(_State.plugins))
    found = _run(host.strategies)
    table = Table()
    for col in ("strategy", "from", "summary"):
        table.add_column(col)
    for name, (cls, origin) in found.items():
        table.add_row(name, origin, cls.summary)
    Console().print(table)
    for b in host.broken:
        _console().print(f"[yellow]warning:[/] plugin {b.name} ({b.origin}) failed to load: {b.error}",
                         highlight=False)


@strategies_app.command("show")
def strategies_show(name: str = typer.Argument(..., help="Strategy name.")):
    """A strategy's options: type, default, help."""
    from rich.console import Console
    from rich.table import Table

    from zoo import host as _host, options

    host = _run(lambda: _host.load(_State.plugins))
    cls = _run(lambda: host.strategy(name))
    origin = host.strategies()[name][1]
    console = Console()
    console.print(f"[bold]{cls.name}[/] ({origin}): {cls.summary}", highlight=False)
    if cls.needs_base:
        console.print("needs a base model: --base SPEC", highlight=False)
    table = Table()
    for col in ("option", "type", "default", "help"):
        table.add_column(col)
    for info in options.describe(cls.Options):
        table.add_row(info.name, info.type_name, str(info.default), info.help)
    console.print(table)
    console.print(f"set with: zoo combine --strategy {name} --option KEY=VALUE", highlight=False)


_add_stitch()


def main() -> None:
    # typer's usage errors exit 2 already; ours do too (zoo.errors.BadInput)
    if os.environ.get("ZOO_DEBUG"):
        _State.debug = True
    app(prog_name="zoo")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
