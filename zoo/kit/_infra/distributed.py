"""More than one process: torch.distributed as torchrun sets it up (gloo on CPU, nccl on CUDA).

``torchrun --nproc-per-node N -m zoo combine ...`` starts N copies of the command; each finds
its rank in the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...). Strategies that
train (distill) shard their batches by rank and wrap their model in DistributedDataParallel;
rank 0 alone writes the output, the checkpoints and the card.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup(device) -> tuple[int, int]:
    """Join the process group torchrun describes (once); returns (rank, world size). One process: (0, 1)."""
    if world_size() <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
