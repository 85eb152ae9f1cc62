"""Data-parallel step time and scaling on this machine, and the communication it needs.

    python bench/bench_distributed.py                    # 1 and 2 ranks, mini_xception width 0.5, batch 64
    python bench/bench_distributed.py --ranks 1 2 4 --width 1 --batch 128 --steps 20

The driver launches ``mpiexec -n K`` for each K (each rank on one thread:
MINIXCEPTION_THREADS=1, OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, so ranks do not fight over
cores), with the global batch fixed (strong scaling). Each rank times whole training steps
(its slice's forward and backward, the gradient allreduce, the SGD step) and the allreduce
alone. Printed: ms per step, images/s, scaling efficiency t1 / (K * tK), allreduce ms, and the
bytes per step -- the gradient payload P x 4 bytes, what a ring allreduce sends per rank,
2 (K - 1) / K x P x 4, and the same for sync batch norm's per-channel sums (4C + 1 numbers per
layer: sum, sum of squares and count forward, two gradient sums backward) -- then the same arithmetic for
the paper's Xception on 60 GPUs at 28 steps/s.

Figures measured on a shared machine are noisy; read them as orders of magnitude.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAPER_PARAMS, PAPER_STEPS_PER_S, PAPER_GPUS = 22_855_952, 28, 60


def ring_bytes_per_rank(payload, k):
    """Bytes each rank sends (and receives) in a ring allreduce of ``payload`` bytes over k ranks."""
    return 2 * (k - 1) / k * payload


def worker(args):
    import numpy as np

    import minixception as mx
    from minixception import distributed as D
    from minixception.losses import softmax_cross_entropy

    group = D.Group()
    model = mx.models.mini_xception(10, width=args.width, middle_blocks=args.middle_blocks, rng=0)
    opt = mx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dp = D.DataParallel(group, sync_bn=args.sync_bn).attach(model, opt)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch)
    xb, yb = dp.local_batch(x, y)
    step_times, comm_times = [], []
    for i in range(args.warmup + args.steps):
        group.comm.Barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        _, dlogits = softmax_cross_entropy(model(xb), yb)
        model.backward(dlogits * dp.weight)
        t1 = time.perf_counter()
        dp.allreduce_gradients()
        t2 = time.perf_counter()
        opt.step()
        group.comm.Barrier()
        if i >= args.warmup:
            step_times.append(time.perf_counter() - t0)
            comm_times.append(t2 - t1)
    bns = [m for m in model.modules() if isinstance(m, mx.nn.BatchNorm2D)]
    if group.rank == 0:
        print(json.dumps(dict(ranks=group.size, step_s=float(np.median(step_times)),
                              allreduce_s=float(np.median(comm_times)),
                              params=sum(p.size for p in opt.params), grad_bytes=dp.buckets.nbytes,
                              buckets=len(dp.buckets.buckets), bn_channels=sum(m.channels for m in bns),
                              bn_layers=len(bns))), flush=True)


def driver(args):
    exe = shutil.which("mpiexec")
    if exe is None:
        sys.exit("no mpiexec on PATH: pip install -e '.[distributed]'")
    env = dict(os.environ, MINIXCEPTION_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    flags = ["--width", str(args.width), "--middle-blocks", str(args.middle_blocks), "--batch", str(args.batch),
             "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--sync-bn"] if args.sync_bn else [])
    rows = []
    for k in args.ranks:
        cmd = [exe, "-n", str(k), sys.executable, __file__, "--worker", *flags]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    t1 = rows[0]["step_s"] * rows[0]["ranks"]
    print(f"mini_xception width {args.width}, {rows[0]['params']:,} parameters, float32, global batch "
          f"{args.batch}, {'sync' if args.sync_bn else 'per-rank'} BN, median of {args.steps} steps, one thread per rank")
    print(f"{'ranks':>5} {'ms/step':>9} {'img/s':>8} {'efficiency':>10} {'allreduce ms':>13} "
          f"{'grad bytes':>11} {'buckets':>7} {'ring bytes/rank':>15} {'sync-BN ring bytes':>13}")
    for r in rows:
        k = r["ranks"]
        eff = t1 / (k * r["step_s"])
        # sync BN: forward [sum, sum of squares, count] + backward [sum dy, sum dy*xc], per channel, 4 bytes
        bn = ring_bytes_per_rank((4 * r["bn_channels"] + r["bn_layers"]) * 4, k) if args.sync_bn else 0
        print(f"{k:>5} {1e3 * r['step_s']:>9.1f} {args.batch / r['step_s']:>8.1f} {eff:>10.2f} "
              f"{1e3 * r['allreduce_s']:>13.2f} {r['grad_bytes']:>11,} {r['buckets']:>7} "
              f"{ring_bytes_per_rank(r['grad_bytes'], k):>15,.0f} {bn:>13,.0f}")
    payload = PAPER_PARAMS * 4
    ring = ring_bytes_per_rank(payload, PAPER_GPUS)
    print(f"\nThe paper's Xception: {PAPER_PARAMS:,} parameters x 4 bytes = {payload / 1e6:.1f} MB of gradient "
          f"per step; a ring allreduce over {PAPER_GPUS} GPUs sends {ring / 1e6:.1f} MB per GPU per step; "
          f"at {PAPER_STEPS_PER_S} steps/s that is {ring * PAPER_STEPS_PER_S / 1e9:.2f} GB/s per GPU each way "
          f"({payload * PAPER_STEPS_PER_S / 1e9:.2f} GB/s of gradients per GPU produced).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--middle-blocks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="global batch (default %(default)s)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sync-bn", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    (worker if args.worker else driver)(args)


if __name__ == "__main__":
    main()
