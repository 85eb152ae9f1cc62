"""The hand-written CUDA kernels (minixception/cuda/*.cu) against the xp reference.

Three levels, so the kernels are checked even where no GPU is:
1. nvcc compiles every .cu file for float and double (skips without nvcc);
2. the kernels run on the CPU under a small emulation harness (g++; the CUDA built-ins become
   loops over blocks and threads) and match minixception.functional in float64 -- this checks
   their index arithmetic, padding, strides, grid-stride loops and partial sums;
3. on a GPU (``@pytest.mark.gpu``), the dispatched kernels against the xp path run with
   ``minixception.cuda.disabled()``, float32 and float64, forward and backward.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import minixception as mx
from minixception import cuda
from minixception.functional import (batchnorm_backward, batchnorm_forward, depthwise_conv2d_backward,
                                     depthwise_conv2d_forward)
from minixception.functional.padding import conv_geometry

HARNESS = r"""
// Runs the kernels of minixception/cuda/*.cu on the CPU, one emulated thread after another,
// so their index arithmetic is checked against the xp reference on machines without a GPU.
// Built by this test with g++ -DMX_T=float|double -DKH -DKW -DLANES=1.
// LANES=1: each thread reads back only its own shared-memory slot, so running the threads of
// a block one by one is exact (with LANES > 1 the __syncthreads() ordering would matter).
#include <cmath>
struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() ((void)0)

#include "depthwise.cu"
#include "batchnorm.cu"

#define LAUNCH(GX, GY, BX, BY, CALL)                                                     \
    gridDim = {(unsigned)(GX), (unsigned)(GY), 1}; blockDim = {(unsigned)(BX), (unsigned)(BY), 1}; \
    for (unsigned by_ = 0; by_ < gridDim.y; ++by_)                                        \
        for (unsigned bx_ = 0; bx_ < gridDim.x; ++bx_)                                    \
            for (unsigned ty_ = 0; ty_ < blockDim.y; ++ty_)                               \
                for (unsigned tx_ = 0; tx_ < blockDim.x; ++tx_) {                         \
                    blockIdx = {bx_, by_, 0}; threadIdx = {tx_, ty_, 0}; CALL;            \
                }

#define DW_ARGS int N, int H, int W, int C, int OH, int OW, int SH, int SW, int PT, int PL
#define DW_PASS N, H, W, C, OH, OW, SH, SW, PT, PL

extern "C" {
void emu_dw_forward(int gx, int bx, const real* x, const real* k, real* y, DW_ARGS)
{ LAUNCH(gx, 1, bx, 1, dw_forward(x, k, y, DW_PASS)) }

void emu_dw_backward_input(int gx, int bx, const real* dy, const real* k, real* dx, DW_ARGS)
{ LAUNCH(gx, 1, bx, 1, dw_backward_input(dy, k, dx, DW_PASS)) }

void emu_dw_backward_kernel(int gx, int gy, const real* x, const real* dy, real* partial, DW_ARGS)
{ LAUNCH(gx, gy, 32, LANES, dw_backward_kernel(x, dy, partial, DW_PASS)) }

void emu_bn_partial_moments(int gx, int gy, const real* x, const real* mean, real* partial,
                            long long M, int C, int mode)
{ LAUNCH(gx, gy, 32, LANES, bn_partial_moments(x, mean, partial, M, C, mode)) }

void emu_bn_forward_apply(int gx, int bx, const real* x, const real* mean, const real* inv_std,
                          const real* gamma, const real* beta, real* y, long long total, int C)
{ LAUNCH(gx, 1, bx, 1, bn_forward_apply(x, mean, inv_std, gamma, beta, y, total, C)) }

void emu_bn_partial_grads(int gx, int gy, const real* dy, const real* x, const real* mean,
                          real* p1, real* p2, long long M, int C)
{ LAUNCH(gx, gy, 32, LANES, bn_partial_grads(dy, x, mean, p1, p2, M, C)) }

void emu_bn_backward_apply(int gx, int bx, const real* dy, const real* x, const real* mean,
                           const real* inv_std, const real* gamma, const real* dbeta,
                           const real* dgamma, real* dx, long long total, int C, real inv_m)
{ LAUNCH(gx, 1, bx, 1, bn_backward_apply(dy, x, mean, inv_std, gamma, dbeta, dgamma, dx, total, C, inv_m)) }
}
"""

KERNEL_FILES = ("depthwise", "batchnorm")


# -- 1. nvcc compile check ----------------------------------------------------------------

@pytest.mark.parametrize("name,ctype", [("depthwise", "float"), ("batchnorm", "double")])
def test_cu_files_compile_with_nvcc(name, ctype, tmp_path):
    """nvcc front end + PTX (as NVRTC does at run time); the other dtype is compiled by the emulation."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    defines = ["-DKH=5", "-DKW=3"] if name == "depthwise" else []
    r = subprocess.run([nvcc, f"-DMX_T={ctype}", *defines, "-ptx", "-x", "cu", "-o", str(tmp_path / "k.ptx"),
                        str(cuda.SOURCE_DIR / f"{name}.cu")], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]


def test_cu_sources_are_package_data():
    for name in KERNEL_FILES:
        assert "extern \"C\" __global__" in cuda.source(name)


# -- 2. the kernels on the CPU, under emulation ---------------------------------------------

_libs = {}


def _emu(tmp_path_factory, ctype, kh=3, kw=3):
    key = (ctype, kh, kw)
    if key not in _libs:
        gxx = shutil.which("g++")
        if gxx is None:
            pytest.skip("g++ not found")
        d = tmp_path_factory.mktemp("emu")
        (d / "harness.cpp").write_text(HARNESS)
        for name in KERNEL_FILES:
            shutil.copy(cuda.SOURCE_DIR / f"{name}.cu", d / f"{name}.cu")
        so = d / "emu.so"
        r = subprocess.run([gxx, "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas", f"-DMX_T={ctype}",
                            f"-DKH={kh}", f"-DKW={kw}", "-DLANES=1", "-o", str(so), str(d / "harness.cpp")],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        _libs[key] = ctypes.CDLL(str(so))
    return _libs[key]


def _p(a):
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


def _i(*vals):
    return [ctypes.c_int(int(v)) for v in vals]


DW_CASES = [  # (N, H, W, C, kh, kw, stride, padding)
    (2, 7, 6, 5, 3, 3, 1, "same"),
    (2, 9, 8, 33, 3, 3, 2, "same"),     # 33 channels: a second, partly empty tile of 32
    (1, 8, 7, 4, 3, 3, 2, "valid"),
    (2, 6, 7, 3, 5, 3, (2, 1), "same"),
]


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: f"{c[4]}x{c[5]}s{c[6]}{c[7]}C{c[3]}")
def test_depthwise_kernels_match_reference_on_cpu(case, tmp_path_factory):
    n, h, w, c, kh, kw, stride, padding = case
    lib = _emu(tmp_path_factory, "double", kh, kw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c))
    k = rng.standard_normal((kh, kw, c, 1))
    y_ref, cache = depthwise_conv2d_forward(x, k, stride, padding)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dk_ref = depthwise_conv2d_backward(dy, cache)

    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    geo = _i(n, h, w, c, oh, ow, sh, sw, pads[0][0], pads[1][0])
    y = np.full((n, oh, ow, c), np.nan)
    lib.emu_dw_forward(*_i(3, 7), _p(x), _p(k), _p(y), *geo)     # 3 blocks of 7: grid-stride loop
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)

    dx = np.full(x.shape, np.nan)
    lib.emu_dw_backward_input(*_i(2, 5), _p(dy), _p(k), _p(dx), *geo)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)

    p = 3                                  # block rows of the reduction
    partial = np.full((p, kh * kw, c), np.nan)
    lib.emu_dw_backward_kernel(*_i(-(-c // 32), p), _p(x), _p(dy), _p(partial), *geo)
    np.testing.assert_allclose(partial.sum(0).reshape(kh, kw, c, 1), dk_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (3, 5, 4, 40)])
def test_batchnorm_kernels_match_reference_on_cpu(shape, tmp_path_factory):
    lib = _emu(tmp_path_factory, "double")
    rng = np.random.default_rng(1)
    c = shape[-1]
    x = rng.standard_normal(shape) * 3 + 1.5
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    mm, mv = np.zeros(c), np.ones(c)
    y_ref, cache = batchnorm_forward(x, gamma, beta, mm, mv, training=True, momentum=0.9, eps=1e-3)
    dy = rng.standard_normal(shape)
    dx_ref, dg_ref, db_ref = batchnorm_backward(dy, cache)

    x2 = np.ascontiguousarray(x.reshape(-1, c))
    m = x2.shape[0]
    p, gx = 2, -(-c // 32)
    mc = [ctypes.c_longlong(m), ctypes.c_int(c)]
    part = np.full((p, c), np.nan)
    lib.emu_bn_partial_moments(*_i(gx, p), _p(x2), _p(x2), _p(part), *mc, ctypes.c_int(0))
    mean = part.sum(0) / m
    lib.emu_bn_partial_moments(*_i(gx, p), _p(x2), _p(mean), _p(part), *mc, ctypes.c_int(1))
    var = part.sum(0) / m
    np.testing.assert_allclose(mean, x2.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, x2.var(0), rtol=1e-12)
    inv_std = 1.0 / np.sqrt(var + 1e-3)
    y = np.full_like(x2, np.nan)
    total = ctypes.c_longlong(x2.size)
    lib.emu_bn_forward_apply(*_i(3, 7), _p(x2), _p(mean), _p(inv_std), _p(gamma), _p(beta), _p(y), total,
                             ctypes.c_int(c))
    np.testing.assert_allclose(y.reshape(shape), y_ref, rtol=1e-12, atol=1e-12)

    dy2 = np.ascontiguousarray(dy.reshape(-1, c))
    p1, p2 = np.full((p, c), np.nan), np.full((p, c), np.nan)
    lib.emu_bn_partial_grads(*_i(gx, p), _p(dy2), _p(x2), _p(mean), _p(p1), _p(p2), *mc)
    dbeta, dgamma = p1.sum(0), p2.sum(0) * inv_std
    np.testing.assert_allclose(dbeta, db_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dgamma, dg_ref, rtol=1e-11, atol=1e-12)
    dx = np.full_like(x2, np.nan)
    lib.emu_bn_backward_apply(*_i(3, 7), _p(dy2), _p(x2), _p(mean), _p(inv_std), _p(gamma), _p(dbeta),
                              _p(dgamma), _p(dx), total, ctypes.c_int(c), ctypes.c_double(1.0 / m))
    np.testing.assert_allclose(dx.reshape(shape), dx_ref, rtol=1e-10, atol=1e-11)


# -- 3. on a GPU: the dispatched kernels against the xp path --------------------------------

def _gpu(a):
    return mx.to_device(a, "gpu")


def _rel(a, b):
    a, b = mx.to_numpy(a).astype(np.float64), mx.to_numpy(b).astype(np.float64)
    return np.abs(a - b).max() / max(1e-8, np.abs(a).max() + np.abs(b).max())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("case", DW_CASES + [(8, 32, 32, 64, 3, 3, 1, "same"), (4, 16, 16, 128, 3, 3, 2, "same")],
                         ids=lambda c: f"{c[4]}x{c[5]}s{c[6]}{c[7]}C{c[3]}" if isinstance(c, tuple) else str(c))
def test_depthwise_cuda_matches_xp_on_gpu(case, dtype, tol):
    n, h, w, c, kh, kw, stride, padding = case
    rng = np.random.default_rng(2)
    x = _gpu(rng.standard_normal((n, h, w, c)).astype(dtype))
    k = _gpu(rng.standard_normal((kh, kw, c, 1)).astype(dtype))
    assert cuda.depthwise_ready(x, k), "the CUDA kernel did not build"
    y, cache = depthwise_conv2d_forward(x, k, stride, padding)
    assert isinstance(cache, cuda.DepthwiseCache)              # the kernel path really ran
    dy = _gpu(rng.standard_normal(y.shape).astype(dtype))
    dx, dk = depthwise_conv2d_backward(dy, cache)
    with cuda.disabled():
        y_ref, cache_ref = depthwise_conv2d_forward(x, k, stride, padding)
        assert not isinstance(cache_ref, cuda.DepthwiseCache)
        dx_ref, dk_ref = depthwise_conv2d_backward(dy, cache_ref)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert _rel(got, ref) < tol * (10 if got is dk else 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-11)])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (128, 16, 16, 64), (32, 8, 8, 728)])
def test_batchnorm_cuda_matches_xp_on_gpu(shape, dtype, tol):
    rng = np.random.default_rng(3)
    c = shape[-1]
    x = _gpu((rng.standard_normal(shape) * 2 + 0.5).astype(dtype))
    g, b = _gpu(rng.standard_normal(c).astype(dtype)), _gpu(rng.standard_normal(c).astype(dtype))
    dy = _gpu(rng.standard_normal(shape).astype(dtype))
    mm, mv = _gpu(np.zeros(c, dtype)), _gpu(np.ones(c, dtype))
    assert cuda.batchnorm_ready(x)
    y, cache = batchnorm_forward(x, g, b, mm, mv, training=True, momentum=0.9)
    assert isinstance(cache, cuda.BatchNormCache)
    dx, dg, db = batchnorm_backward(dy, cache)
    mm2, mv2 = _gpu(np.zeros(c, dtype)), _gpu(np.ones(c, dtype))
    with cuda.disabled():
        y_ref, cache_ref = batchnorm_forward(x, g, b, mm2, mv2, training=True, momentum=0.9)
        dx_ref, dg_ref, db_ref = batchnorm_backward(dy, cache_ref)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dg, dg_ref), (db, db_ref), (mm, mm2), (mv, mv2)):
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert _rel(got, ref) < tol


@pytest.mark.gpu
def test_environment_switch_turns_kernels_off(monkeypatch):
    monkeypatch.setenv("MINIXCEPTION_CUDA_KERNELS", "0")
    assert not cuda.enabled()
    x = _gpu(np.ones((1, 4, 4, 2), np.float32))
    _, cache = depthwise_conv2d_forward(x, _gpu(np.ones((3, 3, 2, 1), np.float32)))
    assert not isinstance(cache, cuda.DepthwiseCache)


def test_kernels_off_without_gpu():
    if mx.gpu_available():
        pytest.skip("a GPU is present")
    assert not cuda.enabled()
    x = np.ones((1, 4, 4, 2), np.float32)
    _, cache = depthwise_conv2d_forward(x, np.ones((3, 3, 2, 1), np.float32))
    assert not isinstance(cache, cuda.DepthwiseCache)
