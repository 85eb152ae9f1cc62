"""CuPy against NumPy for every op, forward and backward, and layers moved to the GPU and back.

All tests here carry ``@pytest.mark.gpu``: they skip without CuPy and a CUDA GPU
(tests/conftest.py) and run with ``bench/gpu_check.sh`` on a GPU machine.

float32 CuPy results are compared with the float64 NumPy analytic results
(rel. error < 1e-4 for local ops, < 1e-3 for reductions); float64 CuPy
with float64 NumPy much tighter (same math, different summation order).
"""
import numpy as np
import pytest

import minixception as mx
from minixception.backend import to_device, to_numpy
from minixception.gradcheck import check_layer, rel_error

from helpers import (INPUTS, OP_CASES, REDUCTION, case_inputs, layer_cases, randomise_bn, run_case,
                     xception_entry_block, xception_middle_block)

pytestmark = pytest.mark.gpu

COMPARABLE = [c for c in OP_CASES if c.f32]        # dropout-train: CuPy draws its own mask (tested below)


def on_gpu(arrays):
    return [to_device(a, "gpu") for a in arrays]


def assert_on_gpu(arrays):
    import cupy
    for a in arrays:
        assert isinstance(a, cupy.ndarray), type(a)


@pytest.mark.parametrize("case", COMPARABLE, ids=[c.name for c in COMPARABLE])
def test_op_cupy_float32_vs_numpy_float64(case):
    y64, g64, _ = run_case(case, case_inputs(case, "float64"))
    y, g, _ = run_case(case, on_gpu(case_inputs(case, "float32")))
    assert_on_gpu([y, *g])
    assert y.dtype == np.float32 and all(a.dtype == np.float32 for a in g)
    for a, b in zip([y, *g], [y64, *g64]):
        assert rel_error(to_numpy(a), b) < case.f32, case.name


@pytest.mark.parametrize("case", COMPARABLE, ids=[c.name for c in COMPARABLE])
def test_op_cupy_float64_vs_numpy_float64(case):
    y64, g64, _ = run_case(case, case_inputs(case, "float64"))
    y, g, _ = run_case(case, on_gpu(case_inputs(case, "float64")))
    assert_on_gpu([y, *g])
    for a, b in zip([y, *g], [y64, *g64]):
        assert rel_error(to_numpy(a), b) < 1e-10, case.name


def test_dropout_on_gpu_mask_semantics():
    import cupy
    x = cupy.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 16)), dtype=cupy.float32)
    y, mask = mx.functional.dropout_forward(x, 0.25, cupy.random.default_rng(5))
    assert isinstance(y, cupy.ndarray) and y.dtype == cupy.float32
    kept = to_numpy(y != 0)
    assert abs(1 - kept.mean() - 0.25) < 0.03
    np.testing.assert_allclose(to_numpy(y)[kept], to_numpy(x)[kept] / 0.75, rtol=1e-6)
    dy = cupy.ones_like(x)
    np.testing.assert_allclose(to_numpy(mx.functional.dropout_backward(dy, mask)), kept / 0.75, rtol=1e-6)


LAYERS = layer_cases()


@pytest.mark.parametrize("lid,factory,shape,tol,kind", LAYERS, ids=[l[0] for l in LAYERS])
def test_layer_to_gpu_and_back(lid, factory, shape, tol, kind):
    cpu, gpu = factory(), factory()
    assert gpu.to("gpu") is gpu
    assert_on_gpu([p.data for p in gpu.parameters()] + [p.grad for p in gpu.parameters()])
    x = INPUTS[kind](np.random.default_rng(4), shape)
    y_cpu = cpu(x)
    y_gpu = gpu(to_device(x, "gpu"))
    assert_on_gpu([y_gpu])
    dy = np.random.default_rng(5).standard_normal(y_cpu.shape)
    dx_cpu = cpu.backward(dy)
    dx_gpu = gpu.backward(to_device(dy, "gpu"))
    assert_on_gpu([dx_gpu])
    assert rel_error(to_numpy(y_gpu), y_cpu) < 1e-10
    assert rel_error(to_numpy(dx_gpu), dx_cpu) < 1e-10
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        assert rel_error(to_numpy(pg.grad), pc.grad) < 1e-10, name
    # state dicts are host arrays; back on the CPU everything matches
    sd = gpu.state_dict()
    assert all(type(v) is np.ndarray for v in sd.values())
    gpu.to("cpu")
    assert all(type(p.data) is np.ndarray for p in gpu.parameters())
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert rel_error(a, b) < 1e-10, k


def test_load_state_dict_into_gpu_model_stays_on_gpu():
    model = xception_middle_block(dtype="float32").to("gpu")
    sd = xception_middle_block(dtype="float32", seed=3).state_dict()
    model.load_state_dict(sd)
    assert_on_gpu([p.data for p in model.parameters()] + [p.grad for p in model.parameters()])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block", ["entry", "middle"])
def test_xception_block_cupy_float32_vs_numpy_float64(block, training):
    shape = (2, 6, 6, 4) if block == "entry" else (2, 5, 5, 6)
    x = np.random.default_rng(3).standard_normal(shape)
    results = []
    for device, dtype in (("cpu", "float64"), ("gpu", "float32")):
        model = xception_entry_block() if block == "entry" else xception_middle_block()
        randomise_bn(model)
        model.train(training).to(device, dtype)
        y = model(to_device(x.astype(dtype), device))
        dy = to_device(np.random.default_rng(6).standard_normal(y.shape).astype(dtype), device)
        dx = model.backward(dy)
        opt = mx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        opt.step()
        results.append([to_numpy(y), to_numpy(dx)] + list(model.state_dict().values()))
    for a, b in zip(results[1], results[0]):
        assert rel_error(a, b) < REDUCTION


def test_gradcheck_on_gpu_float64():
    layer = mx.nn.SeparableConv2D(3, 4, intermediate="elu", rng=0, dtype="float64").to("gpu")
    x = to_device(np.random.default_rng(0).standard_normal((2, 5, 5, 3)), "gpu")
    errors = check_layer(layer, x, samples=20)
    assert max(errors.values()) < 1e-7, errors


def test_softmax_cross_entropy_on_gpu_extreme_logits():
    z = to_device(np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]], "float32"), "gpu")
    labels = to_device(np.array([0, 2]), "gpu")
    loss, dz = mx.losses.softmax_cross_entropy(z, labels)
    assert_on_gpu([loss, dz])
    assert np.isfinite(float(loss)) and abs(float(loss) - np.log1p(np.e) / 2) < 1e-4
    assert bool(np.all(np.isfinite(to_numpy(dz))))
