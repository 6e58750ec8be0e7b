"""The SVD behind ``--format adapter``: the full float64 SVD against the seeded randomized one it takes with a rank
cap, on one delta of a ViT-L MLP's size (4096×1024) and of rank k·r (k adapters of rank r).

    python bench/adapter_svd.py                    # --rows 4096 --cols 1024 --rank 64 --cap 16 --repeat 3

Prints the seconds of each (the best of --repeat), the ratio, and the relative reconstruction error of each
at the cap (plugins/formats/adapter_output.py: ``_top_singular``, oversampled by ``OVERSAMPLE``).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch

    from zoo.plugins.formats.adapter_output import OVERSAMPLE, _top_singular

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=64, help="the delta's rank (k adapters of rank r: k·r)")
    ap.add_argument("--cap", type=int, default=16, help="-o rank= of the merged adapter")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    delta = (torch.randn(args.rows, args.rank, generator=gen, dtype=torch.float64)
             @ torch.randn(args.rank, args.cols, generator=gen, dtype=torch.float64))

    def best(fn) -> tuple[float, tuple]:
        times, out = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        return min(times), out

    def error(u, s, vh) -> float:
        k = args.cap
        return float(torch.linalg.norm(delta - (u[:, :k] * s[:k]) @ vh[:k]) / torch.linalg.norm(delta))

    t_full, full = best(lambda: torch.linalg.svd(delta, full_matrices=False))
    t_low, low = best(lambda: _top_singular(delta, args.cap))
    print(f"delta {args.rows}×{args.cols} of rank {args.rank}, cap {args.cap} (+{OVERSAMPLE}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"full SVD {t_full:.2f} s (error at the cap {error(*full):.6f}); randomized {t_low:.3f} s "
          f"(error {error(*low):.6f}); {t_full / t_low:.0f}×")


if __name__ == "__main__":
    main()
