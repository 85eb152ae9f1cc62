"""PyTorch as an independent oracle (float64): forward and every gradient via autograd.

Each torch reference takes the *same* arrays in minixception's layouts (NHWC input,
Keras kernel layouts) and converts inside, so autograd hands back gradients already
in our layouts. TF "same" padding is explicit F.pad before the op (torch's own
padding="same" is symmetric and refuses stride 2); max pool pads with -inf; the
Keras average pool's divisor (padding excluded) is computed by pooling a ones map.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

from minixception import functional as F  # noqa: E402
from minixception.functional.padding import conv_geometry  # noqa: E402

TOL = dict(rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------- conversions
def nchw(x):
    return x.permute(0, 3, 1, 2)


def nhwc(x):
    return x.permute(0, 2, 3, 1)


def tf_pad(x_nchw, h, w, k, s, padding, value=0.0):
    """Pad an NCHW tensor the way TF/Keras (and minixception) do: the extra row/column after."""
    (t, b), (l, r) = conv_geometry(h, w, k, s, padding)[0]
    return TF.pad(x_nchw, (l, r, t, b), value=value)


def torch_conv2d(x, k, b=None, stride=1, padding="valid", groups=1):
    kh, kw = k.shape[:2]
    xt = tf_pad(nchw(x), x.shape[1], x.shape[2], (kh, kw), stride, padding)
    return nhwc(TF.conv2d(xt, k.permute(3, 2, 0, 1), b, stride=stride, groups=groups))


def torch_depthwise(x, d, stride=1, padding="same"):
    kh, kw, c, _ = d.shape
    xt = tf_pad(nchw(x), x.shape[1], x.shape[2], (kh, kw), stride, padding)
    return nhwc(TF.conv2d(xt, d.permute(2, 3, 0, 1), stride=stride, groups=c))


def torch_pointwise(x, p):
    return nhwc(TF.conv2d(nchw(x), p.permute(3, 2, 0, 1)))


def torch_separable(x, d, p, stride=1, padding="same", intermediate=None):
    h = torch_depthwise(x, d, stride, padding)
    if intermediate == "relu":
        h = TF.relu(h)
    elif intermediate == "elu":
        h = TF.elu(h)
    return torch_pointwise(h, p)


def torch_maxpool(x, k, s, padding):
    xt = tf_pad(nchw(x), x.shape[1], x.shape[2], k, s, padding, value=-float("inf"))
    return nhwc(TF.max_pool2d(xt, k, s))


def torch_avgpool(x, k, s, padding):
    """Keras average pool: sum over the real inputs of the window / their count."""
    h, w = x.shape[1], x.shape[2]
    sums = TF.avg_pool2d(tf_pad(nchw(x), h, w, k, s, padding), k, s, divisor_override=1)
    ones = torch.ones_like(nchw(x)[:1, :1])
    counts = TF.avg_pool2d(tf_pad(ones, h, w, k, s, padding), k, s, divisor_override=1)
    return nhwc(sums / counts)


# ---------------------------------------------------------------- the comparison
def compare(rng, ours_fwd, ours_bwd, torch_fn, inputs, tol=TOL):
    """Forward values and the gradient of sum(y * dy) w.r.t. every input, ours vs torch."""
    y, cache = ours_fwd(*inputs)
    dy = rng.standard_normal(y.shape)
    grads = ours_bwd(dy, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs]
    yt = torch_fn(*ts)
    (yt * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    assert len(grads) >= len(inputs)
    for i, (g, t) in enumerate(zip(grads, ts)):
        np.testing.assert_allclose(g, t.grad.numpy(), **tol, err_msg=f"gradient of input {i}")


CONV = [  # groups, stride, padding, (H, W), kernel, bias
    (1, 1, "valid", (5, 6), (3, 3), True),
    (1, 1, "same", (5, 6), (3, 3), False),
    (1, 2, "same", (6, 6), (3, 3), True),       # TF-same asymmetric: 0 before, 1 after
    (1, 2, "same", (8, 7), (3, 3), False),      # H asymmetric, W symmetric
    (1, 2, "same", (74, 9), (3, 3), False),     # Xception's 74 -> 37
    (1, 2, "same", (6, 6), (1, 1), False),      # the shortcut conv
    (1, 1, "same", (5, 5), (2, 2), True),       # even kernel at stride 1: 0/1 padding
    (1, 2, 1, (7, 6), (3, 3), True),
    (2, 1, "same", (5, 5), (3, 3), True),
    (2, 2, "same", (6, 7), (3, 3), False),
    (4, 2, "same", (6, 6), (3, 3), True),       # groups = C
    (4, 1, "valid", (5, 6), (5, 5), False),
]


@pytest.mark.parametrize("groups,stride,padding,hw,kernel,bias", CONV)
def test_conv2d(rng, groups, stride, padding, hw, kernel, bias):
    c, f = 4, 8
    x = rng.standard_normal((2, *hw, c))
    k = rng.standard_normal((*kernel, c // groups, f))
    inputs = [x, k] + ([rng.standard_normal(f)] if bias else [])
    compare(rng, lambda x, k, b=None: F.conv2d_forward(x, k, b, stride, padding, groups),
            F.conv2d_backward,
            lambda x, k, b=None: torch_conv2d(x, k, b, stride, padding, groups), inputs)


@pytest.mark.parametrize("stride,padding,k,hw", [(1, "same", 3, (5, 6)), (2, "same", 3, (6, 6)),
                                                 (2, "same", 3, (7, 8)), (1, "valid", 3, (5, 5)),
                                                 (2, "same", 5, (8, 9)), (1, 2, 5, (5, 6))])
def test_depthwise(rng, stride, padding, k, hw):
    x = rng.standard_normal((2, *hw, 5))
    d = rng.standard_normal((k, k, 5, 1))
    compare(rng, lambda x, d: F.depthwise_conv2d_forward(x, d, stride, padding),
            F.depthwise_conv2d_backward, lambda x, d: torch_depthwise(x, d, stride, padding), [x, d])


def test_pointwise(rng):
    compare(rng, F.pointwise_conv2d_forward, F.pointwise_conv2d_backward, torch_pointwise,
            [rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((1, 1, 6, 3))])


@pytest.mark.parametrize("intermediate", [None, "relu", "elu"])
@pytest.mark.parametrize("stride,hw", [(1, (5, 6)), (2, (6, 6))])
def test_separable(rng, intermediate, stride, hw):
    x = rng.standard_normal((2, *hw, 4))
    d, p = rng.standard_normal((3, 3, 4, 1)), rng.standard_normal((1, 1, 4, 6))
    compare(rng, lambda x, d, p: F.separable_conv2d_forward(x, d, p, stride, "same", intermediate),
            F.separable_conv2d_backward,
            lambda x, d, p: torch_separable(x, d, p, stride, "same", intermediate), [x, d, p])


def test_batchnorm_train_gradients_and_moving_statistics(rng):
    n, h, w, c = 3, 4, 5, 6
    m = n * h * w
    x = rng.standard_normal((n, h, w, c)) * 3 + 1
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    mm0, mv0 = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    mm, mv = mm0.copy(), mv0.copy()
    keras_m = 0.99
    rm_t, rv_t = torch.tensor(mm0), torch.tensor(mv0)

    def torch_bn(x, g, b):
        # torch's momentum is the weight of the *new* statistic: 1 - Keras's momentum
        return nhwc(TF.batch_norm(nchw(x), rm_t, rv_t, g, b, training=True, momentum=1 - keras_m, eps=1e-3))

    compare(rng, lambda x, g, b: F.batchnorm_forward(x, g, b, mm, mv, True, keras_m, 1e-3),
            F.batchnorm_backward, torch_bn, [x, gamma, beta])
    np.testing.assert_allclose(mm, rm_t.numpy(), **TOL)
    # torch's running_var mixes in the *unbiased* batch variance; Keras (and we) the biased one
    var_unbiased = (rv_t.numpy() - keras_m * mv0) / (1 - keras_m)
    var_biased = var_unbiased * (m - 1) / m
    np.testing.assert_allclose(var_biased, x.reshape(-1, c).var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(mv, keras_m * mv0 + (1 - keras_m) * var_biased, **TOL)


def test_batchnorm_eval(rng):
    c = 5
    x = rng.standard_normal((2, 3, 4, c))
    mm, mv = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    mm_before, mv_before = mm.copy(), mv.copy()
    compare(rng, lambda x, g, b: F.batchnorm_forward(x, g, b, mm, mv, False, 0.99, 1e-3),
            F.batchnorm_backward,
            lambda x, g, b: nhwc(TF.batch_norm(nchw(x), torch.tensor(mm), torch.tensor(mv), g, b,
                                               training=False, eps=1e-3)),
            [x, rng.uniform(0.5, 1.5, c), rng.standard_normal(c)])
    np.testing.assert_array_equal(mm, mm_before)       # eval never touches the moving statistics
    np.testing.assert_array_equal(mv, mv_before)


def test_relu(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    compare(rng, F.relu_forward, F.relu_backward, TF.relu, [x])


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu(rng, alpha):
    x = rng.standard_normal((2, 3, 4, 5)) * 2
    compare(rng, lambda x: F.elu_forward(x, alpha), F.elu_backward, lambda x: TF.elu(x, alpha), [x])


POOLS = [(3, 2, "same", (6, 7)), (3, 2, "same", (74, 5)), (3, 2, "valid", (7, 6)),
         (2, 2, "valid", (6, 6)), (3, 1, "same", (5, 4)), (2, 1, "same", (4, 5))]


@pytest.mark.parametrize("k,s,padding,hw", POOLS)
def test_maxpool(rng, k, s, padding, hw):
    x = rng.permutation(2 * hw[0] * hw[1] * 3).reshape(2, *hw, 3) / 100.0 - 5   # no ties; mostly negative, so zero padding would win
    compare(rng, lambda x: F.maxpool2d_forward(x, k, s, padding), F.maxpool2d_backward,
            lambda x: torch_maxpool(x, k, s, padding), [x])


@pytest.mark.parametrize("k,s,padding,hw", POOLS)
def test_avgpool(rng, k, s, padding, hw):
    x = rng.standard_normal((2, *hw, 3))
    compare(rng, lambda x: F.avgpool2d_forward(x, k, s, padding), F.avgpool2d_backward,
            lambda x: torch_avgpool(x, k, s, padding), [x])


def test_avgpool_symmetric_padding_matches_count_include_pad_false(rng):
    """Where TF-same padding is symmetric (3x3/1: 1/1), torch's count_include_pad=False is Keras's rule."""
    x = rng.standard_normal((2, 5, 6, 3))
    compare(rng, lambda x: F.avgpool2d_forward(x, 3, 1, "same"), F.avgpool2d_backward,
            lambda x: nhwc(TF.avg_pool2d(nchw(x), 3, 1, padding=1, count_include_pad=False)), [x])


def test_global_avgpool(rng):
    compare(rng, F.global_avgpool2d_forward, F.global_avgpool2d_backward,
            lambda x: x.mean(dim=(1, 2)), [rng.standard_normal((3, 4, 5, 6))])


@pytest.mark.parametrize("bias", [True, False])
def test_dense(rng, bias):
    inputs = [rng.standard_normal((4, 7)), rng.standard_normal((7, 3))] + ([rng.standard_normal(3)] if bias else [])
    compare(rng, F.dense_forward, F.dense_backward, lambda x, k, b=None: TF.linear(x, k.T, b), inputs)


def test_dropout_eval(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    compare(rng, lambda x: F.dropout_forward(x, 0.5, None, training=False), F.dropout_backward,
            lambda x: TF.dropout(x, 0.5, training=False), [x])


def test_softmax_cross_entropy(rng):
    z = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    lt = torch.tensor(labels)
    compare(rng, lambda z: F.softmax_cross_entropy(z, labels), lambda dy, dz: dy * dz,
            lambda z: TF.cross_entropy(z, lt), [z])
    loss, _ = F.softmax_cross_entropy(np.array([[1000.0, -1000.0, 3.0]]), np.array([1]))
    ref = TF.cross_entropy(torch.tensor([[1000.0, -1000.0, 3.0]], dtype=torch.float64), torch.tensor([1]))
    assert np.isfinite(loss) and abs(float(loss) - ref.item()) < 1e-9
