"""Host time one data-parallel rank spends making its batches: the whole global batch then its
slice (how the trainer used to do it) against only its slice (``BatchIterator(shard=...)``).

    python bench/bench_data_shard.py                      # 2 ranks, CIFAR-sized images, batch 128
    python bench/bench_data_shard.py --ranks 4 --batch 512

Runs in one process as rank 0 of K (each rank does the same work on its own rows; no MPI
needed), shuffle and augmentation on, NumPy on the CPU. Prints milliseconds per step, the
median of ``--repeats`` passes over ``--steps`` batches. Figures from a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import minixception as mx
from minixception import distributed as D


class _Rank:
    """Rank ``rank`` of ``size`` without MPI: only the slicing of a real Group."""
    shard = D.Group.shard

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def per_step_ms(make, steps, repeats):
    times = []
    for _ in range(repeats):
        it = make()
        t0 = time.perf_counter()
        for k, _batch in zip(range(steps), it):
            pass
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128, help="the global batch")
    ap.add_argument("--size", type=int, default=32, help="image height and width")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    mean, std = mx.data.channel_stats(x)
    dp = D.DataParallel(_Rank(0, args.ranks))
    it = lambda **kw: mx.data.BatchIterator(x, y, args.batch, mean, std, shuffle=True, augment=True,
                                            rng=1, **kw)
    whole = per_step_ms(lambda: (dp.local_batch(xb, yb) for xb, yb in it()), args.steps, args.repeats)
    own = per_step_ms(lambda: it(shard=dp.rows), args.steps, args.repeats)
    print(f"{args.ranks} ranks, global batch {args.batch} of {args.size}x{args.size}x3, per rank per step: "
          f"whole batch then slice {whole:.2f} ms, own slice only {own:.2f} ms "
          f"(saves {whole - own:.2f} ms, {whole / own:.2f}x)")


if __name__ == "__main__":
    main()
