"""Xception vs Inception V3 side by side: the paper's Table 3, measured on this machine.

    mx.compare.compare()                     # prints the table, returns its rows
    python -m minixception compare [--batch-size 2] [--repeats 2] [--device gpu] [--no-timing]

For each network: trainable parameters (the paper's count), parameters with the batch-norm moving
statistics (Keras's), multiply-adds of one image at the input size (299x299 by default), the time
of a forward pass (eval mode) and of a training step (forward, loss, backward, SGD update) for
a small batch, and the parameters that the optional fully connected layers (the paper's "with FC
layers", two of 4096) add. Times are the best of ``repeats`` runs after one warm-up; they depend on
the machine and on what else runs on it, so the table names the machine.
"""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

from .backend import check_device, get_array_module, to_device
from .losses import softmax_cross_entropy
from .nn.module import inference_mode
from .optim import SGD
from .summary import _layer_counts, count_params, trace_shapes

# The paper's Table 3 (parameters, training steps/s on 60 NVIDIA K80 GPUs)
PAPER = {"Xception": (22_855_952, 28), "Inception V3": (23_626_728, 31)}


def machine_description(device="cpu"):
    """One line naming the machine the times come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, NumPy {np.__version__}"
    if device == "gpu":
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        text += f"; GPU {name}, CuPy {cupy.__version__}"
    return text


def mult_adds(model, input_shape):
    """Multiply-accumulates of one image through ``model`` (convolutions and dense layers)."""
    records, _ = trace_shapes(model, input_shape)
    return sum(v[1] for _, m, sin, sout in records for v in _layer_counts(m, sin, sout).values())


def _sync(x):
    xp = get_array_module(x)
    if xp is not np:
        xp.cuda.Device().synchronize()


def time_steps(model, input_shape, batch_size=2, repeats=2, device="cpu", seed=0):
    """(forward seconds, training-step seconds) for one batch: the best of ``repeats`` after a warm-up."""
    rng = np.random.default_rng(seed)
    x = to_device(rng.normal(size=(batch_size,) + tuple(input_shape)).astype(np.float32), device)
    n_out = [m for m in model.modules() if hasattr(m, "out_features")][-1].out_features
    y = to_device(rng.integers(0, n_out, batch_size), device)
    opt = SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def forward():
        model.eval()
        with inference_mode():
            _sync(model(x))

    def train_step():
        model.train()
        opt.zero_grad()
        logits = model(x)
        _, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        opt.step()
        _sync(logits)

    times = []
    for fn in (forward, train_step):
        fn()                                        # warm-up: allocations, kernel compilation
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times.append(best)
    model.eval()
    return tuple(times)


def compare(input_size=299, batch_size=2, repeats=2, device="cpu", timing=True, fc_layers=(4096, 4096),
            num_classes=1000, file=None):
    """Print (to ``file``, default stdout) and return the side-by-side table of both networks.

    Returns ``{"Xception": {...}, "Inception V3": {...}, "machine": str}`` with the keys
    ``params``, ``params_with_bn_stats``, ``mult_adds``, ``forward_s``, ``train_step_s`` (None
    without timing) and ``fc_params`` (what ``fc_layers`` adds).
    """
    from .models import InceptionV3, Xception
    check_device(device)
    if not isinstance(input_size, int) or input_size < 75:
        raise ValueError(f"input_size must be an int >= 75 (Inception V3's smallest), got {input_size!r}")
    shape = (input_size, input_size, 3)
    builders = {"Xception": Xception, "Inception V3": InceptionV3}
    out = {}
    for name, cls in builders.items():
        model = cls(num_classes=num_classes, input_shape=shape, rng=0)
        row = dict(params=count_params(model), params_with_bn_stats=count_params(model, include_buffers=True),
                   mult_adds=mult_adds(model, shape), forward_s=None, train_step_s=None)
        if fc_layers:
            with_fc = cls(num_classes=num_classes, input_shape=shape, rng=0, fc_layers=tuple(fc_layers))
            row["fc_params"] = count_params(with_fc) - row["params"]
            del with_fc
        if timing:
            model.to(device)
            row["forward_s"], row["train_step_s"] = time_steps(model, shape, batch_size, repeats, device)
        out[name] = row
        del model
    out["machine"] = machine_description(device)
    _print(out, input_size, batch_size, repeats, device, fc_layers, file)
    return out


def _print(out, size, batch, repeats, device, fc_layers, file):
    names = ["Xception", "Inception V3"]

    def num(v):
        return "-" if v is None else f"{v:,}"

    def ms(v):
        return "-" if v is None else f"{1000 * v:,.0f} ms"

    rows = [("trainable parameters", [num(out[n]["params"]) for n in names]),
            ("  the paper's Table 3", [num(PAPER[n][0]) for n in names]),
            ("with BN moving statistics", [num(out[n]["params_with_bn_stats"]) for n in names]),
            (f"mult-adds per image, {size}x{size}", [f"{out[n]['mult_adds'] / 1e9:.2f} G" for n in names]),
            (f"forward, batch {batch} ({device})", [ms(out[n]["forward_s"]) for n in names]),
            (f"training step, batch {batch} ({device})", [ms(out[n]["train_step_s"]) for n in names]),
            ("  the paper: steps/s on 60 K80 GPUs", [str(PAPER[n][1]) for n in names])]
    if fc_layers:
        rows.append((f"+ FC layers {tuple(fc_layers)}: parameters", [num(out[n].get("fc_params")) for n in names]))
    w0 = max(len(r[0]) for r in rows)
    w = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    lines = [f"{'':<{w0}}  {names[0]:>{w[0]}}  {names[1]:>{w[1]}}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{label:<{w0}}  {a:>{w[0]}}  {b:>{w[1]}}" for label, (a, b) in rows]
    lines.append(f"times: best of {repeats} after a warm-up, on {out['machine']}"
                 if out["Xception"]["forward_s"] is not None else "times: not measured (--no-timing)")
    print("\n".join(lines), file=file if file is not None else sys.stdout)


def add_compare_args(p):
    p.add_argument("--input-size", type=int, default=299, help="square input size (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="images per timed step (default %(default)s: a 299x299 step takes seconds on a CPU)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement, best kept (default %(default)s)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="default %(default)s")
    p.add_argument("--no-timing", dest="timing", action="store_false",
                   help="counts only (parameters, mult-adds): seconds instead of minutes")


def cmd_compare(args):
    compare(input_size=args.input_size, batch_size=args.batch_size, repeats=args.repeats,
            device=args.device, timing=args.timing)
    return 0


__all__ = ["compare", "time_steps", "mult_adds", "machine_description", "PAPER"]
