"""The hand-written CUDA kernels (minixception/kernels/cuda) against the xp reference.

Three levels, so the kernels are checked even where no GPU is:
1. nvcc compiles every .cu file (skips without nvcc);
2. the Python wrappers run *as written* on the CPU, with CuPy swapped for NumPy and every kernel
   launch sent to the .cu source compiled by g++ under an emulation of the CUDA thread model
   (blocks one after another; the threads of a block concurrently, so ``__syncthreads()`` is a
   real barrier). This checks the launch shapes, the index arithmetic, padding, strides,
   grid-stride loops, the partial sums and the wrappers' own arithmetic, against
   minixception.functional in float64 (and float32). The elementwise bodies (fused SGD, the
   dropout generator) are compiled the same way;
3. on a GPU (``@pytest.mark.gpu``), the kernels the dispatch table selects against the
   reference (``mx.use_kernels("reference")``), float32 and float64, forward and backward.
"""
import ctypes
import shutil
import subprocess
import types

import numpy as np
import pytest

import minixception as mx
from minixception import kernels
from minixception.functional import (batchnorm_backward, batchnorm_forward, depthwise_conv2d_backward,
                                     depthwise_conv2d_forward, maxpool2d_backward, maxpool2d_forward,
                                     separable_conv2d_backward, separable_conv2d_forward)
from minixception.kernels import cuda
from minixception.kernels.cuda import batchnorm as kbn
from minixception.kernels.cuda import common
from minixception.kernels.cuda import depthwise as kdw
from minixception.kernels.cuda import pooling as kpool
from minixception.kernels.cuda import rng as krng
from minixception.kernels.cuda import separable as ksep
from minixception.kernels.cuda import sgd as ksgd
from minixception.optim import sgd_update

CU_FILES = ("depthwise", "batchnorm", "pooling")

# The kernels' C signatures, as the emulation's launch wrappers declare them (P: pointer).
SIGNATURES = {
    "dw_forward": "P P P i i i i i i i i",
    "dw_backward_input": "P P P i i i i i i i i",
    "dw_backward_kernel": "P P P i i i i i i i i",
    "bn_partial_stats": "P P P q i",
    "bn_finish_stats": "P P P P P P P P q i i r r",
    "bn_apply": "P P P P P P P q i i",
    "bn_partial_grads": "P P P P P q i",
    "bn_finish_grads": "P P P P P P P P P q i i",
    "maxpool_forward": "P P P i i i i i i i i",
    "maxpool_backward": "P P P i i i i i i i i",
}
SYNCED = {"dw_backward_kernel", "bn_partial_stats", "bn_partial_grads"}   # use __syncthreads()
POINTER_TYPES = {"dw": "real", "bn": "real", "maxpool": "real"}


def _c_params(fname):
    """(C parameter list, argument names) of the kernel, for its launch wrapper."""
    types_ = {"P": "void*", "i": "int", "q": "long long", "r": "real"}
    codes = SIGNATURES[fname].split()
    names = [f"a{k}" for k in range(len(codes))]
    return ", ".join(f"{types_[c]} {n}" for c, n in zip(codes, names)), codes, names


def _harness():
    lines = [r"""
// The kernels of minixception/kernels/cuda/*.cu on the CPU. Blocks run one after another;
// the threads of a block run one after another too, except in kernels that synchronise
// (SYNCED), where they run concurrently and __syncthreads() is a std::barrier.
#include <barrier>
#include <cmath>
#include <thread>
#include <vector>
struct emu_dim3 { unsigned x, y, z; };
static thread_local emu_dim3 threadIdx, blockIdx;
static emu_dim3 blockDim, gridDim;
static std::barrier<>* emu_sync = nullptr;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __syncthreads() emu_sync->arrive_and_wait()
#include "depthwise.cu"
#include "batchnorm.cu"
#include "pooling.cu"

template <class F> static void emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                          bool synced, F body) {
    gridDim = {gx, gy, gz}; blockDim = {bx, by, 1};
    for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {
        if (!synced) {
            for (unsigned ty = 0; ty < by; ++ty) for (unsigned tx = 0; tx < bx; ++tx) {
                blockIdx = {x, y, z}; threadIdx = {tx, ty, 0}; body();
            }
            continue;
        }
        std::barrier<> bar(bx * by);
        emu_sync = &bar;
        std::vector<std::thread> threads;
        for (unsigned ty = 0; ty < by; ++ty) for (unsigned tx = 0; tx < bx; ++tx)
            threads.emplace_back([=] { blockIdx = {x, y, z}; threadIdx = {tx, ty, 0}; body(); });
        for (auto& t : threads) t.join();
    }
}
extern "C" {
"""]
    for fname in SIGNATURES:
        params, codes, names = _c_params(fname)
        prefix = fname.split("_")[0]
        args = ", ".join(f"({POINTER_TYPES[prefix]}*){n}" if c == "P" else n
                         for c, n in zip(codes, names))
        if fname == "maxpool_forward":          # (x, y, winner) -- the winner is uint8
            args = args.replace(f"(real*){names[2]}", f"(unsigned char*){names[2]}", 1)
        if fname == "maxpool_backward":         # (dy, winner, dx)
            args = args.replace(f"(real*){names[1]}", f"(unsigned char*){names[1]}", 1)
        lines.append(f"void emu_{fname}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, {params})\n"
                     f"{{ emu_launch(gx, gy, gz, bx, by, {'true' if fname in SYNCED else 'false'}, "
                     f"[=] {{ {fname}({args}); }}); }}\n")
    lines.append("}\n")
    return "".join(lines)


_libs = {}


def _compile(tmp_path_factory, ctype, defines):
    key = (ctype, tuple(sorted(defines.items())))
    if key not in _libs:
        gxx = shutil.which("g++")
        if gxx is None:
            pytest.skip("g++ not found")
        d = tmp_path_factory.mktemp("emu")
        (d / "probe.cpp").write_text("#include <barrier>\nstd::barrier<> b(1);\n")
        probe = subprocess.run([gxx, "-std=c++20", "-fsyntax-only", str(d / "probe.cpp")], capture_output=True)
        if probe.returncode != 0:
            pytest.skip("g++ without C++20's <barrier> (g++ 11 or newer runs the emulation)")
        (d / "harness.cpp").write_text(_harness())
        for name in CU_FILES:
            shutil.copy(cuda.SOURCE_DIR / f"{name}.cu", d / f"{name}.cu")
        so = d / "emu.so"
        flags = [f"-D{k}={v}" for k, v in key[1]]
        r = subprocess.run([gxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
                            f"-DMX_T={ctype}", *flags, "-o", str(so), str(d / "harness.cpp")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        _libs[key] = ctypes.CDLL(str(so))
    return _libs[key]


def _c_arg(v):
    if isinstance(v, np.ndarray):
        assert v.flags.c_contiguous, "a kernel argument must be contiguous"
        return ctypes.c_void_p(v.ctypes.data)
    return {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float,
            np.float64: ctypes.c_double}[type(v)](v)


class EmulatedKernel:
    """Stands in for a CuPy RawKernel handle: f(grid, block, args) runs the emulation."""

    def __init__(self, lib, fname, dtype, log):
        self.fn, self.fname, self.dtype, self.log = getattr(lib, f"emu_{fname}"), fname, np.dtype(dtype), log

    def __call__(self, grid, block, args):
        grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (2 - len(block))
        assert all(g >= 1 for g in grid) and block[0] * block[1] <= 1024, (grid, block)
        codes = SIGNATURES[self.fname].split()
        assert len(args) == len(codes), f"{self.fname}: {len(args)} arguments, the kernel takes {len(codes)}"
        for code, a in zip(codes, args):        # the wrapper passes exactly the types the kernel declares
            want = {"P": np.ndarray, "i": np.int32, "q": np.int64, "r": self.dtype.type}[code]
            assert isinstance(a, want), f"{self.fname}: expected {want}, got {type(a)}"
            if code == "P" and a.dtype != np.uint8:
                assert a.dtype == self.dtype, f"{self.fname}: array of {a.dtype} into a {self.dtype} kernel"
        self.log.append(self.fname)
        self.fn(*(ctypes.c_uint(int(v)) for v in grid + block[:2]), *(_c_arg(a) for a in args))


@pytest.fixture
def emulated(tmp_path_factory, monkeypatch):
    """Run the kernels/cuda wrappers on NumPy arrays: CuPy -> NumPy, each launch -> the emulation."""
    log = []
    fake_cupy = types.SimpleNamespace(ascontiguousarray=np.ascontiguousarray, empty=np.empty,
                                      empty_like=np.empty_like, uint8=np.uint8)

    def function(name, fname, dtype, **defines):
        ctype = {"float32": "float", "float64": "double"}[str(np.dtype(dtype))]
        return EmulatedKernel(_compile(tmp_path_factory, ctype, defines), fname, dtype, log)

    for mod in (kdw, kbn, kpool):
        monkeypatch.setattr(mod, "cupy_module", lambda: fake_cupy)
        monkeypatch.setattr(mod, "function", function)
        monkeypatch.setattr(mod, "compiles", lambda *a, **k: True)
    monkeypatch.setattr(common, "is_gpu_array", lambda a: isinstance(a, np.ndarray))
    return log


# -- 1. nvcc compile check ----------------------------------------------------------------

@pytest.mark.parametrize("name,ctype,defines", [("depthwise", "float", "-DKH=5 -DKW=3 -DSH=2 -DSW=1"),
                                                ("batchnorm", "double", ""),
                                                ("pooling", "float", "-DKH=3 -DKW=3 -DSH=2 -DSW=2")])
def test_cu_files_compile_with_nvcc(name, ctype, defines, tmp_path):
    """nvcc front end + PTX (as NVRTC does at run time); the other dtype is compiled by the emulation."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    r = subprocess.run([nvcc, f"-DMX_T={ctype}", *defines.split(), "-ptx", "-x", "cu", "-o", str(tmp_path / "k.ptx"),
                        str(cuda.SOURCE_DIR / f"{name}.cu")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_cu_sources_are_package_data():
    for name in CU_FILES:
        assert "extern \"C\" __global__" in cuda.source(name)
    from pathlib import Path
    pyproject = (Path(cuda.__file__).parents[3] / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"kernels/cuda/*.cu"' in package_data


def test_every_kernel_in_the_sources_is_emulated():
    declared = {l.split("void ")[1].split("(")[0] for name in CU_FILES for l in cuda.source(name).splitlines()
                if "__global__ void" in l}
    assert declared == set(SIGNATURES)


# -- 2. the wrappers on the CPU, under emulation ---------------------------------------------

DW_CASES = [  # (N, H, W, C, kh, kw, stride, padding)
    (2, 7, 6, 5, 3, 3, 1, "same"),
    (2, 9, 8, 33, 3, 3, 2, "same"),     # 33 channels: a second, partly empty tile of 32
    (1, 8, 7, 4, 3, 3, 2, "valid"),
    (2, 6, 7, 3, 5, 3, (2, 1), "same"),
]


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: f"{c[4]}x{c[5]}s{c[6]}{c[7]}C{c[3]}")
def test_depthwise_kernels_match_reference_under_emulation(case, emulated):
    n, h, w, c, kh, kw, stride, padding = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c))
    k = rng.standard_normal((kh, kw, c, 1))
    y_ref, cache_ref = depthwise_conv2d_forward(x, k, stride, padding)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dk_ref = depthwise_conv2d_backward(dy, cache_ref)

    y, cache = kdw.depthwise_forward(x, k, stride, padding)
    assert isinstance(cache, kdw.DepthwiseCache)
    dx, dk = kdw.depthwise_backward(dy, cache)
    assert emulated == ["dw_forward", "dw_backward_input", "dw_backward_kernel"]
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-11, atol=1e-11)


def test_depthwise_grid_stride_loops_and_float32(emulated, monkeypatch):
    """Fewer z-blocks than rows (the grid-stride loop takes the rest), float32 against float64."""
    monkeypatch.setattr(common, "MAX_GRID_Z", 3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 10, 9, 40))
    k = rng.standard_normal((3, 3, 40, 1))
    y_ref, cache_ref = depthwise_conv2d_forward(x, k, 2, "same")
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dk_ref = depthwise_conv2d_backward(dy, cache_ref)
    y, cache = kdw.depthwise_forward(x.astype("float32"), k.astype("float32"), 2, "same")
    dx, dk = kdw.depthwise_backward(dy.astype("float32"), cache)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
        assert got.dtype == np.float32
        assert mx.gradcheck.rel_error(got.astype(np.float64), ref) < 1e-5


@pytest.mark.parametrize("case", [((2, 4, 5, 6), 1.5), ((3, 5, 4, 40), -40.0), ((2, 33, 33, 3), 0.0)],
                         ids=["small", "C40-large-mean", "M2178-C3"])
def test_batchnorm_kernels_match_reference_under_emulation(case, emulated):
    shape, offset = case
    rng = np.random.default_rng(1)
    c = shape[-1]
    x = rng.standard_normal(shape) * 3 + offset
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    mm, mv = rng.standard_normal(c), rng.random(c) + 0.5
    mm2, mv2 = mm.copy(), mv.copy()
    y_ref, cache_ref = batchnorm_forward(x, gamma, beta, mm, mv, training=True, momentum=0.9, eps=1e-3)
    dy = rng.standard_normal(shape)
    dx_ref, dg_ref, db_ref = batchnorm_backward(dy, cache_ref)

    assert kbn.supports(x, gamma, beta, mm2, mv2, True)
    y, cache = kbn.batchnorm_forward_train(x, gamma, beta, mm2, mv2, True, 0.9, 1e-3)
    assert isinstance(cache, kbn.BatchNormCache)
    dx, dg, db = kbn.batchnorm_backward_train(dy, cache)
    assert emulated == ["bn_partial_stats", "bn_finish_stats", "bn_apply",
                        "bn_partial_grads", "bn_finish_grads", "bn_apply"]
    for got, ref, name in ((y, y_ref, "y"), (mm2, mm, "moving_mean"), (mv2, mv, "moving_variance"),
                           (dx, dx_ref, "dx"), (dg, dg_ref, "dgamma"), (db, db_ref, "dbeta")):
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-11, err_msg=name)


def test_batchnorm_many_block_rows_float32(emulated):
    """Several block rows P with unequal row counts: the combining launch must weigh them right."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 13, 11, 7)) * 2 + 3)       # M = 715 rows: P = 2, the last block partly empty
    assert kbn._rows(715) == 2
    g, b = rng.standard_normal(7), rng.standard_normal(7)
    y_ref, cache_ref = batchnorm_forward(x, g, b, np.zeros(7), np.ones(7), training=True)
    dy = rng.standard_normal(x.shape)
    dx_ref, dg_ref, db_ref = batchnorm_backward(dy, cache_ref)
    f = np.float32
    y, cache = kbn.batchnorm_forward_train(x.astype(f), g.astype(f), b.astype(f), np.zeros(7, f), np.ones(7, f))
    dx, dg, db = kbn.batchnorm_backward_train(dy.astype(f), cache)
    for got, ref in ((y, y_ref), (dx, dx_ref), (dg, dg_ref), (db, db_ref)):
        assert got.dtype == np.float32
        assert mx.gradcheck.rel_error(got.astype(np.float64), ref) < 1e-4


POOL_CASES = [((2, 7, 7, 5), 3, 2, "same"), ((2, 8, 8, 33), 3, 2, "same"), ((1, 9, 6, 4), 2, 2, "valid"),
              ((2, 6, 7, 3), 3, 1, "same"), ((1, 74, 74, 2), 3, 2, "same")]   # 74: pads 0 before, 1 after


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0][1]}x{c[0][2]}C{c[0][3]}k{c[1]}s{c[2]}{c[3]}")
def test_maxpool_kernels_match_reference_under_emulation(case, emulated):
    shape, k, s, padding = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    x[0, :2, :2, 0] = 1.0                          # ties: the first maximum keeps the gradient
    y_ref, cache_ref = maxpool2d_forward(x, k, s, padding)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = maxpool2d_backward(dy, cache_ref)
    y, cache = kpool.maxpool_forward(x, k, s, padding)
    dx = kpool.maxpool_backward(dy, cache)
    assert emulated == ["maxpool_forward", "maxpool_backward"]
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(cache[0], cache_ref[0])          # the same winners
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-13, atol=1e-13)
    # the caches are interchangeable: the reference backward reads the kernel's cache
    np.testing.assert_allclose(maxpool2d_backward(dy, cache), dx_ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("intermediate", [None, "relu", "elu"])
def test_separable_matches_reference_under_emulation(intermediate, emulated):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 5, 4))
    dk, pk = rng.standard_normal((3, 3, 4, 1)), rng.standard_normal((1, 1, 4, 6))
    y_ref, c_ref = separable_conv2d_forward(x, dk, pk, 1, "same", intermediate)
    dy = rng.standard_normal(y_ref.shape)
    ref = separable_conv2d_backward(dy, c_ref)
    y, cache = ksep.separable_forward(x, dk, pk, 1, "same", intermediate)
    got = ksep.separable_backward(dy, cache)
    assert emulated == ["dw_forward", "dw_backward_input", "dw_backward_kernel"]
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


# -- the guard on dy: refused before any launch ---------------------------------------------

def _forward_caches():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 6, 4)).astype("float32")
    out = {}
    y, c = kdw.depthwise_forward(x, rng.standard_normal((3, 3, 4, 1)).astype("float32"))
    out["depthwise"] = (kdw.depthwise_backward, y, c)
    y, c = kbn.batchnorm_forward_train(x, np.ones(4, "float32"), np.zeros(4, "float32"),
                                       np.zeros(4, "float32"), np.ones(4, "float32"))
    out["batchnorm"] = (kbn.batchnorm_backward_train, y, c)
    y, c = kpool.maxpool_forward(x)
    out["maxpool"] = (kpool.maxpool_backward, y, c)
    y, c = ksep.separable_forward(x, rng.standard_normal((3, 3, 4, 1)).astype("float32"),
                                  rng.standard_normal((1, 1, 4, 5)).astype("float32"))
    out["separable"] = (ksep.separable_backward, y, c)
    return out


@pytest.mark.parametrize("op", ["depthwise", "batchnorm", "maxpool", "separable"])
@pytest.mark.parametrize("bad", ["float64", "shape", "host"])
def test_backward_refuses_a_mismatched_dy_before_any_launch(op, bad, emulated, monkeypatch):
    backward, y, cache = _forward_caches()[op]
    emulated.clear()
    if bad == "float64":
        dy, err, match = y.astype("float64"), TypeError, "expected dy of dtype float32.*got float64"
    elif bad == "shape":
        dy, err, match = np.zeros(y.shape[:-1] + (y.shape[-1] + 1,), "float32"), ValueError, "expected dy of shape"
    else:   # a host (NumPy) array where the kernel needs a device pointer
        monkeypatch.setattr(common, "is_gpu_array", lambda a: False)
        dy, err, match = y.copy(), TypeError, "expected dy as a CuPy"
    with pytest.raises(err, match=match):
        backward(dy, cache)
    assert emulated == [], "a kernel was launched before the check"
    monkeypatch.setattr(common, "is_gpu_array", lambda a: isinstance(a, np.ndarray))
    backward(y.copy(), cache)                      # the right dy passes
    assert emulated


def test_guard_names_what_came():
    with pytest.raises(TypeError, match=r"depthwise conv backward: expected dy as a CuPy .*numpy\.ndarray"):
        common.check_dy(np.zeros(3), (3,), np.float32, "depthwise conv")


# -- supports(): what the kernels decline -------------------------------------------------

def test_supports_declines_what_the_kernels_cannot_do(emulated):
    x32 = np.zeros((1, 8, 8, 4), "float32")
    assert kdw.supports(x32, np.zeros((3, 3, 4, 1), "float32"), 1, "same")
    assert not kdw.supports(x32, np.zeros((9, 9, 4, 1), "float32"), 1, "same")          # > 7x7
    assert not kdw.supports(x32, np.zeros((3, 3, 4, 1), "float64"), 1, "same")          # mixed dtypes
    assert not kdw.supports(x32.astype("float16"), np.zeros((3, 3, 4, 1), "float16"))   # dtype
    assert not kbn.supports(x32, training=False)                                         # eval mode
    assert not kbn.supports(np.zeros((1, 1, 1, 4), "float32"))                          # one value/channel
    assert not kpool.supports(x32.astype("float16"))
    # a 9x9 depthwise call that reaches the wrapper runs the reference, and its backward follows
    x = np.random.default_rng(0).standard_normal((1, 10, 10, 2))
    k = np.random.default_rng(1).standard_normal((9, 9, 2, 1))
    y, cache = kdw.depthwise_forward(x, k)
    assert not isinstance(cache, kdw.DepthwiseCache) and emulated == []
    np.testing.assert_array_equal(kdw.depthwise_backward(np.ones_like(y), cache)[1],
                                  depthwise_conv2d_backward(np.ones_like(y), cache)[1])


def test_the_gpu_kernels_are_registered_for_their_ops():
    cuda.load()
    impls = kernels.registered()
    for op in ("depthwise_conv2d", "separable_conv2d", "batchnorm", "maxpool2d", "sgd_update"):
        assert "cuda (gpu)" in impls[op], (op, impls[op])
    st = cuda.status()
    assert st["ops"]["maxpool2d"] == "cuda (gpu)" and st["ops"]["relu"] == "reference"


def test_no_cuda_kernel_for_numpy_arrays():
    x = np.zeros((1, 4, 4, 2), np.float32)
    # a NumPy array gets the CPU's choice (numba where installed, else the reference), never CUDA
    assert kernels.select("depthwise_conv2d", x, np.zeros((3, 3, 2, 1), np.float32)).name in ("numba", "reference")
    with kernels.use_kernels("reference"):
        assert kernels.select("depthwise_conv2d", x, np.zeros((3, 3, 2, 1), np.float32)).name == "reference"
    assert cuda.implementation("maxpool2d", x) != "cuda"


# -- a kernel that fails to compile: said once, visible in status(), the reference runs -------

def test_a_failed_build_warns_once_and_shows_in_status(monkeypatch):
    class BrokenRawModule:
        def __init__(self, code, options):
            self.options = options

        def compile(self):
            raise RuntimeError("nvrtc: error: identifier \"realx\" is undefined")

    monkeypatch.setattr(cuda, "cupy_module", lambda: types.SimpleNamespace(RawModule=BrokenRawModule))
    monkeypatch.setattr(common, "is_gpu_array", lambda a: isinstance(a, np.ndarray))   # NumPy stands in
    monkeypatch.setattr(cuda, "_built", {})
    monkeypatch.setattr(cuda, "_functions", {})
    monkeypatch.setattr(cuda, "_status", {})
    with pytest.warns(RuntimeWarning, match=r"depthwise\.cu float32 KH=3 KW=3 SH=1 SW=1 failed to compile"):
        assert not cuda.compiles("depthwise", "float32", KH=3, KW=3, SH=1, SW=1)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the second ask is silent
        assert not cuda.compiles("depthwise", "float32", KH=3, KW=3, SH=1, SW=1)
        x = np.zeros((1, 4, 4, 2), np.float32)
        assert not kdw.supports(x, np.zeros((3, 3, 2, 1), np.float32))     # so select() takes the reference
    assert cuda.status()["kernels"]["depthwise.cu float32 KH=3 KW=3 SH=1 SW=1"].startswith("failed: RuntimeError")
    with pytest.raises(RuntimeError, match="not available"):
        cuda.function("depthwise", "dw_forward", "float32", KH=3, KW=3, SH=1, SW=1)


def test_kernel_handles_are_looked_up_once(monkeypatch):
    looked_up = []

    class Module:
        def __init__(self, code, options):
            pass

        def compile(self):
            pass

        def get_function(self, name):
            looked_up.append(name)
            return name

    monkeypatch.setattr(cuda, "cupy_module", lambda: types.SimpleNamespace(RawModule=Module))
    monkeypatch.setattr(cuda, "_built", {})
    monkeypatch.setattr(cuda, "_functions", {})
    monkeypatch.setattr(cuda, "_status", {})
    for _ in range(3):
        cuda.function("pooling", "maxpool_forward", "float32", KH=3, KW=3, SH=2, SW=2)
    cuda.function("pooling", "maxpool_forward", "float32", KH=2, KW=2, SH=2, SW=2)
    assert looked_up == ["maxpool_forward", "maxpool_forward"]     # once per set of constants


def test_environment_switch_leaves_the_table_without_gpu_kernels(monkeypatch):
    monkeypatch.setenv("MINIXCEPTION_CUDA_KERNELS", "0")
    assert cuda.enabled() == (False, "switched off by MINIXCEPTION_CUDA_KERNELS=0")
    monkeypatch.setattr(cuda, "_state", {"loaded": False})
    registered = {}
    monkeypatch.setattr(kernels, "_fast", registered)
    cuda.load()
    assert registered == {}


# -- the elementwise bodies: fused SGD and the dropout generator --------------------------------

ELEMENTWISE = r"""
#include <cstddef>
template <class T> void sgd_momentum(std::ptrdiff_t n, const T* g_, T lr, T momentum, T wd, int nesterov,
                                     int first, T* w_, T* buf_) {
    for (std::ptrdiff_t i = 0; i < n; ++i) { const T g = g_[i]; T& w = w_[i]; T& buf = buf_[i];
MOMENTUM_BODY
    }
}
template <class T> void sgd_plain(std::ptrdiff_t n, const T* g_, T lr, T wd, T* w_) {
    for (std::ptrdiff_t i = 0; i < n; ++i) { const T g = g_[i]; T& w = w_[i];
PLAIN_BODY
    }
}
template <class T> void uniform(std::ptrdiff_t n, unsigned long long key, unsigned long long counter, T* out) {
    for (std::ptrdiff_t i = 0; i < n; ++i) {
UNIFORM_BODY
    }
}
extern "C" {
void sgd_momentum_d(std::ptrdiff_t n, const double* g, double lr, double m, double wd, int nes, int first,
                    double* w, double* buf) { sgd_momentum<double>(n, g, lr, m, wd, nes, first, w, buf); }
void sgd_plain_d(std::ptrdiff_t n, const double* g, double lr, double wd, double* w) { sgd_plain<double>(n, g, lr, wd, w); }
void uniform_f(std::ptrdiff_t n, unsigned long long k, unsigned long long c, float* out) { uniform<float>(n, k, c, out); }
void uniform_d(std::ptrdiff_t n, unsigned long long k, unsigned long long c, double* out) { uniform<double>(n, k, c, out); }
}
"""


@pytest.fixture(scope="module")
def elementwise_lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found")
    d = tmp_path_factory.mktemp("elementwise")
    src = (ELEMENTWISE.replace("MOMENTUM_BODY", ksgd.MOMENTUM_BODY).replace("PLAIN_BODY", ksgd.PLAIN_BODY)
           .replace("UNIFORM_BODY", krng.UNIFORM_BODY))
    (d / "ew.cpp").write_text(src)
    r = subprocess.run([gxx, "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-o", str(d / "ew.so"), str(d / "ew.cpp")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return ctypes.CDLL(str(d / "ew.so"))


@pytest.fixture
def emulated_sgd(elementwise_lib, monkeypatch):
    """ksgd.sgd_update on NumPy arrays, its fused kernels run by the compiled bodies."""
    def momentum_kernel(g, lr, momentum, wd, nesterov, first, w, buf):
        assert g.dtype == w.dtype == buf.dtype == type(lr) == type(momentum) == type(wd) == np.float64
        elementwise_lib.sgd_momentum_d(ctypes.c_ssize_t(w.size), _c_arg(g), _c_arg(lr), _c_arg(momentum),
                                       _c_arg(wd), ctypes.c_int(int(nesterov)), ctypes.c_int(int(first)),
                                       _c_arg(w), _c_arg(buf))

    def plain_kernel(g, lr, wd, w):
        elementwise_lib.sgd_plain_d(ctypes.c_ssize_t(w.size), _c_arg(g), _c_arg(lr), _c_arg(wd), _c_arg(w))

    fake = types.SimpleNamespace(empty_like=np.empty_like)
    monkeypatch.setattr(ksgd, "cupy_module", lambda: fake)
    monkeypatch.setattr(ksgd, "is_gpu_array", lambda a: isinstance(a, np.ndarray))
    monkeypatch.setattr(ksgd, "_kernel", lambda which: momentum_kernel if which == "momentum" else plain_kernel)
    before = dict(cuda.launches)
    yield
    cuda.launches.clear()
    cuda.launches.update(before)


@pytest.mark.parametrize("momentum,nesterov,wd,regularize", [(0.9, False, 1e-2, True), (0.9, True, 1e-2, True),
                                                             (0.5, True, 0.0, True), (0.9, False, 1e-2, False),
                                                             (0.0, False, 1e-2, True), (0.0, False, 0.0, True)])
def test_fused_sgd_matches_the_reference_step_by_step(momentum, nesterov, wd, regularize, emulated_sgd):
    rng = np.random.default_rng(6)
    w_ref = rng.standard_normal((3, 4, 5))
    w = w_ref.copy()
    buf_ref = buf = None
    cuda.launches.clear()
    for step in range(4):
        g = rng.standard_normal(w.shape)
        lr = 0.1 * 0.5 ** step
        buf_ref = sgd_update(w_ref, g, buf_ref, lr, momentum, nesterov, wd, regularize)
        buf = ksgd.sgd_update(w, g, buf, lr, momentum, nesterov, wd, regularize)
        np.testing.assert_allclose(w, w_ref, rtol=1e-15, atol=1e-15, err_msg=f"step {step}")
        if momentum:
            np.testing.assert_allclose(buf, buf_ref, rtol=1e-15, atol=1e-15)
        else:
            assert buf is None and buf_ref is None
    assert sum(cuda.count_launches().values()) == 4          # one launch per parameter and step


def test_sgd_optimizer_selects_the_fused_update_for_gpu_arrays(emulated_sgd, monkeypatch):
    """optim.SGD.step goes through the dispatch table: with the GPU kernel selected, the same numbers."""
    cuda.load()
    monkeypatch.setattr(kernels, "is_gpu_array", lambda a: True)      # these NumPy arrays count as GPU ones
    r = np.random.default_rng(7)
    ref = [mx.nn.Parameter(r.standard_normal((4, 3))), mx.nn.Parameter(r.standard_normal(5), regularize=False)]
    fused = [mx.nn.Parameter(p.data.copy(), regularize=p.regularize) for p in ref]
    opt_f = mx.optim.SGD(fused, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    cuda.launches.clear()
    for step in range(3):
        for p in ref + fused:
            p.grad[...] = np.random.default_rng(step).standard_normal(p.shape)
        opt_f.step()
    with mx.use_kernels("reference"):
        opt_r = mx.optim.SGD(ref, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
        for step in range(3):
            for p in ref:
                p.grad[...] = np.random.default_rng(step).standard_normal(p.shape)
            opt_r.step()
    assert cuda.count_launches() == {"mx_sgd_momentum": 6}
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_counter_generator_body_matches_its_numpy_reference(dtype, elementwise_lib):
    n, key, counter = 1000, 0x0123456789ABCDEF, 2**64 - 300          # the counter wraps within the draw
    out = np.empty(n, dtype)
    fn = elementwise_lib.uniform_f if dtype == "float32" else elementwise_lib.uniform_d
    fn(ctypes.c_ssize_t(n), ctypes.c_ulonglong(key), ctypes.c_ulonglong(counter), _c_arg(out))
    ref = krng.uniform_reference(key, counter, n, dtype)
    assert ref.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, ref)


def test_counter_generator_is_uniform_and_advances_its_counter(monkeypatch):
    u = krng.uniform_reference(7, 0, 200_000, "float64")
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    # two draws == one draw of both sizes, whatever the split (the state is the counter)
    drawn = []

    class Kernel:
        def __call__(self, key, counter, out, size):
            assert size == out.size
            out[...] = krng.uniform_reference(int(key), int(counter), out.size, out.dtype).reshape(out.shape)
            drawn.append(out.size)

    monkeypatch.setattr(krng, "cupy_module", lambda: types.SimpleNamespace(empty=np.empty))
    monkeypatch.setattr(krng, "_kernel", [Kernel()])
    g = krng.CounterRNG(7)
    a, b = g.random((3, 5)), g.random(30)
    assert g.state() == {"key": 7, "counter": 45} and drawn == [15, 30]
    np.testing.assert_array_equal(np.concatenate([a.ravel(), b]), u[:45])
    g2 = krng.CounterRNG.from_state(g.state())
    np.testing.assert_array_equal(g2.random(10, dtype="float64"), u[45:55])
    with pytest.raises(ValueError, match="CounterRNG state"):
        krng.CounterRNG.from_state({"key": 1})


# -- 3. on a GPU: the selected kernels against the reference --------------------------------

def _gpu(a):
    return mx.to_device(a, "gpu")


def _rel(a, b):
    a, b = mx.to_numpy(a).astype(np.float64), mx.to_numpy(b).astype(np.float64)
    return np.abs(a - b).max() / max(1e-8, np.abs(a).max() + np.abs(b).max())


def _run_both(op, forward_args, dy_seed, extra_outputs=()):
    """Forward + backward with the selected kernel, then with the reference; returns both result lists."""
    results = []
    for which in ("fast", "reference"):
        with mx.use_kernels(which):
            impl = kernels.select(op, *forward_args)
            assert impl.name == ("cuda" if which == "fast" else "reference"), (op, impl.name)
            y, cache = impl.forward(*forward_args)
            dy = _gpu(np.random.default_rng(dy_seed).standard_normal(y.shape).astype(str(y.dtype)))
            back = impl.backward(dy, cache)
            results.append([y] + (list(back) if isinstance(back, tuple) else [back]))
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("case", DW_CASES + [(8, 32, 32, 64, 3, 3, 1, "same"), (4, 16, 16, 128, 3, 3, 2, "same")],
                         ids=lambda c: f"{c[4]}x{c[5]}s{c[6]}{c[7]}C{c[3]}" if isinstance(c, tuple) else str(c))
def test_depthwise_cuda_matches_reference_on_gpu(case, dtype, tol):
    n, h, w, c, kh, kw, stride, padding = case
    rng = np.random.default_rng(2)
    x = _gpu(rng.standard_normal((n, h, w, c)).astype(dtype))
    k = _gpu(rng.standard_normal((kh, kw, c, 1)).astype(dtype))
    fast, ref = _run_both("depthwise_conv2d", (x, k, stride, padding), 3)
    for got, want in zip(fast, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert _rel(got, want) < tol * 10


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-11)])
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (128, 16, 16, 64), (32, 8, 8, 728), (2, 149, 149, 32)])
def test_batchnorm_cuda_matches_reference_on_gpu(shape, dtype, tol):
    rng = np.random.default_rng(3)
    c = shape[-1]
    x = _gpu((rng.standard_normal(shape) * 2 + 0.5).astype(dtype))
    g, b = _gpu(rng.standard_normal(c).astype(dtype)), _gpu(rng.standard_normal(c).astype(dtype))
    moving = [[_gpu(np.zeros(c, dtype)), _gpu(np.ones(c, dtype))] for _ in range(2)]
    outs = []
    for which, (mm, mv) in zip(("fast", "reference"), moving):
        with mx.use_kernels(which):
            impl = kernels.select("batchnorm", x, g, b, mm, mv, True, 0.9, 1e-3)
            assert impl.name == ("cuda" if which == "fast" else "reference")
            y, cache = impl.forward(x, g, b, mm, mv, True, 0.9, 1e-3)
            dy = _gpu(np.random.default_rng(4).standard_normal(shape).astype(dtype))
            outs.append([y, *impl.backward(dy, cache), mm, mv])
    for got, want in zip(*outs):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert _rel(got, want) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", POOL_CASES + [((128, 32, 32, 64), 3, 2, "same")],
                         ids=lambda c: f"{c[0][1]}x{c[0][2]}C{c[0][3]}k{c[1]}s{c[2]}{c[3]}")
def test_maxpool_cuda_matches_reference_on_gpu(case, dtype):
    shape, k, s, padding = case
    x = _gpu(np.random.default_rng(5).standard_normal(shape).astype(dtype))
    fast, ref = _run_both("maxpool2d", (x, k, s, padding), 6)
    for got, want in zip(fast, ref):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(mx.to_numpy(got), mx.to_numpy(want))      # max and routing are exact


@pytest.mark.gpu
@pytest.mark.parametrize("intermediate", [None, "relu", "elu"])
def test_separable_cuda_matches_reference_on_gpu(intermediate):
    rng = np.random.default_rng(6)
    x = _gpu(rng.standard_normal((4, 12, 12, 16)))
    dk, pk = _gpu(rng.standard_normal((3, 3, 16, 1))), _gpu(rng.standard_normal((1, 1, 16, 24)))
    fast, ref = _run_both("separable_conv2d", (x, dk, pk, 1, "same", intermediate), 7)
    for got, want in zip(fast, ref):
        assert _rel(got, want) < 1e-12


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["depthwise", "batchnorm", "maxpool", "separable"])
def test_backward_refuses_a_mismatched_dy_on_gpu(op):
    import cupy
    rng = np.random.default_rng(8)
    x = _gpu(rng.standard_normal((2, 6, 6, 4)).astype("float32"))
    k = _gpu(rng.standard_normal((3, 3, 4, 1)).astype("float32"))
    if op == "depthwise":
        y, cache = kdw.depthwise_forward(x, k)
        backward = kdw.depthwise_backward
    elif op == "batchnorm":
        ones, zeros = _gpu(np.ones(4, "float32")), _gpu(np.zeros(4, "float32"))
        y, cache = kbn.batchnorm_forward_train(x, ones, zeros, zeros.copy(), ones.copy())
        backward = kbn.batchnorm_backward_train
    elif op == "maxpool":
        y, cache = kpool.maxpool_forward(x)
        backward = kpool.maxpool_backward
    else:
        y, cache = ksep.separable_forward(x, k, _gpu(rng.standard_normal((1, 1, 4, 5)).astype("float32")))
        backward = ksep.separable_backward
    cupy.cuda.Device().synchronize()
    cuda.launches.clear()
    for dy, err in ((y.astype("float64"), TypeError), (cupy.zeros((2, 3, 3, 9), "float32"), ValueError),
                    (mx.to_numpy(y), TypeError)):
        with pytest.raises(err, match="backward: expected dy"):
            backward(dy, cache)
    assert cuda.count_launches() == {}
    backward(cupy.ones_like(y), cache)
    assert cuda.count_launches()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov,wd", [(False, 1e-3), (True, 1e-3), (True, 0.0)])
def test_fused_sgd_matches_reference_on_gpu(dtype, nesterov, wd):
    rng = np.random.default_rng(9)
    w0 = rng.standard_normal((64, 33)).astype(dtype)
    w, w_ref = _gpu(w0), _gpu(w0)
    buf = buf_ref = None
    for step in range(4):
        g = _gpu(rng.standard_normal(w0.shape).astype(dtype))
        buf = ksgd.sgd_update(w, g, buf, 0.1, 0.9, nesterov, wd, True)
        with mx.use_kernels("reference"):
            buf_ref = sgd_update(w_ref, g, buf_ref, 0.1, 0.9, nesterov, wd, True)
    assert cuda.status()["kernels"][f"sgd {dtype}"] == "compiled"
    assert _rel(w, w_ref) < (1e-6 if dtype == "float32" else 1e-14)
    assert _rel(buf, buf_ref) < (1e-6 if dtype == "float32" else 1e-14)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_counter_generator_on_gpu_equals_its_reference(dtype):
    g = krng.CounterRNG(12345, counter=10)
    u = g.random((100, 37), dtype=dtype)
    assert u.dtype == np.dtype(dtype) and g.state() == {"key": 12345, "counter": 10 + 3700}
    np.testing.assert_array_equal(mx.to_numpy(u).ravel(), krng.uniform_reference(12345, 10, 3700, dtype))


@pytest.mark.gpu
def test_status_reports_the_compiled_kernels_on_gpu():
    x = _gpu(np.ones((1, 4, 4, 2), np.float32))
    kdw.depthwise_forward(x, _gpu(np.ones((3, 3, 2, 1), np.float32)))
    st = cuda.status()
    assert st["gpu"] and st["enabled"]
    assert st["kernels"]["depthwise.cu float32 KH=3 KW=3 SH=1 SW=1"] == "compiled"
    assert cuda.implementation("depthwise_conv2d", x, _gpu(np.ones((3, 3, 2, 1), np.float32))) == "cuda"
