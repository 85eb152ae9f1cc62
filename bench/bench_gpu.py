"""GPU benchmark: a training step of our networks on CuPy against the same networks in
PyTorch/cuDNN (fp32, TF32 off), on one GPU, in one run.

    python bench/bench_gpu.py                          # every shape below
    python bench/bench_gpu.py --only mini1 --iters 50   # one of them
    python bench/bench_gpu.py --json bench/results/gpu.json

Shapes (``--only``): mini1, mini2, mini4 (mini_xception widths 1, 2, 4 at 32x32, batch 128),
xception32 (the full-width Xception, stride-1 stem, 32x32, batch 128), xception299 (Xception
at the ImageNet shape, 299x299, batch 32), and epoch (a CIFAR-10-sized epoch, 50,000 images,
of mini_xception width 1).

How it measures, so that the numbers mean what they say:
* every timed step ends with a device synchronise before the clock is read, and the
  median of ``--iters`` steps is reported;
* warm-up steps run first and are not timed: CuPy's and NVRTC's first-use compiles, cuDNN's
  algorithm search (``cudnn.benchmark``) and the memory pools' first allocations;
* PyTorch runs twice: NCHW with contiguous NCHW tensors (checked), and channels_last (NHWC)
  with the model and the input converted (checked); the faster one is the baseline;
* kernel launches per step are counted by CUPTI through ``torch.profiler`` (every kernel the
  process launches, CuPy's included) when PyTorch has CUDA; our hand-written kernels are
  also counted by their wrappers, which says which implementation actually ran;
* our "plain xp" run (``mx.use_kernels("reference")``) times the same step without the
  hand-written kernels, for the mini networks.

Without a GPU it says so and exits 0. Synthetic data: no download.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import minixception as mx                              # noqa: E402
from minixception.kernels import cuda as mxcuda        # noqa: E402

SHAPES = {   # name -> (description, model factory, input side, batch)
    "mini1": ("mini_xception width 1, 32x32, batch 128",
              lambda: mx.models.mini_xception(10, width=1, rng=0), 32, 128),
    "mini2": ("mini_xception width 2, 32x32, batch 128",
              lambda: mx.models.mini_xception(10, width=2, rng=0), 32, 128),
    "mini4": ("mini_xception width 4, 32x32, batch 128",
              lambda: mx.models.mini_xception(10, width=4, rng=0), 32, 128),
    "xception32": ("Xception full width, stride-1 stem, 32x32, batch 128",
                   lambda: mx.models.Xception(num_classes=10, input_shape=(32, 32, 3), small_input=True, rng=0),
                   32, 128),
    "xception299": ("Xception, 299x299, batch 32 (the ImageNet shape)",
                    lambda: mx.models.Xception(num_classes=1000, rng=0), 299, 32),
}
XP_BASELINE = ("mini1", "mini2", "mini4")     # the plain-xp step is timed for these (slow on the big ones)


# -- timing --------------------------------------------------------------------------------

def time_steps(step, sync, warmup, iters):
    """Median ms of ``iters`` steps after ``warmup`` untimed ones; each timed step ends synchronised."""
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


def cupy_step(model, x, y):
    opt = mx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad()
        logits = model(x)
        _, d = mx.losses.softmax_cross_entropy(logits, y)
        model.backward(d)
        opt.step()
    return step


def torch_step(tmodel, x, y):
    import torch
    opt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        lossf(tmodel(x), y).backward()
        opt.step()
    return step


# -- what ran, and how many launches ---------------------------------------------------------

def count_launches(step, sync):
    """(kernel launches in one call of ``step``, how counted) -- or (None, why not)."""
    try:
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None, "not counted: PyTorch (CUPTI through torch.profiler) not installed"
    if not torch.cuda.is_available():
        return None, "not counted: PyTorch has no CUDA here"
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        sync()
    names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    kernels = [n for n in names if not n.lower().startswith(("memcpy", "memset"))]
    if not kernels:
        return None, "not counted: the profiler saw no kernels"
    return len(kernels), "CUPTI via torch.profiler"


def hand_written_launches(step, sync):
    """{kernel: launches} of our CUDA kernels in one step (empty: the plain CuPy reference ran)."""
    sync()
    mxcuda.launches.clear()
    step()
    sync()
    return mxcuda.count_launches()


def implementation_line(launched):
    if not launched:
        return "plain CuPy reference (no hand-written kernel launched)"
    return "hand-written CUDA: " + ", ".join(f"{k} x{v}" for k, v in sorted(launched.items()))


# -- one shape ----------------------------------------------------------------------------------

def torch_models(factory, xh, yh, device="cuda"):
    """(NCHW model, NCHW input, channels_last model, channels_last input, labels), or None without
    PyTorch / CUDA. The layouts are made once, outside the timed step, and checked."""
    try:
        import torch
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_mirror import mirror
    yt = torch.from_numpy(yh).to(device)
    # NCHW: a contiguous NCHW tensor (a permuted NHWC array would keep channels_last strides)
    x_nchw = torch.from_numpy(np.ascontiguousarray(xh.transpose(0, 3, 1, 2))).to(device).contiguous()
    m_nchw = mirror(factory()).to(device).train()
    assert x_nchw.is_contiguous() and not x_nchw.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in m_nchw.parameters())
    # channels_last: the model's weights and the input in NHWC memory order
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    m_cl = mirror(factory()).to(device).train().to(memory_format=torch.channels_last)
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and not x_cl.is_contiguous()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in m_cl.parameters() if p.ndim == 4)
    return m_nchw, x_nchw, m_cl, x_cl, yt


def first_losses(model, x, y, tm):
    """Our first training-mode loss and PyTorch's on the same weights: the same network."""
    import torch
    loss, _ = mx.losses.softmax_cross_entropy(model(x), y)
    model.clear_caches()
    with torch.no_grad():
        lt = torch.nn.functional.cross_entropy(tm[0](tm[1]), tm[4]).item()
    return float(loss), lt


def bench_shape(name, args):
    import cupy as cp
    desc, factory, side, batch = SHAPES[name]
    batch = args.batch or batch
    sync = cp.cuda.Device().synchronize
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((batch, side, side, 3)).astype(np.float32)
    yh = rng.integers(0, 10, batch)
    model = factory()
    row = dict(shape=name, description=desc, batch=batch, parameters=mx.count_params(model))
    print(f"\n== {name}: {desc}; {row['parameters']:,} parameters", flush=True)

    tm = torch_models(factory, xh, yh)
    model.to("gpu")
    x, y = cp.asarray(xh), cp.asarray(yh)
    if tm is not None:
        ours, theirs = first_losses(model, x, y, tm)
        row["first_loss_rel_diff"] = abs(ours - theirs) / abs(theirs)
        print(f"first loss: ours {ours:.6f}, PyTorch {theirs:.6f} (rel. diff {row['first_loss_rel_diff']:.1e}: "
              "the same network)")
        model = factory().to("gpu")                    # fresh: BN statistics as the mirror's
    step = cupy_step(model, x, y)
    row["ours_ms"] = time_steps(step, sync, args.warmup, args.iters)
    launched = hand_written_launches(step, sync)
    row["implementation"] = implementation_line(launched)
    row["hand_written_launches"] = sum(launched.values())
    row["launches_per_step"], row["launches_counted_by"] = count_launches(step, sync)
    print(f"ours (CuPy, fast kernels): {row['ours_ms']:9.2f} ms/step;  {row['implementation']}")
    print(f"  launches per step: {row['launches_per_step']} ({row['launches_counted_by']}); "
          f"{row['hand_written_launches']} of them hand-written")
    del step, model
    cp.get_default_memory_pool().free_all_blocks()

    if name in XP_BASELINE and not args.no_xp:
        with mx.use_kernels("reference"):
            ref_model = factory().to("gpu")
            step = cupy_step(ref_model, x, y)
            row["xp_ms"] = time_steps(step, sync, 2, max(5, args.iters // 3))
            row["xp_launches_per_step"], _ = count_launches(step, sync)
            assert hand_written_launches(step, sync) == {}, "the reference run launched a hand-written kernel"
        print(f"plain xp (reference):      {row['xp_ms']:9.2f} ms/step  (the kernels give x{row['xp_ms'] / row['ours_ms']:.2f});"
              f" launches per step: {row['xp_launches_per_step']}")
        del step, ref_model
        cp.get_default_memory_pool().free_all_blocks()

    if tm is None:
        print("PyTorch with CUDA not available: no cuDNN baseline, no ratio")
        return row
    import torch
    m_nchw, x_nchw, m_cl, x_cl, yt = tm
    row["torch_nchw_ms"] = time_steps(torch_step(m_nchw, x_nchw, yt), torch.cuda.synchronize, args.warmup, args.iters)
    row["torch_channels_last_ms"] = time_steps(torch_step(m_cl, x_cl, yt), torch.cuda.synchronize,
                                               args.warmup, args.iters)
    best = min(row["torch_nchw_ms"], row["torch_channels_last_ms"])
    row["ratio_vs_best_torch"] = row["ours_ms"] / best
    print(f"PyTorch {torch.__version__} NCHW:         {row['torch_nchw_ms']:9.2f} ms/step")
    print(f"PyTorch channels_last:     {row['torch_channels_last_ms']:9.2f} ms/step")
    print(f"RATIO ours / best PyTorch: {row['ratio_vs_best_torch']:.2f}x  (target: within 2x)")
    del m_nchw, m_cl, tm
    torch.cuda.empty_cache()
    return row


def bench_epoch(args):
    """A CIFAR-10-sized epoch (50,000 training images + 10,000 evaluated) of mini_xception width 1."""
    from minixception.train import fit
    rng = np.random.default_rng(0)
    n, n_test, batch = args.epoch_images, args.epoch_images // 5, 128
    data = dict(x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, n),
                x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, n_test))
    with tempfile.TemporaryDirectory() as out:        # a first, short epoch warms up every kernel and pool
        fit(mx.models.mini_xception(10, width=1, rng=0), dict(data, x_train=data["x_train"][:1024],
            y_train=data["y_train"][:1024], x_test=data["x_test"][:256], y_test=data["y_test"][:256]),
            out, epochs=1, batch_size=batch, device="gpu", progress=False, verbose=False)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        r = fit(mx.models.mini_xception(10, width=1, rng=0), data, out, epochs=1, batch_size=batch, lr=0.05,
                device="gpu", progress=False, verbose=False)[0]
        total = time.perf_counter() - t0
    print(f"\n== epoch: {n} training images (+{n_test} evaluated), mini_xception width 1, batch {batch}, "
          f"augmentation on: {r['epoch_time_s']:.1f} s in the epoch ({r['images_per_s']:.0f} img/s training), "
          f"{total:.1f} s with set-up and checkpoint")
    return dict(shape="epoch", description=f"CIFAR-10-sized epoch ({n} images) of mini_xception width 1",
                batch=batch, epoch_s=r["epoch_time_s"], images_per_s=r["images_per_s"], total_s=total)


def summary(rows):
    head = f"{'shape':12s} {'ours ms':>9s} {'xp ms':>9s} {'torch NCHW':>10s} {'torch NHWC':>10s} {'ratio':>6s} {'launches':>9s}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        if r["shape"] == "epoch":
            print(f"{'epoch':12s} {r['epoch_s']:9.1f} s for {r['description']}")
            continue
        f = lambda k, w, p=2: f"{r[k]:{w}.{p}f}" if r.get(k) is not None else f"{'-':>{w}s}"   # noqa: E731
        launches = r.get("launches_per_step")
        print(f"{r['shape']:12s} {f('ours_ms', 9)} {f('xp_ms', 9)} {f('torch_nchw_ms', 10)} "
              f"{f('torch_channels_last_ms', 10)} {f('ratio_vs_best_torch', 6)} "
              f"{launches if launches is not None else '-':>9}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(SHAPES) + ["epoch"], help="run only these shapes")
    ap.add_argument("--batch", type=int, default=None, help="override every shape's batch size")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--epoch-images", type=int, default=50000)
    ap.add_argument("--no-xp", action="store_true", help="skip the plain-xp (reference) timings")
    ap.add_argument("--json", type=Path, help="also write the rows (and the machine) to this file")
    args = ap.parse_args(argv)

    if not mx.gpu_available():
        print("bench_gpu: no usable GPU here (CuPy missing, or cupy.is_available() is False): nothing measured")
        return 0
    import cupy as cp
    props = cp.cuda.runtime.getDeviceProperties(0)
    machine = dict(gpu=props["name"].decode(), cupy=cp.__version__,
                   cuda_runtime=cp.cuda.runtime.runtimeGetVersion(), cuda_driver=cp.cuda.runtime.driverGetVersion())
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        machine["torch"] = torch.__version__
        machine["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        pass
    print("machine:", json.dumps(machine))
    status = mxcuda.status()
    print(f"hand-written kernels: {status['reason']}")

    rows = []
    for name in args.only or list(SHAPES) + ["epoch"]:
        rows.append(bench_epoch(args) if name == "epoch" else bench_shape(name, args))
    failed = {k: v for k, v in mxcuda.status()["kernels"].items() if v != "compiled"}
    for k, v in failed.items():
        print(f"KERNEL BUILD FAILED, the reference ran instead: {k}: {v}")
    summary(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(machine=machine, kernels=mxcuda.status()["kernels"], rows=rows),
                                        indent=1, default=str))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
