"""The CuPy code path, kept honest without a GPU.

(a) Every ``xp.<name>`` chain in the package (``xp.random.default_rng``,
    ``xp.lib.stride_tricks...``, and ``cp.<name>`` in the backend) exists in ``cupy``,
    which imports fine without a GPU.
(b) The layer tests run again with an array module that is NumPy restricted to the
    names CuPy has (``CupyStandin`` in tests/helpers.py): a numpy-only name used through ``xp``
    raises AttributeError, and the results must equal the plain NumPy run bit for bit.
(c) The stand-in really refuses numpy-only names, so (b) can fail.
"""
import ast
import contextlib
import pathlib
import sys
import types

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

import minixception as mx  # noqa: E402
from minixception import backend  # noqa: E402

from helpers import (CupyStandin, INPUTS, OP_CASES, case_inputs, layer_cases, make_standin, randomise_bn,  # noqa: E402
                     run_case, xception_entry_block, xception_middle_block)

PACKAGE = pathlib.Path(mx.__file__).parent
ARRAY_MODULE_NAMES = {"xp", "cp"}     # how the package names the array module (cp: CuPy itself, in backend)


# ---------------------------------------------------------------- (a) static check
def xp_chains(source):
    """Every dotted attribute chain rooted at a name in ARRAY_MODULE_NAMES, e.g. 'xp.random.default_rng'."""
    chains = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        parts, cur = [], node
        while isinstance(cur, ast.Attribute):
            parts.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in ARRAY_MODULE_NAMES:
            chains.add(".".join([cur.id] + parts[::-1]))
    return chains


def missing_in_cupy(chains):
    missing = []
    for chain in sorted(chains):
        obj = cupy
        for part in chain.split(".")[1:]:
            if not hasattr(obj, part):
                missing.append(chain)
                break
            obj = getattr(obj, part)
    return missing


def package_chains():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for chain in xp_chains(path.read_text()):
            found.setdefault(chain, []).append(str(path.relative_to(PACKAGE.parent)))
    return found


def test_every_xp_name_exists_in_cupy():
    found = package_chains()
    assert len(found) > 20, "the parser found suspiciously few xp.<name> uses"
    assert "xp.zeros" in found
    missing = missing_in_cupy(found)
    assert not missing, "names used through xp that cupy lacks: " + "; ".join(
        f"{c} (in {', '.join(found[c])})" for c in missing)


def test_static_check_can_fail():
    chains = xp_chains("def f(x):\n    xp = g(x)\n    return xp.nanpercentile(x, 5) + xp.random.SeedSequence(1) + xp.zeros(3)\n")
    assert chains == {"xp.nanpercentile", "xp.random", "xp.random.SeedSequence", "xp.zeros"}
    assert missing_in_cupy(chains) == ["xp.nanpercentile", "xp.random.SeedSequence"]


# ---------------------------------------------------------------- (b) the stand-in run
@pytest.fixture(autouse=True)
def _reference_kernels():
    """The stand-in checks the xp reference -- what runs on CuPy where no CUDA kernel takes the
    op -- so every run here, with and without the stand-in, takes the reference, not numba."""
    with mx.use_kernels("reference"):
        yield


@contextlib.contextmanager
def standin_array_module():
    """Patch every ``get_array_module`` the package imported by name to hand out the stand-in."""
    original = backend.get_array_module
    standin = make_standin()

    def patched(*arrays):
        xp = original(*arrays)
        return standin if xp is np else xp

    patched_modules = [m for name, m in list(sys.modules.items())
                       if name.split(".")[0] == "minixception" and getattr(m, "get_array_module", None) is original]
    assert backend in patched_modules and len(patched_modules) > 5
    assert {"minixception.functional.conv", "minixception.functional.depthwise",
            "minixception.nn.layers"} <= {m.__name__ for m in patched_modules}
    for m in patched_modules:
        m.get_array_module = patched
    try:
        yield standin
    finally:
        for m in patched_modules:
            m.get_array_module = original


@pytest.mark.parametrize("case", OP_CASES, ids=[c.name for c in OP_CASES])
def test_ops_with_cupy_names_only(case):
    inputs = case_inputs(case, "float32")
    y_ref, g_ref, _ = run_case(case, inputs)
    with standin_array_module():
        y, grads, _ = run_case(case, case_inputs(case, "float32"))
    for a, b in zip([y, *grads], [y_ref, *g_ref]):
        assert isinstance(a, (np.ndarray, np.generic)) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


LAYERS = layer_cases()


@pytest.mark.parametrize("lid,factory,shape,tol,kind", LAYERS, ids=[l[0] for l in LAYERS])
def test_layers_with_cupy_names_only(lid, factory, shape, tol, kind):
    def run():
        layer = factory()
        x = INPUTS[kind](np.random.default_rng(4), shape)
        y = layer(x)
        dx = layer.backward(np.random.default_rng(5).standard_normal(y.shape))
        return [y, dx] + [p.grad for p in layer.parameters()] + list(layer.state_dict().values())

    ref = run()
    with standin_array_module():
        out = run()
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block", ["entry", "middle"])
def test_xception_blocks_and_sgd_with_cupy_names_only(block, training):
    def run():
        model = xception_entry_block() if block == "entry" else xception_middle_block()
        randomise_bn(model)
        model.train(training)
        x = np.random.default_rng(3).standard_normal((2, 6, 6, 4) if block == "entry" else (2, 5, 5, 6))
        y = model(x)
        logits = y.reshape(y.shape[0], -1)[:, :5]
        loss, dlogits = mx.losses.softmax_cross_entropy(np.ascontiguousarray(logits), np.array([1, 3]))
        dy = np.zeros_like(y).reshape(y.shape[0], -1)
        dy[:, :5] = dlogits
        dx = model.backward(dy.reshape(y.shape))
        opt = mx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        opt.step()
        opt.step()
        return [y, loss, dx] + list(model.state_dict().values())

    ref = run()
    with standin_array_module() as standin:
        out = run()
    assert len(standin.accessed) > 5, standin.accessed
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)


def test_gradcheck_with_cupy_names_only():
    layer = mx.nn.SeparableConv2D(3, 4, intermediate="elu", rng=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 3))
    with standin_array_module() as standin:
        errors = mx.gradcheck.check_layer(layer, x, samples=10)
    assert max(errors.values()) < 1e-7
    assert any(name.startswith("xp.") for name in standin.accessed)


# ---------------------------------------------------------------- (c) the stand-in can fail
def test_standin_refuses_numpy_only_names():
    standin = make_standin()
    numpy_only = [n for n in ("nanpercentile", "seterr", "einsum_path", "insert", "errstate")
                  if hasattr(np, n) and not hasattr(cupy, n)]
    assert numpy_only, "no numpy-only name left to test with"
    for name in numpy_only:
        with pytest.raises(AttributeError, match="cupy does not"):
            getattr(standin, name)
    with pytest.raises(AttributeError, match="cupy does not"):
        standin.random.SeedSequence
    # the names CuPy has come through unchanged, submodules wrapped too
    assert standin.zeros is np.zeros and standin.random.default_rng is np.random.default_rng
    assert isinstance(standin.random, CupyStandin)


def test_standin_run_catches_a_numpy_only_name_in_the_package():
    """A package function that used a numpy-only name through xp must fail under the patch."""
    module = sys.modules["minixception.functional.activations"]
    scratch = {}
    exec("def probe(x):\n    xp = get_array_module(x)\n    return xp.nanpercentile(x, 50)\n", scratch)
    probe = types.FunctionType(scratch["probe"].__code__, vars(module))   # the module's globals
    assert probe(np.arange(5.0)) == 2.0                                       # fine on plain NumPy
    with standin_array_module():
        with pytest.raises(AttributeError, match="nanpercentile"):
            probe(np.arange(5.0))
