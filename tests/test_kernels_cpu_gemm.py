"""The pointwise convolution's GEMMs split by rows over the CPU kernels' pool (kernels/cpu/gemm.py)."""
import numpy as np
import pytest

import minixception as mx
from minixception import functional as F
from minixception import kernels
from minixception.kernels.cpu import gemm, threads

pytest.importorskip("numba")     # the CPU kernels load (and register) only with numba installed


@pytest.fixture(autouse=True)
def _loaded():
    kernels.select("pointwise_conv2d", np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.float32))


def _case(dtype, n=32, hw=16, c=64, f=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, hw, hw, c)).astype(dtype)
    k = rng.standard_normal((1, 1, c, f)).astype(dtype)
    dy = rng.standard_normal((n, hw, hw, f)).astype(dtype)
    return x, k, dy


def test_the_pointwise_op_registers_the_split_gemm():
    x, k, _ = _case("float32")
    assert kernels.select("pointwise_conv2d", x, k).name == "numpy-threads"
    assert kernels.select("pointwise_conv2d", x.astype("float64"), k).name == "reference"   # mixed dtypes


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-12)])
@pytest.mark.parametrize("inside", [True, False], ids=["in-cpu_threads", "outside"])
def test_split_pointwise_equals_the_reference(dtype, tol, inside, monkeypatch):
    monkeypatch.setattr(gemm, "GEMM_BLOCK_WORK", 1 << 16)          # many row blocks even at this size
    x, k, dy = _case(dtype)
    x64, k64, dy64 = (a.astype("float64") for a in (x, k, dy))
    y_ref, cache = F.pointwise_conv2d_forward(x64, k64)
    dx_ref, dk_ref = F.pointwise_conv2d_backward(dy64, cache)
    with mx.cpu_threads(2) if inside else mx.use_kernels("fast"):
        y, c = gemm.pointwise_conv2d_forward(x, k)
        dx, dk = gemm.pointwise_conv2d_backward(dy, c)
    for got, want in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_split_only_where_blas_is_held(monkeypatch):
    calls = []
    real = threads.run_chunks
    monkeypatch.setattr(threads, "run_chunks", lambda fn, b: calls.append(len(b)) or real(fn, b))
    monkeypatch.setattr(gemm, "GEMM_BLOCK_WORK", 1 << 16)
    x, k, _ = _case("float32")
    gemm.pointwise_conv2d_forward(x, k)
    assert calls == []                         # outside cpu_threads BLAS threads the GEMM itself
    with mx.cpu_threads(2):
        gemm.pointwise_conv2d_forward(x, k)
    assert calls and calls[0] > 2


def test_dkernel_is_the_same_for_any_thread_count(monkeypatch):
    monkeypatch.setattr(gemm, "GEMM_BLOCK_WORK", 1 << 16)
    x, k, dy = _case("float32", seed=3)
    out = []
    for n in (1, 2, 3):
        with mx.cpu_threads(n):
            _, c = gemm.pointwise_conv2d_forward(x, k)
            out.append(gemm.pointwise_conv2d_backward(dy, c))
    for dx, dk in out[1:]:
        np.testing.assert_array_equal(dx, out[0][0])
        np.testing.assert_array_equal(dk, out[0][1])


def test_a_wrong_dy_is_refused():
    x, k, dy = _case("float32")
    _, c = gemm.pointwise_conv2d_forward(x, k)
    with pytest.raises(TypeError, match="dy of shape"):
        gemm.pointwise_conv2d_backward(dy.astype("float64"), c)
    with pytest.raises(TypeError, match="dy of shape"):
        gemm.pointwise_conv2d_backward(dy[:, :8], c)
