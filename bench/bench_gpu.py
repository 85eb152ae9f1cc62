"""GPU benchmark: one training step of mini_xception on CuPy (hand-written kernels) against the
same network in PyTorch/cuDNN (fp32, TF32 off), and the time of a CIFAR-10-sized epoch.

    python bench/bench_gpu.py                      # batch 128, 32x32, width 1
    python bench/bench_gpu.py --width 4 --batch 128 --epoch-images 50000

Prints ms/step for CuPy with the CUDA kernels, CuPy with the plain xp ops (the reference),
PyTorch (NCHW and channels_last; the faster counts) and the ratios, measured in this one run.
The PyTorch copy (bench/torch_mirror.py) is built from our model, layer by layer, with our initial weights, and its
first loss is compared with ours to show it is the same network. Synthetic data: no download.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minixception as mx                           # noqa: E402
from minixception import cuda as mxcuda              # noqa: E402


def to_torch(model):
    """The same network in PyTorch (bench/torch_mirror.py: layer by layer, our weights, NHWC input)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_mirror import mirror_model
    return mirror_model(model)


# -- timing ------------------------------------------------------------------------------

def time_steps(step, sync, warmup, iters):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_cupy(model, x, y, warmup, iters):
    import cupy as cp
    opt = mx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad()
        logits = model(x)
        loss, d = mx.losses.softmax_cross_entropy(logits, y)
        model.backward(d)
        opt.step()
    return time_steps(step, cp.cuda.Device().synchronize, warmup, iters)


def bench_torch(tmodel, x, y, warmup, iters, channels_last):
    import torch
    if channels_last:        # the NHWC input, permuted inside the mirror, is already channels_last
        tmodel = tmodel.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(tmodel(x), y)
        loss.backward()
        opt.step()
    return time_steps(step, torch.cuda.synchronize, warmup, iters)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0, help="mini_xception width (default 1)")
    ap.add_argument("--middle-blocks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--epoch-images", type=int, default=50000,
                    help="images of the timed epoch (CIFAR-10: 50000 train + 10000 test); 0 skips it")
    args = ap.parse_args(argv)

    if not mx.gpu_available():
        print("no GPU (cupy.is_available() is False): nothing to benchmark")
        return 1
    import cupy as cp
    print(f"GPU: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cp.__version__}, "
          f"kernels {'on' if mxcuda.enabled() else 'OFF'}")
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((args.batch, 32, 32, 3)).astype(np.float32)
    yh = rng.integers(0, 10, args.batch)
    model = mx.models.mini_xception(10, width=args.width, middle_blocks=args.middle_blocks, rng=0)
    print(f"mini_xception width {args.width}: {mx.count_params(model):,} parameters; batch {args.batch}, 32x32, fp32")

    tmodel = None
    try:
        import torch
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
            tmodel = to_torch(model).cuda().train()
            xt = torch.from_numpy(xh).cuda()              # NHWC: the mirror permutes once, inside
            yt = torch.from_numpy(yh).cuda()
        else:
            print("PyTorch has no CUDA here: no cuDNN baseline")
    except ImportError:
        print("PyTorch not installed: no cuDNN baseline")

    model.to("gpu")
    x, y = cp.asarray(xh), cp.asarray(yh)
    if tmodel is not None:                        # the same network: same first loss
        loss_ours, _ = mx.losses.softmax_cross_entropy(model(x), y)
        model.clear_caches()
        with torch.no_grad():
            loss_t = torch.nn.functional.cross_entropy(tmodel(xt), yt).item()
        print(f"first-step loss: ours {float(loss_ours):.6f}, PyTorch {loss_t:.6f} "
              f"(rel. diff {abs(float(loss_ours) - loss_t) / abs(loss_t):.1e})")

    ours = bench_cupy(model, x, y, args.warmup, args.iters)
    with mxcuda.disabled():
        ref = bench_cupy(mx.models.mini_xception(10, width=args.width, middle_blocks=args.middle_blocks,
                                                 rng=0).to("gpu"), x, y, 2, max(5, args.iters // 3))
    print(f"CuPy + hand-written kernels: {ours:8.2f} ms/step")
    print(f"CuPy, plain xp ops:          {ref:8.2f} ms/step  (kernels give x{ref / ours:.2f})")
    if tmodel is not None:
        t_nchw = bench_torch(tmodel, xt, yt, args.warmup, args.iters, channels_last=False)
        t_cl = bench_torch(to_torch(mx.models.mini_xception(10, width=args.width, middle_blocks=args.middle_blocks,
                                                             rng=0)).cuda().train(), xt, yt, args.warmup, args.iters,
                           channels_last=True)
        best = min(t_nchw, t_cl)
        print(f"PyTorch {torch.__version__} cuDNN NCHW:          {t_nchw:8.2f} ms/step")
        print(f"PyTorch cuDNN channels_last: {t_cl:8.2f} ms/step")
        print(f"RATIO ours / PyTorch (best): {ours / best:.2f}x  (target: within 2x)")

    if args.epoch_images:
        from minixception.train import fit
        n_test = max(args.epoch_images // 5, args.batch)
        data = dict(x_train=rng.integers(0, 256, (args.epoch_images, 32, 32, 3), dtype=np.uint8),
                    y_train=rng.integers(0, 10, args.epoch_images),
                    x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                    y_test=rng.integers(0, 10, n_test))
        m = mx.models.mini_xception(10, width=args.width, middle_blocks=args.middle_blocks, rng=0)
        with tempfile.TemporaryDirectory() as out:
            row = fit(m, data, out, epochs=1, batch_size=args.batch, lr=0.05, device="gpu",
                      progress=False, verbose=False)[0]
        print(f"epoch of {args.epoch_images} images (+{n_test} eval, augmentation on, synthetic data): "
              f"{row['epoch_time_s']:.1f} s, {row['images_per_s']:.0f} img/s training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
