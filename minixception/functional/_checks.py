"""Input checks shared by the ops: fail early, name what was expected and what came."""
from __future__ import annotations


def check_nhwc(x, channels=None, what="input"):
    """Check that ``x`` is a 4-D NHWC floating array (with ``channels`` in the last axis)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{what}: expected an array, got {type(x).__name__}")
    if len(shape) != 4:
        raise ValueError(f"{what}: expected a 4-D NHWC array (N, H, W, C), got shape {tuple(shape)}")
    if x.dtype.kind != "f":
        raise TypeError(f"{what}: expected a float32 or float64 array, got dtype {x.dtype}")
    if channels is not None and shape[-1] != channels:
        hint = ""
        if shape[1] == channels:
            hint = (" -- this looks like NCHW (channels first); minixception is NHWC, "
                    "use x.transpose(0, 2, 3, 1)")
        raise ValueError(
            f"{what}: expected NHWC input with {channels} channels in the last axis, "
            f"got shape {tuple(shape)}{hint}")


def check_same_dtype(x, *params, what="input"):
    """Check that every parameter (None skipped) has ``x``'s dtype: an op never casts."""
    for p in params:
        if p is not None and p.dtype != x.dtype:
            raise TypeError(
                f"{what}: dtype {x.dtype} does not match the parameters' dtype {p.dtype}; "
                f"an op never changes dtypes -- cast the input or call .to(dtype=...) on the layer")
