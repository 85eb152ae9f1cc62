"""CPU benchmark: minixception against PyTorch on the same machine, interleaved in one run.

Prints two tables, as ratios minixception / PyTorch (lower is better, 1.0 = as fast):

* per op, forward + backward at shapes from the training step below, with the
  implementation that ran (``numba`` kernel or the NumPy ``reference``; see
  ``minixception.kernels``);
* one training step (forward, loss, backward, SGD with momentum and weight decay) at
  32x32, batch 32, float32, for ``mini_xception`` at widths 1, 2 and 4 and a
  ~3M-parameter Xception-style network (stem 32/64, entry 128/256/364, two middle
  blocks at 364, exit 364->512, final 768/1024).

PyTorch runs the same network with the same weights (``torch_mirror``), in both NCHW and
channels_last; its better time counts. The runs of both sides alternate, repeat after
repeat, so a burst of load on a shared machine hits both; each side's best repeat counts.
The numba kernels are compiled (or loaded from the disk cache) before any timing, and
minixception runs inside ``mx.cpu_threads(n)`` as the trainer does (the kernels on n
threads, BLAS on one; n = MINIXCEPTION_THREADS or the cores).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_cpu.py [--quick] [--threads N]

Measurement only: no test asserts a time.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minixception as mx  # noqa: E402
from minixception import kernels  # noqa: E402
from minixception.models.xception import XceptionNet, mini_xception  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover
    sys.exit("this benchmark compares against PyTorch: pip install torch (the CPU build)")

from torch_mirror import mirror_model  # noqa: E402

# the ~3M-parameter Xception-style network: Keras's Xception pattern at about half width
SPEC_3M = dict(stem=(32, 64), entry=(128, 256, 364), middle=364, exit=(364, 512), final=(768, 1024))


def interleaved_best(fns, repeat):
    """Best time of each of ``fns``, running them in turn ``repeat`` times (after one warm-up each)."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------ per op
def _t(a, layout):
    """NHWC array -> torch NCHW tensor in ``layout`` ("nchw" contiguous or "channels_last")."""
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    t = t.contiguous() if layout == "nchw" else t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


def _w(w, layout):
    t = torch.from_numpy(np.ascontiguousarray(w))
    if layout == "channels_last" and t.ndim == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


def op_cases(batch, rng):
    """[(label, op, args, torch_fn(layout) -> closure)] at shapes of the networks below."""
    f32 = np.float32

    def arr(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(f32)

    cases = []

    def conv(label, hw, cin, cout, k, stride, padding):
        x, w = arr(batch, hw, hw, cin), arr(k, k, cin, cout, scale=0.2)
        pad = (k // 2) if padding == "same" and stride == 1 else 0

        def torch_fn(layout):
            tx, tw = _t(x, layout), _w(w.transpose(3, 2, 0, 1), layout)
            return lambda: TF.conv2d(tx, tw, None, stride, pad).sum().backward()
        cases.append((label, "conv2d", (x, w, None, stride, padding), torch_fn))

    def depthwise(hw, c, stride=1):
        x, k = arr(batch, hw, hw, c), arr(3, 3, c, 1, scale=0.3)

        def torch_fn(layout):
            tx, tk = _t(x, layout), _w(k.transpose(2, 3, 0, 1), layout)
            return lambda: TF.conv2d(tx, tk, None, stride, 1, 1, c).sum().backward()
        cases.append((f"depthwise 3x3/{stride} {hw}x{hw}x{c}", "depthwise_conv2d", (x, k, stride, "same"), torch_fn))

    conv("conv 3x3 3->32 32x32 (stem)", 32, 3, 32, 3, 1, "same")
    conv("conv 3x3 32->64 32x32 (stem)", 32, 32, 64, 3, 1, "same")
    depthwise(32, 16)
    depthwise(16, 128)
    depthwise(8, 364)
    x, d, p = arr(batch, 16, 16, 128), arr(3, 3, 128, 1, scale=0.3), arr(1, 1, 128, 256, scale=0.1)

    def sep_torch(layout):
        tx, td, tp = _t(x, layout), _w(d.transpose(2, 3, 0, 1), layout), _w(p.transpose(3, 2, 0, 1), layout)
        return lambda: TF.conv2d(TF.conv2d(tx, td, None, 1, 1, 1, 128), tp).sum().backward()
    cases.append(("separable 128->256 16x16", "separable_conv2d", (x, d, p, 1, "same", None), sep_torch))
    xq, wq = arr(batch, 16, 16, 128), arr(1, 1, 128, 256, scale=0.1)

    def pw_torch(layout):
        tx, tw = _t(xq, layout), _w(wq.transpose(3, 2, 0, 1), layout)
        return lambda: TF.conv2d(tx, tw).sum().backward()
    cases.append(("pointwise 128->256 16x16", "pointwise_conv2d", (xq, wq), pw_torch))
    conv("shortcut 1x1/2 64->128 32x32", 32, 64, 128, 1, 2, "valid")
    for hw, c in ((32, 32), (16, 128)):
        xb = arr(batch, hw, hw, c)
        g, b = np.ones(c, f32), np.zeros(c, f32)

        def bn_torch(layout, xb=xb, c=c):
            tx = _t(xb, layout)
            tg, tb = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
            rm, rv = torch.zeros(c), torch.ones(c)
            return lambda: TF.batch_norm(tx, rm, rv, tg, tb, True, 0.01, 1e-3).sum().backward()
        cases.append((f"batch norm (train) {hw}x{hw}x{c}", "batchnorm",
                      (xb, g, b, np.zeros(c, f32), np.ones(c, f32), True), bn_torch))
    xr = arr(batch, 16, 16, 128)
    cases.append(("relu 16x16x128", "relu", (xr,),
                  lambda layout: (lambda tx=_t(xr, layout): TF.relu(tx).sum().backward())))

    def mp_torch(layout):
        tx = _t(xr, layout)        # TF "same" 3x3/2 on 16: pad 0 before, 1 after
        return lambda: TF.max_pool2d(TF.pad(tx, (0, 1, 0, 1), value=float("-inf")), 3, 2).sum().backward()
    cases.append(("max pool 3x3/2 16x16x128", "maxpool2d", (xr, 3, 2, "same"), mp_torch))
    return cases


def mx_op_closure(op, args, seed=0):
    """forward + backward of ``op`` through the dispatch table, as a layer runs it."""
    impl = kernels.select(op, *args)
    y, _ = impl.forward(*args)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)

    def run():
        _, cache = impl.forward(*args)
        impl.backward(dy, cache)
    return impl.name, run


def op_table(batch, repeat):
    cases = [(label, *mx_op_closure(op, args), torch_fn) for label, op, args, torch_fn in
             op_cases(batch, np.random.default_rng(0))]
    for _, _, run, _ in cases:                             # compile / load every kernel before timing
        run()
    print(f"{'op (forward + backward)':34s} {'ran':>9s} {'minixception':>13s} {'PyTorch':>10s} {'ratio':>7s}")
    for label, name, run, torch_fn in cases:
        t_mx, t_nchw, t_cl = interleaved_best([run, torch_fn("nchw"), torch_fn("channels_last")], repeat)
        t_th = min(t_nchw, t_cl)
        print(f"{label:34s} {name:>9s} {t_mx * 1e3:10.2f} ms {t_th * 1e3:7.2f} ms {t_mx / t_th:6.2f}x")


# ------------------------------------------------------------------ training step
def networks(widths, with_3m):
    for w in widths:
        yield f"mini_xception(width={w:g})", lambda w=w: mini_xception(num_classes=10, width=w, rng=0)
    if with_3m:
        yield "Xception-style ~3M", lambda: XceptionNet(SPEC_3M, num_classes=10, input_shape=(32, 32, 3),
                                                        middle_blocks=2, small_input=True, rng=0)


def _ran_in_one_step(step):
    """{op: implementation name} seen by the dispatch table during one ``step()``."""
    seen, select = {}, kernels.select

    def spy(op, x, *args, **kwargs):
        impl = select(op, x, *args, **kwargs)
        seen.setdefault(op, set()).add(impl.name)
        return impl
    kernels.select = spy
    try:
        step()
    finally:
        kernels.select = select
    return {op: "/".join(sorted(names)) for op, names in sorted(seen.items())}


def step_ratio(make_model, batch, repeat):
    model = make_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    opt = mx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)

    def mx_step():
        opt.zero_grad()
        _, dlogits = mx.losses.softmax_cross_entropy(model(x), labels)
        model.backward(dlogits)
        opt.step()

    tnet = mirror_model(model)[1]                          # the NCHW network, without the NHWC permute
    model.eval(); tnet.eval()
    with torch.no_grad():                                  # the same network: the logits must agree
        diff = float(np.abs(model(x) - tnet(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()).max())
    model.train(); tnet.train()
    tl = torch.from_numpy(labels)

    def torch_step(layout):
        net = copy.deepcopy(tnet)
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        if layout == "channels_last":
            net = net.to(memory_format=torch.channels_last)
            tx = tx.contiguous(memory_format=torch.channels_last)
        topt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)

        def step():
            topt.zero_grad()
            TF.cross_entropy(net(tx), tl).backward()
            topt.step()
        return step

    ran = _ran_in_one_step(mx_step)                        # also the warm-up: kernels compiled / loaded
    t_mx, t_nchw, t_cl = interleaved_best([mx_step, torch_step("nchw"), torch_step("channels_last")], repeat)
    return mx.count_params(model), diff, t_mx, t_nchw, t_cl, ran


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run: 3 repeats, widths 1 and 4, no 3M network")
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats per entry (default 5; --quick 3)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--widths", default=None, help="mini_xception widths, comma-separated (default 1,2,4)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for both sides (0: MINIXCEPTION_THREADS or all cores); --threads 1 is "
                         "steadier on a busy machine")
    ap.add_argument("--ops-only", action="store_true")
    ap.add_argument("--step-only", action="store_true")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    widths = [float(w) for w in (args.widths or ("1,4" if args.quick else "1,2,4")).split(",")]

    n_threads = args.threads or kernels.cpu.threads.num_threads()
    torch.set_num_threads(n_threads)
    print(f"NumPy {np.__version__}, PyTorch {torch.__version__}, {os.cpu_count()} cores, "
          f"{n_threads} thread(s) each side, float32, batch {args.batch}")
    t0 = time.perf_counter()
    kernels.cpu.load()                                     # import the numba kernels (if numba is there)
    print(f"fast CPU kernels: {', '.join(op for op, names in kernels.registered().items() if len(names) > 1) or 'none'}")
    print(f"best of {repeat} interleaved repeats; ratio = minixception / PyTorch (best of NCHW and "
          f"channels_last); lower is better\n")
    with mx.cpu_threads(n_threads):
        tables(args, repeat, widths)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


def tables(args, repeat, widths):
    if not args.step_only:
        op_table(args.batch, repeat)
        print()
    if not args.ops_only:
        print(f"training step (forward, loss, backward, SGD), 32x32, batch {args.batch}, float32:")
        print(f"  {'network':30s} {'params':>10s} {'minixception':>13s} {'PyTorch':>9s} {'(NCHW':>8s} "
              f"{'ch_last)':>9s} {'ratio':>7s}")
        for label, make in networks(widths, not args.quick):
            n, diff, a, b_nchw, b_cl, ran = step_ratio(make, args.batch, repeat)
            b = min(b_nchw, b_cl)
            print(f"  {label:30s} {n:>10,} {a * 1e3:10.1f} ms {b * 1e3:6.1f} ms {b_nchw * 1e3:7.1f} "
                  f"{b_cl * 1e3:8.1f}  {a / b:6.2f}x   (max |logit diff| {diff:.0e})")
        print("\n  implementations that ran in the last step: "
              + ", ".join(f"{op} {names}" for op, names in ran.items()))


if __name__ == "__main__":
    main()
