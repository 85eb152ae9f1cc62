"""CPU benchmark: minixception (NumPy) against PyTorch on the same machine, in one run.

Prints, for each op, the forward+backward time of both and the ratio
(minixception / PyTorch; lower is better, 1.0 = as fast), then one full training step
(forward, loss, backward, SGD update) of an Xception-style network at 32x32, batch 32,
float32. Both sides run the same shapes with the same weights; PyTorch runs NCHW
(its native layout) with as many threads as NumPy's BLAS gets (all cores).

    python bench/bench_cpu.py [--batch 32] [--repeat 7] [--ops-only | --step-only]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minixception as mx  # noqa: E402
from minixception import functional as F  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover
    sys.exit("this benchmark compares against PyTorch: pip install torch==2.13.0 (the CPU build)")


CLOCK = time.perf_counter


def timeit(fn, repeat):
    fn()  # warm-up (allocations, BLAS threads)
    times = []
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return min(times)   # the least-disturbed run: steadier than the median on a shared machine


def torch_tensor(a, requires_grad=True, nchw=True):
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2) if (nchw and a.ndim == 4) else a))
    return t.contiguous().requires_grad_(requires_grad)


def op_cases(n, rng):
    """(name, minixception fwd+bwd closure, torch fwd+bwd closure) for the ops of a training step."""
    f32 = np.float32

    def arr(*shape):
        return rng.standard_normal(shape).astype(f32)

    cases = []
    # depthwise 3x3 stride 1 same, 16x16x256 (a middle-flow-like shape)
    x, k = arr(n, 16, 16, 256), arr(3, 3, 256, 1) * 0.3
    dy = arr(n, 16, 16, 256)
    tx, tk, tdy = torch_tensor(x), torch.from_numpy(k.transpose(2, 3, 0, 1).copy()).requires_grad_(), torch_tensor(dy, False)

    def mx_dw(x=x, k=k, dy=dy):
        y, c = F.depthwise_conv2d_forward(x, k, 1, "same")
        F.depthwise_conv2d_backward(dy, c)

    def th_dw(tx=tx, tk=tk, tdy=tdy):
        y = TF.conv2d(tx, tk, padding=1, groups=256)
        y.backward(tdy)
    cases.append(("depthwise 3x3 16x16x256", mx_dw, th_dw))

    # pointwise 256 -> 256 at 16x16
    w = arr(1, 1, 256, 256) * 0.06
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_()

    def mx_pw(x=x, w=w, dy=dy):
        y, c = F.pointwise_conv2d_forward(x, w)
        F.pointwise_conv2d_backward(dy, c)

    def th_pw(tx=tx, tw=tw, tdy=tdy):
        TF.conv2d(tx, tw).backward(tdy)
    cases.append(("pointwise 256->256 16x16", mx_pw, th_pw))

    # batch norm (train) at 16x16x256
    g, b = np.ones(256, f32), np.zeros(256, f32)
    tg, tb = torch.ones(256, requires_grad=True), torch.zeros(256, requires_grad=True)

    def mx_bn(x=x, dy=dy):
        y, c = F.batchnorm_forward(x, g, b, np.zeros(256, f32), np.ones(256, f32), True)
        F.batchnorm_backward(dy, c)

    def th_bn(tx=tx, tdy=tdy):
        TF.batch_norm(tx, torch.zeros(256), torch.ones(256), tg, tb, True, 0.01, 1e-3).backward(tdy)
    cases.append(("batch norm (train) 16x16x256", mx_bn, th_bn))

    # ReLU
    def mx_relu(x=x, dy=dy):
        y, c = F.relu_forward(x)
        F.relu_backward(dy, c)

    def th_relu(tx=tx, tdy=tdy):
        TF.relu(tx).backward(tdy)
    cases.append(("relu 16x16x256", mx_relu, th_relu))

    # max pool 3x3/2 same
    dyp = arr(n, 8, 8, 256)
    tdyp = torch_tensor(dyp, False)

    def mx_mp(x=x, dyp=dyp):
        y, c = F.maxpool2d_forward(x, 3, 2, "same")
        F.maxpool2d_backward(dyp, c)

    def th_mp(tx=tx, tdyp=tdyp):
        TF.max_pool2d(TF.pad(tx, (0, 1, 0, 1), value=float("-inf")), 3, 2).backward(tdyp)
    cases.append(("max pool 3x3/2 16x16x256", mx_mp, th_mp))

    # stem conv 3x3, 3 -> 32 at 32x32
    xs, ks, dys = arr(n, 32, 32, 3), arr(3, 3, 3, 32) * 0.2, arr(n, 32, 32, 32)
    txs, tks, tdys = torch_tensor(xs), torch.from_numpy(ks.transpose(3, 2, 0, 1).copy()).requires_grad_(), torch_tensor(dys, False)

    def mx_conv(xs=xs, ks=ks, dys=dys):
        y, c = F.conv2d_forward(xs, ks, None, 1, "same")
        F.conv2d_backward(dys, c)

    def th_conv(txs=txs, tks=tks, tdys=tdys):
        TF.conv2d(txs, tks, padding=1).backward(tdys)
    cases.append(("conv 3x3 3->32 32x32", mx_conv, th_conv))
    return cases


def xception_style(num_classes=10, rng=0, width=2.0):
    """The benchmark network: mini_xception when the models package has it, else a local one."""
    try:
        from minixception.models import mini_xception
        return mini_xception(num_classes=num_classes, width=width, rng=rng), f"mx.models.mini_xception(width={width:g})"
    except ImportError:
        pass
    nn = mx.nn
    r = np.random.default_rng(rng)

    def sep(cin, cout, name):
        return [nn.SeparableConv2D(cin, cout, name=name, rng=r), nn.BatchNorm2D(cout)]

    def entry(cin, cout, first_relu=True):
        main = ([nn.ReLU()] if first_relu else []) + sep(cin, cout, None) + [nn.ReLU()] + sep(cout, cout, None) + [nn.MaxPool2D(3, 2, "same")]
        short = nn.Sequential(nn.Conv2D(cin, cout, 1, 2, "same", use_bias=False, rng=r), nn.BatchNorm2D(cout))
        return nn.Residual(nn.Sequential(*main), short)

    def middle(c):
        return nn.Residual(nn.Sequential(*sum(([nn.ReLU()] + sep(c, c, None) for _ in range(3)), [])))

    model = nn.Sequential(
        nn.Conv2D(3, 32, 3, 1, "same", use_bias=False, rng=r), nn.BatchNorm2D(32), nn.ReLU(),
        nn.Conv2D(32, 64, 3, 1, "same", use_bias=False, rng=r), nn.BatchNorm2D(64), nn.ReLU(),
        entry(64, 128, False), entry(128, 256), middle(256), middle(256),
        nn.SeparableConv2D(256, 512, rng=r), nn.BatchNorm2D(512), nn.ReLU(),
        nn.GlobalAvgPool2D(), nn.Dense(512, num_classes, rng=r))
    return model, "local Xception-style network (stem, 2 entry blocks, 2 middle blocks, exit)"


def train_step_ratio(batch, repeat, width):
    from torch_mirror import mirror_model
    model, what = xception_style(width=width)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    opt = mx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    tnet = mirror_model(model)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    tx, tl = torch.from_numpy(x), torch.from_numpy(labels)

    def mx_step():
        opt.zero_grad()
        logits = model(x)
        loss, dlogits = mx.losses.softmax_cross_entropy(logits, labels)
        model.backward(dlogits)
        opt.step()

    def th_step():
        topt.zero_grad()
        loss = TF.cross_entropy(tnet(tx), tl)
        loss.backward()
        topt.step()

    # same network, same weights: the first forward must agree (a wrong mirror would make the ratio meaningless)
    model.eval(); tnet.eval()
    with torch.no_grad():
        diff = float(np.abs(model(x) - tnet(tx).numpy()).max())
    model.train(); tnet.train()
    t_mx, t_th = timeit(mx_step, repeat), timeit(th_step, repeat)
    n_params = sum(p.size for p in model.parameters())
    return what, n_params, diff, t_mx, t_th


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--ops-only", action="store_true")
    ap.add_argument("--step-only", action="store_true")
    ap.add_argument("--width", default="1,2,4",
                    help="width multipliers of the mini Xception for the training step, comma-separated "
                         "(default 1,2,4: 110k, 416k and 1.6M parameters)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: all cores); set OPENBLAS_NUM_THREADS too")
    ap.add_argument("--cpu-time", action="store_true",
                    help="measure process CPU time instead of wall time (steadier on a busy machine; "
                         "use with --threads 1 and OPENBLAS_NUM_THREADS=1)")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(f"NumPy {np.__version__}, PyTorch {torch.__version__}, {os.cpu_count()} cores, float32, batch {args.batch}")
    print("times are the best of --repeat runs of forward+backward; ratio = minixception / PyTorch (lower is better)\n")
    if not args.step_only:
        print(f"{'op':32s} {'minixception':>13s} {'PyTorch':>10s} {'ratio':>7s}")
        for name, f_mx, f_th in op_cases(args.batch, np.random.default_rng(0)):
            a, b = timeit(f_mx, args.repeat), timeit(f_th, args.repeat)
            print(f"{name:32s} {a * 1e3:10.2f} ms {b * 1e3:7.2f} ms {a / b:6.2f}x")
        print()
    if not args.ops_only:
        print(f"training step (forward, loss, backward, SGD), 32x32, batch {args.batch}:")
        for width in (float(w) for w in args.width.split(",")):
            what, n_params, diff, a, b = train_step_ratio(args.batch, args.repeat, width)
            print(f"  {what:34s} {n_params:>10,} params   minixception {a * 1e3:7.1f} ms   "
                  f"PyTorch {b * 1e3:6.1f} ms   ratio {a / b:.2f}x   (same weights: max |logit diff| {diff:.1e})")


if __name__ == "__main__":
    main()
