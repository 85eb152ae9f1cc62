"""numba CPU kernels (optional: without numba the reference runs)."""
