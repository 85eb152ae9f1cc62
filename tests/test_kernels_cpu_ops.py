"""The numba CPU kernels for batch norm, max pool, ReLU/ELU and few-channel convolution
equal their references (``minixception.functional``), forward and every gradient.

float64 runs are compared tightly; float32 runs are compared with the float64 reference
(rtol ~1e-4 for local ops, ~1e-3 for reductions). Reductions split over the batch must
give bit-identical results for any thread count.
"""
import numpy as np
import pytest

pytest.importorskip("numba")

from minixception import functional as F                     # noqa: E402
from minixception import kernels                             # noqa: E402
from minixception.kernels.cpu import threads                 # noqa: E402
from minixception.kernels.cpu import activations as nb_act   # noqa: E402
from minixception.kernels.cpu import batchnorm as nb_bn      # noqa: E402
from minixception.kernels.cpu import conv as nb_conv         # noqa: E402
from minixception.kernels.cpu import pooling as nb_pool      # noqa: E402

RTOL = {np.float64: 1e-10, np.float32: 1e-4}
RTOL_REDUCTION = {np.float64: 1e-10, np.float32: 1e-3}


def assert_close(a, ref, rtol, what=""):
    """|a - ref| <= rtol * max|ref| everywhere (ref is the float64 reference)."""
    assert a.shape == ref.shape, f"{what}: shape {a.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(a.astype(np.float64) - ref).max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:.1g} * {scale:.3g}"


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few hundred elements, so small test inputs are split into many chunks."""
    original = threads.chunk_bounds
    monkeypatch.setattr(threads, "chunk_bounds", lambda n, work, min_work=256: original(n, work, min_work))
    return original


def with_threads(monkeypatch, t):
    monkeypatch.setattr(threads, "num_threads", lambda: t)


# ---------------------------------------------------------------- batch norm

BN_SHAPES = [(1, 3, 5, 1), (2, 5, 7, 3), (4, 6, 6, 17), (3, 1, 1, 64), (1, 4, 4, 2)]


def _bn_inputs(rng, shape, dtype, offset=5.0):
    c = shape[3]
    x = rng.standard_normal(shape) * 3 + offset + rng.standard_normal(c)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    mm, mv = rng.standard_normal(c), rng.random(c) + 0.5
    dy = rng.standard_normal(shape)
    return [a.astype(dtype) for a in (x, gamma, beta, mm, mv, dy)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_equals_reference(rng, shape, dtype, training):
    x, gamma, beta, mm, mv, dy = _bn_inputs(rng, shape, dtype)
    mm_ref, mv_ref = mm.astype(np.float64), mv.astype(np.float64)
    y_ref, cache = F.batchnorm_forward(x.astype(np.float64), gamma.astype(np.float64),
                                       beta.astype(np.float64), mm_ref, mv_ref,
                                       training=training, momentum=0.9, eps=1e-3)
    dx_ref, dg_ref, db_ref = F.batchnorm_backward(dy.astype(np.float64), cache)

    y, cache = nb_bn.batchnorm_forward(x, gamma, beta, mm, mv, training=training, momentum=0.9, eps=1e-3)
    dx, dg, db = nb_bn.batchnorm_backward(dy, cache)
    for a in (y, dx, dg, db, mm, mv):
        assert a.dtype == dtype
    assert_close(y, y_ref, RTOL[dtype], "y")
    assert_close(dx, dx_ref, RTOL_REDUCTION[dtype], "dx")
    assert_close(dg, dg_ref, RTOL_REDUCTION[dtype], "dgamma")
    assert_close(db, db_ref, RTOL_REDUCTION[dtype], "dbeta")
    assert_close(mm, mm_ref, RTOL_REDUCTION[dtype], "moving_mean")
    assert_close(mv, mv_ref, RTOL_REDUCTION[dtype], "moving_variance")


def test_batchnorm_statistics_survive_a_large_offset(rng):
    """|mean| / std = 1e6: a naive one-pass E[x^2] - E[x]^2 would lose every digit of var."""
    x, gamma, beta, mm, mv, dy = _bn_inputs(rng, (4, 5, 5, 3), np.float64, offset=1e6)
    mm_ref, mv_ref = mm.copy(), mv.copy()
    F.batchnorm_forward(x, gamma, beta, mm_ref, mv_ref, momentum=0.0)
    nb_bn.batchnorm_forward(x, gamma, beta, mm, mv, momentum=0.0)
    np.testing.assert_allclose(mv, mv_ref, rtol=1e-8)
    np.testing.assert_allclose(mm, mm_ref, rtol=1e-14)


def test_batchnorm_is_bit_identical_for_any_thread_count(rng, monkeypatch, small_chunks):
    # float64: float32 values summed in float64 are often exact whatever the order, which would
    # hide an order that depends on the thread count
    x, gamma, beta, mm0, mv0, dy = _bn_inputs(rng, (13, 5, 6, 7), np.float64)
    assert len(threads.chunk_bounds(13, 5 * 6 * 7)) >= 6       # really split into several chunks
    results = []
    for t in (1, 2, 3):
        with_threads(monkeypatch, t)
        mm, mv = mm0.copy(), mv0.copy()
        y, cache = nb_bn.batchnorm_forward(x, gamma, beta, mm, mv)
        results.append((y, mm, mv) + nb_bn.batchnorm_backward(dy, cache))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_batchnorm_backward_checks_dy(rng):
    x, gamma, beta, mm, mv, dy = _bn_inputs(rng, (2, 3, 3, 4), np.float32)
    _, cache = nb_bn.batchnorm_forward(x, gamma, beta, mm, mv)
    with pytest.raises(TypeError, match="dy"):
        nb_bn.batchnorm_backward(dy.astype(np.float64), cache)
    with pytest.raises(TypeError, match="dy"):
        nb_bn.batchnorm_backward(dy[:1], cache)


def test_batchnorm_supports_declines_what_it_does_not_handle(rng):
    x, gamma, beta, mm, mv, _ = _bn_inputs(rng, (2, 3, 3, 4), np.float32)
    assert nb_bn.supports(x, gamma, beta, mm, mv)
    assert not nb_bn.supports(x.astype(np.float64), gamma, beta, mm, mv)          # mixed dtypes
    assert not nb_bn.supports(np.asfortranarray(x), gamma, beta, mm, mv)         # not C-contiguous
    assert not nb_bn.supports(x[..., :3], gamma[:3], beta[:3], mm[:3], mv[:3])  # a strided view
    assert not nb_bn.supports(x.astype(np.float16), gamma, beta, mm, mv)
    assert not nb_bn.supports(x[:1, :1, :1], gamma, beta, mm, mv)                # one value per channel
    assert nb_bn.supports(x[:1, :1, :1], gamma, beta, mm, mv, training=False)
    assert not nb_bn.supports(x, gamma[:3], beta, mm, mv)                         # wrong channel count


# ---------------------------------------------------------------- max pool

POOL_CASES = [   # shape, pool_size, stride, padding
    ((32, 16, 16, 8), 3, 2, "same"),
    ((2, 16, 16, 3), 3, 2, "valid"),
    ((3, 7, 9, 5), 3, 2, "same"),
    ((1, 8, 8, 1), 3, 2, "same"),       # even size: TF "same" pads 0 before, 1 after
    ((2, 9, 8, 3), 3, 1, "valid"),
    ((2, 9, 8, 3), 3, 1, "same"),
    ((2, 9, 8, 3), 3, 1, 2),            # explicit padding wider than the window's reach
    ((2, 9, 8, 3), (2, 3), (1, 2), 1),
    ((1, 5, 5, 2), 2, 2, "same"),
    ((2, 7, 7, 4), 2, 3, "valid"),      # stride > window: some inputs are in no window
    ((1, 3, 3, 6), 5, 1, "same"),       # window larger than the input
    ((2, 1, 1, 3), 3, 2, "same"),       # a 3x3 window around a single pixel: no interior output
    ((2, 4, 5, 3), 3, 1, (2, 0)),       # per-axis explicit padding
]


def _naive_maxpool(x, kh, kw, sh, sw, pads):
    """A loop per output, first maximum in row-major window order (ties); padding never wins."""
    n, h, w, c = x.shape
    (top, bottom), (left, right) = pads
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    y = np.empty((n, oh, ow, c), x.dtype)
    at = np.empty((n, oh, ow, c, 2), int)
    for b, i, j, ch in np.ndindex(n, oh, ow, c):
        best, where = -np.inf, None
        for di in range(kh):
            for dj in range(kw):
                r, q = i * sh - top + di, j * sw - left + dj
                if 0 <= r < h and 0 <= q < w and x[b, r, q, ch] > best:
                    best, where = x[b, r, q, ch], (r, q)
        y[b, i, j, ch] = best
        at[b, i, j, ch] = where
    return y, at


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, pool, stride, padding", POOL_CASES)
def test_maxpool_equals_reference_with_ties(rng, shape, pool, stride, padding, dtype):
    x = rng.integers(-2, 3, shape).astype(dtype)                 # five values: ties everywhere
    y_ref, cache = F.maxpool2d_forward(x.astype(np.float64), pool, stride, padding)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = F.maxpool2d_backward(dy, cache)

    y, cache = nb_pool.maxpool2d_forward(x, pool, stride, padding)
    dx = nb_pool.maxpool2d_backward(dy.astype(dtype), cache)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    assert_close(dx, dx_ref, RTOL[dtype], "dx")                  # a wrong tie rule moves whole values


def test_maxpool_any_window_size(rng):
    """A 17x17 window has 289 taps: the winner no longer fits one byte."""
    x = rng.integers(-3, 4, (2, 20, 19, 3)).astype(np.float64)
    y, cache = nb_pool.maxpool2d_forward(x, 17, 2, "same")
    assert cache[0].dtype.itemsize >= 2
    pads = F.conv_geometry(20, 19, 17, 2, "same")[0]
    y_ref, at = _naive_maxpool(x, 17, 17, 2, 2, pads)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    dx_ref = np.zeros_like(x)
    for b, i, j, ch in np.ndindex(*y.shape):
        r, q = at[b, i, j, ch]
        dx_ref[b, r, q, ch] += dy[b, i, j, ch]
    np.testing.assert_allclose(nb_pool.maxpool2d_backward(dy, cache), dx_ref, rtol=1e-12, atol=1e-12)


def test_maxpool_is_bit_identical_for_any_thread_count(rng, monkeypatch, small_chunks):
    x = rng.standard_normal((9, 8, 8, 5))
    dy = rng.standard_normal((9, 4, 4, 5))
    results = []
    for t in (1, 3):
        with_threads(monkeypatch, t)
        y, cache = nb_pool.maxpool2d_forward(x)
        results.append((y, nb_pool.maxpool2d_backward(dy, cache)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_maxpool_supports_and_dy_checks(rng):
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    assert nb_pool.supports(x, 3, 2, "same")
    assert not nb_pool.supports(x.transpose(0, 2, 1, 3), 3, 2, "same")
    assert not nb_pool.supports(x.astype(np.int32), 3, 2, "same")
    assert not nb_pool.supports(x, 7, 1, "valid")                # does not fit: the reference raises
    assert not nb_pool.supports(x, 3, 0, "same")
    _, cache = nb_pool.maxpool2d_forward(x)
    with pytest.raises(TypeError, match="dy"):
        nb_pool.maxpool2d_backward(np.zeros((2, 3, 3, 3)), cache)


# ---------------------------------------------------------------- few-channel convolution

CONV_CASES = [   # x shape, kernel shape, stride, padding
    ((2, 9, 9, 3), (3, 3, 3, 8), 1, "same"),
    ((2, 9, 8, 3), (3, 3, 3, 5), 2, "same"),      # odd/even sizes: TF "same" pads unevenly
    ((1, 7, 10, 3), (3, 3, 3, 4), 2, "valid"),
    ((2, 6, 6, 1), (3, 3, 1, 7), 1, 2),           # one channel, explicit padding
    ((2, 6, 7, 2), (2, 3, 2, 5), (1, 2), (1, 2)),  # rectangular kernel, per-axis stride/padding
    ((1, 8, 8, 16), (3, 3, 16, 32), 1, "same"),
    ((3, 5, 5, 4), (1, 1, 4, 6), 2, "same"),
    ((1, 3, 3, 2), (5, 5, 2, 3), 1, "same"),      # kernel larger than the input
    ((2, 9, 8, 48), (3, 3, 48, 24), 1, "same"),   # many channels (Xception's second stem conv is 32 -> 64)
    ((2, 7, 7, 130), (1, 1, 130, 20), 2, "same"), # a 1x1 stride-2 shortcut with odd, wide channels
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("x_shape, k_shape, stride, padding", CONV_CASES)
def test_conv2d_equals_reference(rng, x_shape, k_shape, stride, padding, use_bias, dtype):
    x, kernel = rng.standard_normal(x_shape), rng.standard_normal(k_shape)
    bias = rng.standard_normal(k_shape[3]) if use_bias else None
    y_ref, cache = F.conv2d_forward(x, kernel, bias, stride, padding)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dk_ref, db_ref = F.conv2d_backward(dy, cache)

    cast = (lambda a: None if a is None else a.astype(dtype))
    assert nb_conv.supports(cast(x), cast(kernel), cast(bias), stride, padding)
    y, cache = nb_conv.conv2d_forward(cast(x), cast(kernel), cast(bias), stride, padding)
    dx, dk, db = nb_conv.conv2d_backward(cast(dy), cache)
    assert y.dtype == dx.dtype == dk.dtype == dtype
    assert_close(y, y_ref, RTOL[dtype], "y")
    assert_close(dx, dx_ref, RTOL[dtype], "dx")
    assert_close(dk, dk_ref, RTOL_REDUCTION[dtype], "dkernel")
    if use_bias:
        assert db.dtype == dtype
        assert_close(db, db_ref, RTOL_REDUCTION[dtype], "dbias")
    else:
        assert db is None


def test_conv2d_is_bit_identical_for_any_thread_count(rng, monkeypatch, small_chunks):
    x, kernel, bias = rng.standard_normal((11, 6, 7, 3)), rng.standard_normal((3, 3, 3, 4)), rng.standard_normal(4)
    dy = rng.standard_normal((11, 6, 7, 4))
    assert len(threads.chunk_bounds(11, 6 * 7 * 27)) >= 6
    results = []
    for t in (1, 2, 3):
        with_threads(monkeypatch, t)
        y, cache = nb_conv.conv2d_forward(x, kernel, bias, 1, "same")
        results.append((y,) + nb_conv.conv2d_backward(dy, cache))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_conv2d_supports_declines_what_it_does_not_handle(rng):
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    k = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    assert nb_conv.supports(x, k, None, 1, "same")
    assert not nb_conv.supports(x, k[:, :, :2], None, 1, "same", groups=2)                   # grouped
    wide = rng.standard_normal((2, 6, 6, nb_conv.MAX_CHANNELS + 1)).astype(np.float32)
    assert not nb_conv.supports(wide, np.zeros((3, 3, wide.shape[3], 8), np.float32))        # many channels
    assert not nb_conv.supports(x.astype(np.float64), k, None, 1, "same")                    # mixed dtypes
    assert not nb_conv.supports(x, k, np.zeros(8), 1, "same")                                # bias dtype
    assert not nb_conv.supports(x.transpose(0, 2, 1, 3), k, None, 1, "same")                 # not contiguous
    assert not nb_conv.supports(x, np.zeros((7, 7, 4, 8), np.float32), None, 1, "valid")    # does not fit
    assert not nb_conv.supports(x, k[:, :, :3], None, 1, "same")                             # channel mismatch
    _, cache = nb_conv.conv2d_forward(x, k, None, 1, "same")
    with pytest.raises(TypeError, match="dy"):
        nb_conv.conv2d_backward(np.zeros((2, 6, 6, 8)), cache)


# ---------------------------------------------------------------- ReLU

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 1), (13,), (3, 4), ()])
def test_relu_equals_reference(rng, shape, dtype, monkeypatch, small_chunks):
    with_threads(monkeypatch, 3)                               # small chunks, several threads
    x = rng.standard_normal(shape).astype(dtype)
    if x.size >= 8:
        x.flat[:5] = [0.0, -0.0, np.nan, np.inf, -np.inf]      # the edges of max(x, 0) and x > 0
    dy = rng.standard_normal(shape).astype(dtype)
    if dy.size >= 8:
        dy.flat[5:7] = [np.inf, np.nan]
    y_ref, mask_ref = F.relu_forward(x)
    y, mask = nb_act.relu_forward(x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(mask, mask_ref)
    assert y.dtype == dtype and y.shape == x.shape
    dx = nb_act.relu_backward(dy, mask)
    np.testing.assert_array_equal(dx, F.relu_backward(dy, mask_ref))
    assert dx.dtype == dtype


def test_relu_large_array_split_over_threads(rng, monkeypatch):
    """Above a million elements the flat array is cut into chunks; each element still done once."""
    x = rng.standard_normal((2, 1100, 1000)).astype(np.float32)
    assert len(threads.chunk_bounds(x.size, 1)) >= 2
    with_threads(monkeypatch, 2)
    y, mask = nb_act.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(nb_act.relu_backward(x, mask), x * (x > 0))


def test_relu_supports_and_dy_checks(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert nb_act.supports(x)
    assert not nb_act.supports(x.transpose(0, 2, 1, 3))
    assert not nb_act.supports(x.astype(np.int64))
    _, mask = nb_act.relu_forward(x)
    with pytest.raises(TypeError, match="dy"):
        nb_act.relu_backward(x[:1], mask)


# ---------------------------------------------------------------- registration

def test_kernels_are_registered_and_selected(rng):
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    c = np.ones(4, np.float32)
    assert kernels.select("batchnorm", x, c, c, c, c).name == "numba"
    assert kernels.select("maxpool2d", x, 3, 2, "same").name == "numba"
    assert kernels.select("relu", x).name == "numba"
    assert kernels.select("maxpool2d", x.transpose(0, 2, 1, 3), 3, 2, "same").name == "reference"
    assert kernels.select("conv2d", x, np.zeros((3, 3, 4, 8), np.float32), None, 1, "same").name == "numba"
    grouped = np.zeros((3, 3, 2, 8), np.float32)                        # groups=2: the reference serves
    assert kernels.select("conv2d", x, grouped, None, 1, "same", 2).name == "reference"
    with kernels.use_kernels("reference"):
        assert kernels.select("maxpool2d", x, 3, 2, "same").name == "reference"
