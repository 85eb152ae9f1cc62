"""Shared test set-up: skipping ``gpu`` tests without a GPU, and seeded random generators.

Tests marked ``@pytest.mark.gpu`` need CuPy *and* a usable CUDA GPU; they are
skipped otherwise (``bench/gpu_check.sh`` runs them on a GPU machine). The markers are declared
in pyproject.toml; what the test files share is in helpers.py.
"""
import numpy as np
import pytest

import minixception as mx


def pytest_collection_modifyitems(config, items):
    if mx.backend.gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a usable CUDA GPU (minixception.backend.gpu_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test (tests never share random state)."""
    return np.random.default_rng(1234)
