"""A training run as data: its settings, the model they describe, and the call that trains it.

    settings = dict(DEFAULTS, width=1.0)           # everything that defines a run (JSON-able)
    model = build_model(settings)                  # the network those settings describe
    history = run_training(settings, "runs/a", epochs=6)

The command line (``cli.py``) and the ablation runner (``ablate.py``) both build their runs
here, so a checkpoint's stored settings rebuild exactly the model that wrote it.
"""
from __future__ import annotations

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
                                 rng=common["rng"], fc_layers=fc)
    else:
        raise ValueError(f"unknown model {settings['model']!r}: expected 'mini', 'xception' or 'inceptionv3'")
    if settings.get("bn_momentum") is not None:
        from .nn import BatchNorm2D
        for m in model.modules():
            if isinstance(m, BatchNorm2D):
                m.momentum = float(settings["bn_momentum"])
    return model


def run_training(settings, out, epochs, device="cpu", resume=None, progress=True, **fit_kw):
    """Load the data, build the model, train -> history. Used by ``train`` and ``ablate``."""
    from .data import load_dataset
    from .train import fit
    data = load_dataset(settings["data"], settings.get("subset"), seed=settings["seed"])
    model = build_model(settings, num_classes=len(data["classes"]), input_shape=data["x_train"].shape[1:])
    return fit(model, data, out, epochs=epochs, batch_size=settings["batch_size"], lr=settings["lr"],
               momentum=settings["momentum"], weight_decay=settings["weight_decay"],
               schedule=settings["schedule"], device=device, seed=settings["seed"],
               augment=settings.get("augment", True), resume=resume, settings=settings,
               progress=progress, polyak=settings.get("polyak"), **fit_kw)
