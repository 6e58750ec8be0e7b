"""FusionBench's side of bench/fusionbench_hard.py: one merge by FusionBench 0.2.33's own code, in its own
environment (/work/fbvenv; see bench/fusionbench_hard.py's docstring). zoo is never imported here.

    /work/fbvenv/bin/python bench/fusionbench_merge.py JOB.json

JOB.json: {"method": ta | ties | tsv | iso-c | iso-cts | adamerging, "base": FOLDER, "members": {TASK: FOLDER},
"options": {...}, "out": FILE.safetensors, "report": FILE.json, and for adamerging "images": {TASK: FILE}
(each task's unlabeled images, preprocessed, a safetensors file with one tensor "images")}.

Every member is a timm folder (``local-dir:``); its classifier is taken off (``reset_classifier(0)``) and
the headless backbones are what FusionBench merges — heads are kept apart, as zoo's ``--multi-task``. The
algorithms are FusionBench's own classes run on a model pool of those modules (``_pretrained_`` the base):
``TaskArithmeticAlgorithm``, ``TiesMergingAlgorithm``, ``TaskSingularVectorMerging``,
``IsotropicMergingInCommonSubspace`` / ``...AndTaskSubspace``. AdaMerging: its ``LayerWiseMergedModel``
(one λ per member and parameter tensor), its ``entropy_loss`` and ``merge_and_unload``, driven by the loop
its ResNet AdaMerging runs (``_ResNetAdaMergingBase.test_time_adaptation``: the wrapped backbone in train
mode, each task's batch through the backbone and that task's own fine-tuned head, one backward per task with
the graph kept, one Adam step, then ``merge_weights``), written out here because that class needs its
Hugging Face ResNet pool. BatchNorm's ``num_batches_tracked`` counters are made
float tensors (FusionBench's state-dict arithmetic stops on an integer one; zoo copies them from the base,
and so does bench/fusionbench_hard.py when it puts the heads back). Writes the merged backbone (every tensor of the headless state dict) to "out" and
{seconds, ...} to "report"; "seconds" is the merge alone (model loading excluded), in this process.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
import time

import timm
import torch
from safetensors.torch import load_file, save_file


def backbone(folder: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the member's model without its classifier, its classifier) from a timm folder."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    head = copy.deepcopy(model.get_classifier())
    model.reset_classifier(0)
    if hasattr(model, "drop_rate"):
        model.drop_rate = 0.0  # the head's dropout: none between the backbone and the head (a ResNet pooler's way)
    for module in model.modules():
        # BatchNorm's integer counter: FusionBench's state-dict arithmetic stops on it (λ·an int64 tensor is a
        # float one: "Dtype mismatch ... num_batches_tracked"), so it is made a float; with a momentum set it is
        # never read, and bench/fusionbench_hard.py writes the base's (as zoo) in the merged model
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
            module.num_batches_tracked = module.num_batches_tracked.float()
    return model, head


def merge(job: dict) -> tuple[dict, float, dict]:
    """(the merged backbone's state dict, the merge's seconds, what else to report)."""
    from fusion_bench.modelpool import BaseModelPool

    method, opts = job["method"], job.get("options", {})
    base, _ = backbone(job["base"])
    members = {task: backbone(folder) for task, folder in job["members"].items()}
    models = {"_pretrained_": base, **{t: m for t, (m, _) in members.items()}}
    extra: dict = {}
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # several print a line per tensor
        if method == "ta":
            from fusion_bench.method.task_arithmetic.task_arithmetic import TaskArithmeticAlgorithm

            merged = TaskArithmeticAlgorithm(scaling_factor=float(opts["scale"])).run(BaseModelPool(models))
        elif method == "ties" and opts.get("remove_statistics"):
            merged = ties_without_statistics(base, [m for m, _ in members.values()], opts)
        elif method == "ties":
            from fusion_bench.method.ties_merging.ties_merging import TiesMergingAlgorithm

            merged = TiesMergingAlgorithm(scaling_factor=float(opts["scale"]), threshold=float(opts["threshold"]),
                                          remove_keys=[], merge_func=opts["merge_func"]).run(BaseModelPool(models))
        elif method == "tsv":
            from fusion_bench.method.task_singular_vector.TSVM import TaskSingularVectorMerging

            merged = TaskSingularVectorMerging(alpha=float(opts["scale"]), exclude_keys=[]).run(BaseModelPool(models))
        elif method == "iso-c":
            from fusion_bench.method.isotropic_merging.iso import IsotropicMergingInCommonSubspace

            merged = IsotropicMergingInCommonSubspace(scaling_factor=float(opts["scale"]), exclude_keys=[]).run(
                BaseModelPool(models))
        elif method == "iso-cts":
            from fusion_bench.method.isotropic_merging.iso import IsotropicMergingInCommonAndTaskSubspace

            merged = IsotropicMergingInCommonAndTaskSubspace(
                scaling_factor=float(opts["scale"]), common_space_fraction=float(opts["common_space_fraction"]),
                exclude_keys=[]).run(BaseModelPool(models))
        elif method == "adamerging":
            merged, extra = adamerging(base, members, job, opts)
        else:
            raise SystemExit(f"unknown method {method!r}")
        sd = {k: v.detach().contiguous().clone() for k, v in merged.state_dict().items()}
    return sd, time.perf_counter() - start, extra


def ties_without_statistics(base, models: list, opts: dict):
    """What ``TiesMergingAlgorithm.run`` computes, by its own functions, with BatchNorm's running statistics
    and counters in its ``remove_keys`` (its class cannot: the state dict it loads then lacks them): the
    model-wide top-k, the election and the disjoint merge over the weights alone. The statistics stay the
    base's."""
    from fusion_bench.method.ties_merging.ties_merging_utils import (state_dict_to_vector, ties_merging,
                                                                     vector_to_state_dict)

    ptm = base.state_dict(keep_vars=True)
    remove = [k for k in ptm if k.endswith((".running_mean", ".running_var", ".num_batches_tracked"))]
    flat_ptm = state_dict_to_vector(ptm, remove)
    flat_ft = torch.vstack([state_dict_to_vector(m.state_dict(keep_vars=True), remove) for m in models])
    merged_tv = ties_merging(flat_ft - flat_ptm, reset_thresh=float(opts["threshold"]), merge_func=opts["merge_func"])
    sd = vector_to_state_dict(flat_ptm + float(opts["scale"]) * merged_tv, ptm, remove_keys=remove)
    base.load_state_dict({**ptm, **sd})
    return base


def adamerging(base, members: dict, job: dict, opts: dict):
    """Layer-wise AdaMerging with FusionBench's wrapper, loss and merge; the loop of its ResNet AdaMerging."""
    from torch.utils.data import DataLoader, TensorDataset

    from fusion_bench.method.adamerging.entropy_loss import entropy_loss
    from fusion_bench.models.wrappers.layer_wise_fusion import LayerWiseMergedModel, get_layer_wise_weights
    from fusion_bench.utils.data import InfiniteDataLoader

    torch.manual_seed(int(opts.get("seed", 0)))
    tasks = list(members)
    heads = {t: members[t][1].requires_grad_(False) for t in tasks}
    loaders = {t: iter(InfiniteDataLoader(DataLoader(TensorDataset(load_file(job["images"][t])["images"]),
                                                     batch_size=int(opts["batch_size"]), shuffle=True)))
               for t in tasks}
    weights = get_layer_wise_weights(num_models=len(tasks),
                                     num_layers=len([p for p in base.parameters() if p.requires_grad]),
                                     init_values=float(opts["init"]))
    # the ResNet AdaMerging's defaults: clamp_weights=False, tie_weights=True, strict=False
    wrapped = LayerWiseMergedModel(layer_wise_weight=weights, pretrained_model=base,
                                   finetuned_models=[members[t][0] for t in tasks], clamp_weights=False,
                                   tie_weights=True, strict=False)
    optimizer = torch.optim.Adam([wrapped.merge_weight], lr=float(opts["lr"]))
    wrapped.train(bool(opts.get("train_mode", True)))  # its loop: train(); eval() only for bench's BatchNorm check
    wrapped.merge_weights()
    history = []
    for step in range(int(opts["steps"])):
        total = 0.0
        for t in tasks:
            batch = next(loaders[t])
            loss = entropy_loss(heads[t](wrapped(batch[0])))
            total += loss.item()
            loss.backward(retain_graph=True)
        optimizer.step()
        optimizer.zero_grad()
        wrapped.merge_weights()
        if step % 50 == 0 or step == int(opts["steps"]) - 1:
            history.append({"step": step, "entropy_sum": total})
    lam = wrapped.merge_weight.detach()
    merged = wrapped.merge_and_unload()
    return merged, {"history": history, "lambda_mean": float(lam.mean()), "lambda_min": float(lam.min()),
                    "lambda_max": float(lam.max()), "lambda_shape": list(lam.shape)}


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    sd, seconds, extra = merge(job)
    save_file(sd, job["out"])
    from importlib.metadata import version

    with open(job["report"], "w") as f:
        json.dump({"seconds": seconds, "fusion_bench": version("fusion-bench"), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), **extra}, f, indent=1)


if __name__ == "__main__":
    main()
