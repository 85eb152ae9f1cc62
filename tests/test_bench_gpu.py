"""bench/bench_gpu.py: runs without a GPU by saying so; its PyTorch baselines really are NCHW and
channels_last and compute our network; on a GPU, one shape end to end."""
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import minixception as mx

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runs_without_a_gpu_and_says_so():
    if mx.gpu_available():
        pytest.skip("a GPU is present")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--only", "mini1"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "no usable GPU" in r.stdout and "nothing measured" in r.stdout


def test_torch_baselines_are_nchw_and_channels_last_of_the_same_network():
    torch = pytest.importorskip("torch")
    bench = _bench()
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    yh = rng.integers(0, 10, 4)
    factory = lambda: mx.models.mini_xception(10, width=0.5, middle_blocks=1, rng=0)   # noqa: E731
    m_nchw, x_nchw, m_cl, x_cl, yt = bench.torch_models(factory, xh, yh, device="cpu")
    assert x_nchw.is_contiguous() and x_nchw.shape == (4, 3, 32, 32)
    assert x_cl.is_contiguous(memory_format=torch.channels_last) and not x_cl.is_contiguous()
    ours = factory()
    y_ours = ours(xh)
    with torch.no_grad():
        for m, x in ((m_nchw, x_nchw), (m_cl, x_cl)):
            np.testing.assert_allclose(m(x).numpy(), y_ours, rtol=1e-3, atol=1e-4)
    ours_loss, torch_loss = bench.first_losses(factory(), xh, yh, (m_nchw, x_nchw, m_cl, x_cl, yt))
    assert abs(ours_loss - torch_loss) / abs(torch_loss) < 1e-4


def test_summary_table_prints_every_row(capsys):
    bench = _bench()
    rows = [dict(shape="mini1", ours_ms=3.5, xp_ms=12.0, torch_nchw_ms=2.0, torch_channels_last_ms=2.5,
                 ratio_vs_best_torch=1.75, launches_per_step=420),
            dict(shape="xception299", ours_ms=150.0, launches_per_step=None),
            dict(shape="epoch", epoch_s=9.5, description="CIFAR-10-sized epoch")]
    bench.summary(rows)
    out = capsys.readouterr().out
    assert "mini1" in out and "1.75" in out and "420" in out and "xception299" in out and "9.5 s" in out


def test_implementation_line_names_what_ran():
    bench = _bench()
    assert bench.implementation_line({}) == "plain CuPy reference (no hand-written kernel launched)"
    assert bench.implementation_line({"dw_forward": 7, "bn_apply": 3}) == "hand-written CUDA: bn_apply x3, dw_forward x7"


@pytest.mark.gpu
def test_one_shape_end_to_end_on_gpu():
    bench = _bench()
    args = types.SimpleNamespace(batch=32, warmup=2, iters=3, no_xp=False)
    row = bench.bench_shape("mini1", args)
    assert row["ours_ms"] > 0 and row["xp_ms"] > 0
    assert row["implementation"].startswith("hand-written CUDA"), row["implementation"]
    assert row["hand_written_launches"] > 0


# -- bench/launch_estimate.py: launches counted on the CPU ------------------------------------

def _estimator():
    spec = importlib.util.spec_from_file_location("launch_estimate", ROOT / "bench" / "launch_estimate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_launch_counter_counts_array_operations_not_views():
    est = _estimator()
    a = np.arange(12.0).reshape(3, 4).view(est.CountingArray)
    with est.counting_array_module():
        est._Count.launches = 0
        y, mask = mx.functional.relu_forward(a - 5)        # subtract 1; relu: greater + maximum
        assert est._Count.launches == 3
        b = a.reshape(4, 3).T[1:]                          # views: free
        assert est._Count.launches == 3
        a[...] = 0                                         # a fill: one kernel
        b.sum(axis=0)                                      # a reduction: one
        a.copy()                                           # a copy: one
        assert est._Count.launches == 6


def test_launch_estimate_of_a_small_step():
    est = _estimator()
    model = mx.models.mini_xception(10, width=0.5, middle_blocks=1, rng=0)
    n_params = len(model.parameters())
    r = est.estimate(model, batch=2)
    ops = r["ops"]
    assert ops[("batchnorm", "forward")][2] == 3 * ops[("batchnorm", "forward")][0]
    assert ops[("sgd_update", "update")][0] == n_params
    assert ops[("depthwise_conv2d", "forward")][0] > 0 and ops[("maxpool2d", "backward")][0] > 0
    assert r["reference"] > 2 * r["fast"] > 0
    swapped_ref = sum(v[1] for v in ops.values())
    swapped_fast = sum(v[2] for v in ops.values())
    assert r["reference"] - r["fast"] == swapped_ref - swapped_fast


def test_gpu_check_without_a_gpu_says_so_and_exits_zero():
    if mx.gpu_available():
        pytest.skip("a GPU is present")
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no usable GPU here" in r.stdout and "nothing to check" in r.stdout
