"""The CPU kernels against the reference math, the dispatch table, and the thread runtime.

Every fast kernel must give the reference's results: float64 to rounding (1e-12), float32
within 1e-4 of the float64 reference. Kernels that need numba skip cleanly without it.
"""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import minixception as mx
from minixception import functional as F
from minixception import kernels
from minixception.kernels.cpu import threads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel(a, b):
    """max |a - b| relative to the largest |b| (scale-free, no blow-up at zeros of b)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-30, np.abs(b).max()))


TOL = {"float64": 1e-12, "float32": 1e-4}

# (x shape, kernel size, stride, padding): odd sizes, 1 to many channels, batch 1, rectangular
DEPTHWISE_CASES = [
    ((1, 7, 9, 1), (3, 3), 1, "same"),
    ((2, 8, 8, 5), (3, 3), 2, "same"),
    ((3, 9, 6, 33), (3, 3), 1, "valid"),
    ((2, 11, 7, 4), (3, 3), 2, "valid"),
    ((1, 6, 7, 3), (3, 3), 1, 1),
    ((2, 7, 7, 6), (5, 3), 2, 2),
    ((2, 7, 8, 6), (5, 3), 1, 2),
    ((1, 9, 5, 3), (3, 5), 1, "same"),
    ((2, 5, 6, 130), (3, 3), (2, 1), "same"),
    ((1, 4, 4, 2), (1, 1), 1, "valid"),
]
CASE_IDS = [f"{s}-k{k[0]}x{k[1]}-s{st}-{p}" for s, k, st, p in DEPTHWISE_CASES]


@pytest.fixture
def numba_kernels():
    pytest.importorskip("numba")
    kernels.cpu.load()
    return kernels


def _depthwise_inputs(shape, ksize, dtype, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape)
    k = r.standard_normal((*ksize, shape[3], 1))
    return x.astype(dtype), k.astype(dtype)


@pytest.mark.parametrize("loops", ["rows", "pixels"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, ksize, stride, padding", DEPTHWISE_CASES, ids=CASE_IDS)
def test_depthwise_equals_reference(numba_kernels, shape, ksize, stride, padding, dtype, loops, monkeypatch):
    """Both loop forms (stride-1 rows for few channels, per pixel otherwise) on every case."""
    from minixception.kernels.cpu import depthwise
    monkeypatch.setattr(depthwise, "ROWS_BELOW_CHANNELS", 1 << 30 if loops == "rows" else 0)
    x, k = _depthwise_inputs(shape, ksize, dtype)
    impl = kernels.select("depthwise_conv2d", x, k, stride, padding)
    assert impl.name == "numba", "the numba depthwise kernel did not take the call"
    y, cache = impl.forward(x, k, stride, padding)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dy_before = dy.copy()
    dx, dk = impl.backward(dy, cache)
    assert np.array_equal(dy, dy_before), "backward wrote into dy"

    y_ref, c_ref = F.depthwise_conv2d_forward(x.astype(np.float64), k.astype(np.float64), stride, padding)
    dx_ref, dk_ref = F.depthwise_conv2d_backward(dy.astype(np.float64), c_ref)
    for name, got, want in (("y", y, y_ref), ("dx", dx, dx_ref), ("dkernel", dk, dk_ref)):
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape, name
        assert rel(got, want) < TOL[dtype], f"{name}: relative error {rel(got, want):.2e}"


@pytest.mark.parametrize("intermediate", [None, "relu", "elu"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "valid")])
def test_separable_equals_reference(numba_kernels, intermediate, dtype, stride, padding):
    r = np.random.default_rng(2)
    x = r.standard_normal((2, 9, 7, 6)).astype(dtype)
    d = r.standard_normal((3, 3, 6, 1)).astype(dtype)
    p = r.standard_normal((1, 1, 6, 4)).astype(dtype)
    impl = kernels.select("separable_conv2d", x, d, p, stride, padding, intermediate)
    assert impl.name == "numba"
    y, cache = impl.forward(x, d, p, stride, padding, intermediate)
    dy = r.standard_normal(y.shape).astype(dtype)
    grads = impl.backward(dy, cache)

    f64 = [a.astype(np.float64) for a in (x, d, p)]
    y_ref, c_ref = F.separable_conv2d_forward(*f64, stride, padding, intermediate)
    grads_ref = F.separable_conv2d_backward(dy.astype(np.float64), c_ref)
    assert len(grads) == 3
    for name, got, want in zip(("y", "dx", "ddepthwise", "dpointwise"), (y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == np.dtype(dtype) and got.shape == want.shape, name
        assert rel(got, want) < TOL[dtype], f"{name}: relative error {rel(got, want):.2e}"


def test_fast_kernels_decline_what_they_do_not_handle(numba_kernels):
    """Integer, non-contiguous or mixed-dtype calls go to the reference (which explains bad ones)."""
    x, k = _depthwise_inputs((2, 6, 6, 4), (3, 3), "float32")
    assert kernels.select("depthwise_conv2d", x, k, 1, "same").name == "numba"
    ref = kernels.reference("depthwise_conv2d")
    assert kernels.select("depthwise_conv2d", x.astype(np.int32), k, 1, "same") is ref
    assert kernels.select("depthwise_conv2d", x[:, :, ::2], k, 1, "same") is ref        # a strided view
    assert kernels.select("depthwise_conv2d", np.asfortranarray(x), k, 1, "same") is ref
    assert kernels.select("depthwise_conv2d", x, k.astype(np.float64), 1, "same") is ref
    assert kernels.select("depthwise_conv2d", x, k, 1, "bogus") is ref
    assert kernels.select("depthwise_conv2d", x, k, 0, "same") is ref
    assert kernels.select("depthwise_conv2d", x, k, (1, -1), "valid") is ref
    assert kernels.select("depthwise_conv2d", x, np.ascontiguousarray(k[:, :, :3]), 1, "same") is ref  # 3 != 4 channels
    with pytest.raises(ValueError, match="padding"):
        ref.forward(x, k, 1, "bogus")
    p = np.ones((1, 1, 4, 3), np.float32)
    assert kernels.select("separable_conv2d", x, k, p, 1, "same", None).name == "numba"
    sep_ref = kernels.reference("separable_conv2d")
    assert kernels.select("separable_conv2d", [[1.0]], k, p, 1, "same", None) is sep_ref       # not an array
    assert kernels.select("separable_conv2d", x, k, p.astype(np.float64), 1, "same", None) is sep_ref
    assert kernels.select("separable_conv2d", x, k, p[:, :, :3], 1, "same", None) is sep_ref   # 3 != 4 channels
    assert kernels.select("separable_conv2d", x, k, p, 1, "same", "tanh") is sep_ref


def test_reference_mode_runs_the_reference(numba_kernels):
    x, k = _depthwise_inputs((2, 6, 6, 4), (3, 3), "float64")
    with mx.use_kernels("reference"):
        assert kernels.mode() == "reference"
        for op in ("depthwise_conv2d", "separable_conv2d"):
            assert kernels.select(op, x, k) is kernels.reference(op)
    assert kernels.mode() == "fast"
    assert kernels.select("depthwise_conv2d", x, k, 1, "same").name == "numba"
    with pytest.raises(ValueError, match="reference"):
        with mx.use_kernels("fastest"):
            pass


def test_use_kernels_is_per_thread():
    """A thread inside ``use_kernels("reference")`` does not change what another thread runs."""
    inside, checked = threading.Event(), threading.Event()
    seen = {}

    def worker():
        with mx.use_kernels("reference"):
            seen["worker"] = kernels.mode()
            inside.set()
            checked.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    seen["main"] = kernels.mode()
    checked.set()
    t.join(10)
    assert seen == {"worker": "reference", "main": "fast"}


# ---------------------------------------------------------------- the thread runtime
@pytest.fixture
def tiny_chunks(monkeypatch):
    """One image per chunk, so even small tests split into many chunks over the threads."""
    monkeypatch.setattr(threads, "MIN_WORK", 1)


def _depthwise_with_threads(monkeypatch, n_threads, x, k):
    monkeypatch.setattr(threads, "_threads", n_threads)
    impl = kernels.select("depthwise_conv2d", x, k, 2, "same")
    y, cache = impl.forward(x, k, 2, "same")
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(x.dtype)
    return (y, *impl.backward(dy, cache))


def test_thread_count_never_changes_results(numba_kernels, tiny_chunks, monkeypatch):
    x, k = _depthwise_inputs((7, 9, 9, 16), (3, 3), "float32")
    assert len(threads.chunk_bounds(7, 100)) == 7
    results = [_depthwise_with_threads(monkeypatch, t, x, k) for t in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_chunk_bounds_cover_the_range_in_order():
    for n, work in [(1, 10), (32, 1 << 16), (33, 1 << 19), (5, 1 << 30), (100, 1)]:
        b = threads.chunk_bounds(n, work)
        assert b[0][0] == 0 and b[-1][1] == n
        assert all(lo < hi for lo, hi in b) and all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))
    assert threads.chunk_bounds(32, 1 << 16) == [(0, 16), (16, 32)]     # 16 images of 64K make 1M
    assert threads.chunk_bounds(32, 10) == [(0, 32)]                    # too little work to split
    assert threads.chunk_bounds(0, 10) == []


def test_run_chunks_returns_results_in_chunk_order(monkeypatch):
    monkeypatch.setattr(threads, "_threads", 3)
    ran_on = set()

    def fn(lo, hi):
        ran_on.add(threading.get_ident())
        return (lo, hi)
    bounds = [(i, i + 1) for i in range(10)]
    assert threads.run_chunks(fn, bounds) == bounds
    assert threading.get_ident() in ran_on           # the caller runs a piece itself


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_count_is_refused(monkeypatch, value):
    monkeypatch.setenv("MINIXCEPTION_THREADS", value)
    monkeypatch.setattr(threads, "_threads", None)
    with pytest.raises(ValueError, match="MINIXCEPTION_THREADS.*" + value):
        threads.num_threads()


def test_good_thread_count_is_used(monkeypatch):
    monkeypatch.setenv("MINIXCEPTION_THREADS", "1")
    monkeypatch.setattr(threads, "_threads", None)
    assert threads.num_threads() == 1


def test_more_threads_than_cores_is_capped_with_a_warning(monkeypatch):
    monkeypatch.setenv("MINIXCEPTION_THREADS", "1000")
    monkeypatch.setattr(threads, "_threads", None)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    with pytest.warns(RuntimeWarning, match="MINIXCEPTION_THREADS=1000 is more than this machine's 2 cores"):
        assert threads.num_threads() == 2


# ---------------------------------------------------------------- subprocesses
def _python(code, **env):
    full = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                          cwd=REPO, timeout=600)


def test_without_numba_the_reference_runs_and_says_so_once():
    code = (
        "import sys, warnings; sys.modules['numba'] = None\n"
        "warnings.simplefilter('always')\n"
        "import numpy as np, minixception as mx\n"
        "from minixception import kernels\n"
        "x = np.ones((2, 5, 5, 3)); k = np.ones((3, 3, 3, 1))\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3):\n"
        "        impl = kernels.select('depthwise_conv2d', x, k, 1, 'same')\n"
        "        assert impl.name == 'reference', impl\n"
        "        y, cache = impl.forward(x, k, 1, 'same')\n"
        "    layer = mx.nn.SeparableConv2D(3, 4, dtype='float64', rng=0)\n"
        "    layer.backward(layer(x))\n"
        "said = [str(m.message) for m in w if 'numba' in str(m.message)]\n"
        "print(len(said), 'numba' in sys.modules and sys.modules['numba'] is None)\n")
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"], out.stdout + out.stderr


def test_first_compile_is_announced_once(numba_kernels, tmp_path):
    """A cold cache compiles (and says so, once); the next process loads from the cache silently."""
    code = ("import numpy as np\nfrom minixception import kernels\n"
            "x = np.ones((2, 5, 5, 3)); k = np.ones((3, 3, 3, 1))\n"
            "impl = kernels.select('depthwise_conv2d', x, k, 1, 'same')\n"
            "y, c = impl.forward(x, k, 1, 'same'); impl.backward(y, c)\n"
            "print(impl.name)\n")
    cold = _python(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert cold.returncode == 0, cold.stderr
    assert cold.stdout.strip() == "numba"
    assert cold.stderr.count("compiling") == 1, cold.stderr
    warm = _python(code, NUMBA_CACHE_DIR=str(tmp_path))
    assert warm.returncode == 0 and warm.stdout.strip() == "numba", warm.stderr
    assert "compiling" not in warm.stderr, warm.stderr


def test_no_process_wide_blas_change_and_cpu_threads_is_scoped():
    """Importing and running ops leaves BLAS's threads alone; ``cpu_threads`` caps them only inside."""
    pytest.importorskip("threadpoolctl")
    code = (
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "def blas(): return {i['filepath']: i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}\n"
        "before = blas()\n"
        "import minixception as mx\n"
        "from minixception.kernels.cpu import threads\n"
        "model = mx.nn.Sequential(mx.nn.SeparableConv2D(3, 8, rng=0), mx.nn.BatchNorm2D(8), mx.nn.ReLU(),\n"
        "                         mx.nn.MaxPool2D(), mx.nn.Conv2D(8, 4, 3, padding='same', rng=1))\n"
        "x = np.random.default_rng(0).standard_normal((4, 9, 9, 3)).astype(np.float32)\n"
        "model.backward(model(x))\n"
        "after_ops = blas()\n"
        "kernel_threads = threads.num_threads()\n"
        "with mx.cpu_threads(1):\n"
        "    model.backward(model(x))\n"
        "    inside, inside_kernels = blas(), threads.num_threads()\n"
        "import json\n"
        "print(json.dumps([before, after_ops, inside, blas(), inside_kernels, threads.num_threads() == kernel_threads]))\n")
    out = _python(code, MINIXCEPTION_THREADS="2")
    assert out.returncode == 0, out.stderr
    before, after_ops, inside, after, inside_kernels, same = json.loads(out.stdout)
    assert before, "no BLAS found by threadpoolctl"
    # (numba may load another BLAS, scipy's, on import: compare the libraries there before)
    assert {lib: after_ops[lib] for lib in before} == before
    assert set(inside.values()) == {1}
    assert {lib: after[lib] for lib in before} == before
    assert inside_kernels == 1 and same is True


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_cpu_threads_refuses_bad_counts(bad):
    with pytest.raises(ValueError, match="cpu_threads"):
        with mx.cpu_threads(bad):
            pass


_TRAIN_FEW_STEPS = """
import hashlib, json, os
import numpy as np
import minixception as mx
from minixception.kernels.cpu import threads
from minixception.models import mini_xception

chunks = []
run_chunks = threads.run_chunks
def counting(fn, bounds):
    chunks.append(len(bounds))
    return run_chunks(fn, bounds)
threads.run_chunks = counting

model = mini_xception(num_classes=10, width=1, rng=0)
opt = mx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
r = np.random.default_rng(0)
x = r.standard_normal((32, 32, 32, 3)).astype(np.float32)
labels = r.integers(0, 10, 32)
with mx.cpu_threads(int(os.environ["THREADS"])):     # as the trainer runs (not capped at the cores)
    for _ in range(3):
        opt.zero_grad()
        loss, dlogits = mx.losses.softmax_cross_entropy(model(x), labels)
        model.backward(dlogits)
        opt.step()
digest = hashlib.sha256()
for name, a in sorted(model.state_dict().items()):
    digest.update(name.encode()); digest.update(np.ascontiguousarray(a).tobytes())
with mx.cpu_threads(int(os.environ["THREADS"])):
    used = threads.num_threads()
print(json.dumps({"threads": used, "max_chunks": max(chunks, default=0),
                  "sha256": digest.hexdigest()}))
"""


def test_training_is_bit_identical_for_1_2_and_3_threads(numba_kernels):
    """A few SGD steps of mini_xception give the same bits on 1, 2 or 3 threads (cpu_threads(n),
    as the trainer runs them; MINIXCEPTION_THREADS sets n there)."""
    runs = []
    for n in (1, 2, 3):
        out = _python(_TRAIN_FEW_STEPS, THREADS=str(n))
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert [r["threads"] for r in runs] == [1, 2, 3]
    assert runs[0]["max_chunks"] > 1, (
        "no op was split into chunks (do the layers run their ops through kernels.select?): "
        "the test would prove nothing")
    assert runs[0]["sha256"] == runs[1]["sha256"] == runs[2]["sha256"]
