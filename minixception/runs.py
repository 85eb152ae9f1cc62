"""A training run as data: its settings, the model they describe, and the call that trains it.

    settings = dict(DEFAULTS, width=1.0)           # everything that defines a run (JSON-able)
    model = build_model(settings)                  # the network those settings describe
    history = run_training(settings, "runs/a", epochs=6)

The command line (``cli.py``) and the ablation runner (``ablate.py``) both build their runs
here, so a checkpoint's stored settings rebuild exactly the model that wrote it.

``check_setting`` / ``check_settings`` hold the one definition of what a valid setting is: the
command line refuses a bad flag with it while parsing, and a checkpoint's stored settings are
checked with it before a model is allocated (a file saying ``width=2000`` is refused, not built).
"""
from __future__ import annotations

import contextlib
import math

from .data.datasets import SHAPES_TRAIN

# The defaults of a bare `train`: a few minutes on a 2-core CPU.
DEFAULTS = dict(data="shapes", model="mini", epochs=6, batch_size=64, lr=0.05, momentum=0.9,
                weight_decay=5e-4, schedule="cosine", subset=4000, device="cpu", seed=0,
                out="runs/train", width=0.5, middle_blocks=2, residual=True, intermediate="none",
                dropout=0.0, augment=True, bn_momentum=0.9, polyak=None, fc_layers=(),
                dtype="float32")

# settings that define the run (stored in checkpoints; a resume takes them from there)
RUN_KEYS = ("data", "model", "batch_size", "lr", "momentum", "weight_decay", "schedule", "subset",
            "seed", "width", "middle_blocks", "residual", "intermediate", "dropout", "augment",
            "bn_momentum", "polyak", "fc_layers", "dtype")


MODELS = ("mini", "xception", "inceptionv3")
SCHEDULES = ("constant", "step", "cosine")
INTERMEDIATES = ("none", "relu", "elu")
DATA_SIZES = {"shapes": SHAPES_TRAIN, "cifar10": 50000}   # training images of each dataset (--subset's ceiling)
MAX_WIDTH = 16          # the mini model at width 16 has ~25M parameters, as many as the full Xception
MAX_MIDDLE_BLOCKS = 32


class SettingsError(ValueError):
    """A run setting outside its valid range (the message names the setting and the value)."""

    def __init__(self, message, setting=None):
        super().__init__(message)
        self.setting = setting


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v):
    return isinstance(v, int) and not isinstance(v, bool)


# name -> (is it valid?, what a valid value is); each test gets a value of the right kind or not
_CHECKS = {
    "lr": (lambda v: _finite(v) and 0 < v <= 10, "a finite number in (0, 10]"),
    "momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "bn_momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "dropout": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "width": (lambda v: _finite(v) and 0 < v <= MAX_WIDTH, f"a number in (0, {MAX_WIDTH}]"),
    "middle_blocks": (lambda v: _integer(v) and 0 <= v <= MAX_MIDDLE_BLOCKS,
                      f"an integer in [0, {MAX_MIDDLE_BLOCKS}]"),
    "batch_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "epochs": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "seed": (lambda v: _integer(v) and 0 <= v < 2 ** 63, "an integer >= 0"),
    "subset": (lambda v: v is None or (_integer(v) and v >= 1), "an integer >= 1 (or all)"),
    "data": (lambda v: v in DATA_SIZES, f"one of {tuple(DATA_SIZES)}"),
    "model": (lambda v: v in MODELS, f"one of {MODELS}"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "intermediate": (lambda v: v in INTERMEDIATES, f"one of {INTERMEDIATES}"),
    "residual": (lambda v: isinstance(v, bool), "true or false"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "polyak": (lambda v: v is None or (_finite(v) and 0 <= v < 1), "a decay in [0, 1) (or none)"),
    "fc_layers": (lambda v: isinstance(v, (list, tuple)) and len(v) <= 4
                  and all(_integer(u) and 1 <= u <= 16384 for u in v),
                  "at most 4 layer widths, each an integer in [1, 16384]"),
    "dtype": (lambda v: v in ("float32", "float64"), "float32 or float64"),
    "fc_layer": (lambda v: _integer(v) and 1 <= v <= 16384, "an integer in [1, 16384]"),
    # the ablation's protocol (not settings of one run): seeds per variant, held-out validation images
    "seeds": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "val": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
}
# a stored run must say at least these; the rest have the defaults build_model falls back on
REQUIRED = ("data", "model", "batch_size", "lr", "momentum", "weight_decay", "schedule", "seed")


def check_setting(name, value):
    """``value`` if it is a valid ``name`` setting, else SettingsError "<name> must be ..., got ..."."""
    ok, want = _CHECKS.get(name, (lambda v: True, ""))
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise SettingsError(f"{name} must be {want}, got {value!r}", setting=name)
    return value


def check_settings(settings):
    """Check a whole settings dict (from flags or from a file) -> it; SettingsError names the first fault."""
    if not isinstance(settings, dict):
        raise SettingsError(f"run settings must be a dict, got {type(settings).__name__}")
    missing = [k for k in REQUIRED if k not in settings]
    if missing:
        raise SettingsError(f"run settings lack {missing}")
    for k, v in settings.items():
        check_setting(k, v)
    n = settings.get("subset")
    if n is not None and n > DATA_SIZES[settings["data"]]:
        raise SettingsError(f"subset {n} is more than the {DATA_SIZES[settings['data']]} training images "
                            f"of {settings['data']}", setting="subset")
    return settings


def build_model(settings, num_classes=10, input_shape=(32, 32, 3)):
    """The model a run's settings describe (weights seeded by ``settings["seed"]``)."""
    from . import models           # lazily: the CLI's --help works without building anything
    inter = None if settings.get("intermediate", "none") == "none" else settings["intermediate"]
    fc = tuple(settings.get("fc_layers") or ())
    common = dict(residual=settings.get("residual", True), intermediate=inter,
                  dropout=settings.get("dropout", 0.0), rng=settings.get("seed", 0), fc_layers=fc,
                  dtype=settings.get("dtype", "float32"))
    if settings["model"] == "mini":
        model = models.mini_xception(num_classes, width=settings.get("width", 1.0),
                                     middle_blocks=settings.get("middle_blocks", 2), **common)
    elif settings["model"] == "xception":
        model = models.Xception(num_classes=num_classes, input_shape=tuple(input_shape), **common)
    elif settings["model"] == "inceptionv3":
        # no residual/intermediate options; inputs under 75x75 are upsampled (32 -> 96)
        from .models.inception_v3 import for_small_images
        model = for_small_images(tuple(input_shape), num_classes=num_classes, dropout=common["dropout"],
                                 rng=common["rng"], fc_layers=fc, dtype=common["dtype"])
    else:
        raise ValueError(f"unknown model {settings['model']!r}: expected 'mini', 'xception' or 'inceptionv3'")
    if settings.get("bn_momentum") is not None:
        from .nn import BatchNorm2D
        for m in model.modules():
            if isinstance(m, BatchNorm2D):
                m.momentum = float(settings["bn_momentum"])
    return model


def run_training(settings, out, epochs, device="cpu", resume=None, progress=True, overwrite=False, **fit_kw):
    """Check the settings, claim the run folder, load the data, build the model, train -> history.

    Used by ``train`` and ``ablate``. The folder is claimed (writable, locked, not holding another
    run unless ``resume``/``overwrite``) before the data is loaded, so a refusal costs nothing.
    """
    from .data import load_dataset
    from .runfolder import claim
    from .train import fit
    check_settings(settings)
    dist = fit_kw.get("distributed")
    # under mpiexec rank 0 alone owns (and locks) the run folder; the other ranks write nothing
    owner = dist is None or dist.rank == 0
    with claim(out, resume=resume, overwrite=overwrite) if owner else contextlib.nullcontext():
        data = load_dataset(settings["data"], settings.get("subset"), seed=settings["seed"])
        model = build_model(settings, num_classes=len(data["classes"]), input_shape=data["x_train"].shape[1:])
        return fit(model, data, out, epochs=epochs, batch_size=settings["batch_size"], lr=settings["lr"],
                   momentum=settings["momentum"], weight_decay=settings["weight_decay"],
                   schedule=settings["schedule"], device=device, seed=settings["seed"],
                   augment=settings.get("augment", True), resume=resume, settings=settings,
                   progress=progress, overwrite=overwrite, polyak=settings.get("polyak"),
                   **fit_kw)
