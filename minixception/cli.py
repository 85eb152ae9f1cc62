"""Command line: ``python -m minixception {train,summary,compare,ablate}`` (also the ``minixception`` script).

    python -m minixception train                      # mini Xception on the built-in shapes data, CPU
    python -m minixception train --data cifar10 --device gpu --epochs 30 --out runs/c10
    python -m minixception train --resume runs/c10/checkpoint.npz --epochs 40
    python -m minixception summary --model xception
    python -m minixception compare                     # Xception vs Inception V3, side by side
    mpiexec -n 2 python -m minixception train --distributed --sync-bn
    python -m minixception ablate --lr-grid 0.015 0.045 0.135 --seeds 3 --out runs/ablation

Every flag is defined once, in ``FLAGS``; ``train``, ``ablate`` and ``summary`` pick theirs by
name. A flag's value is checked while parsing (``runs.check_setting``: ``--lr nan`` or
``--batch-size 0`` stop there, naming the flag, before any file is touched); checks that
involve two flags (``--subset`` against ``--data``) run in ``resolve``, still before any work.
Flags default to ``None`` so a resume can tell a flag that was given from one that was not;
``resolve`` fills in the defaults.

Library errors (checkpoint, run folder, settings, data, weights, device, non-finite values)
end in one line on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

from .runs import DEFAULTS, RUN_KEYS, SettingsError, build_model, check_setting, check_settings, run_training  # noqa: F401


# -- one definition of each flag --------------------------------------------------------

def _checked(kind, name):
    """An argparse ``type``: parse as ``kind``, then ``check_setting(name)``; argparse names the flag."""
    def parse(text):
        if name == "subset" and text == "all":
            return "all"
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        try:
            return check_setting(name, value)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = kind.__name__
    return parse


def _default(d, key):
    v = d.get(key)
    return "all" if key == "subset" and v is None else v


# name -> (option strings, argparse keywords, help taking the command's defaults)
FLAGS = {
    "data": (("--data",), dict(choices=["shapes", "cifar10"]), lambda d: (
        f"shapes: built-in generated dataset, no download (default: {d['data']}); cifar10: the official "
        "binary archive, downloaded once into $MINIXCEPTION_CACHE (default ~/.cache/minixception)")),
    "model": (("--model",), dict(choices=["mini", "xception", "inceptionv3"]), lambda d: (
        f"mini: the small Xception for 32x32 (default: {d['model']}); xception: the full 36-layer "
        "Xception (22.9M parameters at ImageNet size; slow on a CPU); inceptionv3: Keras's Inception V3, "
        "the paper's baseline (23.8M parameters; needs 75x75 inputs, so 32x32 images are upsampled to "
        "96x96: very slow on a CPU)")),
    "fc_layers": (("--fc-layers",), dict(type=_checked(int, "fc_layer"), nargs="+", metavar="UNITS"),
                  lambda d: "fully connected + ReLU layers between the global pool and the classifier, "
                            "e.g. --fc-layers 4096 4096 (the paper's JFT models 'with FC layers'); default none"),
    "width": (("--width",), dict(type=_checked(float, "width")),
              lambda d: f"channel multiplier of the mini model, in (0, 16] (default {d['width']})"),
    "middle_blocks": (("--middle-blocks",), dict(type=_checked(int, "middle_blocks")),
                      lambda d: f"identity middle-flow blocks of the mini model (default {d['middle_blocks']}; "
                                "Xception: 8)"),
    "residual": (("--no-residual",), dict(dest="residual", action="store_false"),
                 lambda d: "drop every residual connection (the paper's Figure 9 ablation)"),
    "intermediate": (("--intermediate",), dict(choices=["none", "relu", "elu"]),
                     lambda d: f"activation between depthwise and pointwise conv (Figure 10; default "
                               f"{d['intermediate']})"),
    "dropout": (("--dropout",), dict(type=_checked(float, "dropout")),
                lambda d: f"dropout rate before the classifier, in [0, 1) (the paper: 0.5 on ImageNet; "
                          f"default {d['dropout']})"),
    "epochs": (("--epochs",), dict(type=_checked(int, "epochs")), lambda d: (
        f"epochs in total, at least 1 (default {d['epochs']}; with --resume: the run's planned epochs)")),
    "batch_size": (("--batch-size",), dict(type=_checked(int, "batch_size")),
                   lambda d: f"at least 1 (default {d['batch_size']})"),
    "lr": (("--lr",), dict(type=_checked(float, "lr")),
           lambda d: f"peak learning rate, in (0, 10] (default {d['lr']})"),
    "lr_grid": (("--lr-grid",), dict(type=_checked(float, "lr"), nargs="+", metavar="LR"), lambda d: (
        "learning rates to try, each in (0, 10]: every variant trains at each with every seed and is judged "
        "at the one with the best mean validation accuracy (default: just --lr)")),
    "seeds": (("--seeds",), dict(type=_checked(int, "seeds"), metavar="N"), lambda d: (
        f"runs per variant and rate, with seeds --seed, --seed+1, ... (default {d['seeds']})")),
    "val": (("--val",), dict(type=_checked(int, "val"), metavar="N"), lambda d: (
        "validation images held out from the end of the training images, to choose the rate (default: "
        "none with one rate, a fifth of the training images with several)")),
    "momentum": (("--momentum",), dict(type=_checked(float, "momentum")),
                 lambda d: f"SGD momentum, in [0, 1) (default {d['momentum']})"),
    "weight_decay": (("--weight-decay",), dict(type=_checked(float, "weight_decay")),
                     lambda d: f"L2 on kernels, added to the gradient, in [0, 1) (default {d['weight_decay']})"),
    "schedule": (("--schedule",), dict(choices=["constant", "step", "cosine"]), lambda d: (
        "learning-rate schedule: constant; step = x0.94 every 2 epochs (the paper's); cosine to 0 over "
        f"--epochs (default {d['schedule']})")),
    "subset": (("--subset",), dict(type=_checked(int, "subset")), lambda d: (
        "train on the first N training images (test: N/5, at least 200); all = every image "
        f"(shapes: 10000/2000, cifar10: 50000/10000). Default {_default(d, 'subset')}")),
    "bn_momentum": (("--bn-momentum",), dict(type=_checked(float, "bn_momentum")), lambda d: (
        "batch norm's moving-average momentum, in [0, 1) (Keras/Xception: 0.99, made for long ImageNet "
        "runs; with a few hundred steps the moving statistics would lag far behind and eval accuracy "
        f"with them; default {d['bn_momentum']})")),
    "polyak": (("--polyak",), dict(type=_checked(float, "polyak"), metavar="DECAY"), lambda d: (
        "keep a Polyak (exponential moving) average of the weights with this decay in [0, 1), e.g. 0.999, "
        "and evaluate each epoch with both the raw and the averaged weights (metrics.csv columns "
        "polyak_test_loss/polyak_test_acc); default off")),
    "dtype": (("--dtype",), dict(choices=["float32", "float64"]), lambda d: (
        f"the model's and the batches' float type (default {d['dtype']}; float64 for exact comparisons)")),
    "distributed": (("--distributed",), dict(action="store_true", default=False), lambda d: (
        "synchronous data-parallel SGD over MPI, one process per CPU socket or GPU: mpiexec -n K python -m "
        "minixception train --distributed ...; --batch-size is the global batch, split evenly over the K ranks")),
    "sync_bn": (("--sync-bn",), dict(action="store_true", default=False), lambda d: (
        "with --distributed: batch norm uses the statistics of the whole global batch (allreduced), so K "
        "ranks compute exactly what one process would")),
    "augment": (("--no-augment",), dict(dest="augment", action="store_false"),
                lambda d: "no random crop (4-pixel padding) / horizontal flip"),
    "device": (("--device",), dict(choices=["cpu", "gpu"]),
               lambda d: f"cpu: NumPy; gpu: CuPy, data included (default {d['device']})"),
    "seed": (("--seed",), dict(type=_checked(int, "seed")),
             lambda d: f"seeds the weights, the data order and augmentation, and the shapes data; >= 0 "
                       f"(default {d['seed']})"),
    "out": (("--out",), dict(), lambda d: (
        f"run folder (default: {d['out']}, or {d['out']}-2, -3, ... if that one holds files; train "
        "--resume: the checkpoint's folder). A folder that holds a run is refused unless --overwrite "
        "replaces it (or train's --resume continues it)")),
    "overwrite": (("--overwrite",), dict(action="store_true", default=False),
                  lambda d: "replace the run in --out (its checkpoint.npz, metrics.csv, curves.png)"),
    "progress": (("--no-progress",), dict(dest="progress", action="store_false", default=True),
                 lambda d: "no tqdm progress bar"),
    "debug": (("--debug",), dict(action="store_true", default=False),
              lambda d: "on an error, show the Python traceback instead of one line"),
}

TRAIN_FLAGS = ("data", "model", "width", "middle_blocks", "residual", "intermediate", "dropout", "epochs",
               "batch_size", "lr", "momentum", "weight_decay", "schedule", "subset", "bn_momentum", "augment",
               "device", "seed", "out", "overwrite", "progress", "debug", "fc_layers", "polyak", "dtype",
               "distributed", "sync_bn")
SUMMARY_FLAGS = ("model", "width", "middle_blocks", "fc_layers", "debug")


def add_flags(p, names, defaults):
    """Add the flags ``names`` (keys of FLAGS) to parser ``p``; ``defaults`` feeds their help."""
    for name in names:
        options, kw, help_for = FLAGS[name]
        p.add_argument(*options, **{"default": None, **kw, "help": help_for(defaults)})


def flag_of(name):
    """The command-line spelling of a setting: ``batch_size`` -> ``--batch-size``."""
    return FLAGS[name][0][0] if name in FLAGS else "--" + name.replace("_", "-")


def resolve(p, args, defaults, names):
    """The one place where flags are completed and checked together: fill what was not given from
    ``defaults``; ``--subset all`` -> None; refuse cross-flag nonsense through ``p.error``."""
    for name in names:
        if getattr(args, name, None) is None and name in defaults and name != "out":   # see run_folder
            setattr(args, name, defaults[name])
    if getattr(args, "subset", None) == "all":
        args.subset = None
    try:
        check_settings({k: getattr(args, k) for k in RUN_KEYS if hasattr(args, k)} | {
            k: defaults[k] for k in RUN_KEYS if not hasattr(args, k) and k in defaults})
    except SettingsError as exc:
        p.error(f"argument {flag_of(exc.setting or '')}: {exc}")
    return args


def run_folder(args, default):
    """The one place that decides where a run writes: ``--out`` when given; for a resume, the
    checkpoint's folder; otherwise a fresh folder (``default``, else ``default-2``, ``-3``, ...)."""
    if args.out is not None:
        return args.out
    if getattr(args, "resume", None):
        return os.path.dirname(os.path.abspath(args.resume))
    from .runfolder import fresh_folder
    return str(fresh_folder(default))


def settings_from_args(args):
    s = {k: getattr(args, k) for k in RUN_KEYS}
    s["fc_layers"] = list(s.get("fc_layers") or [])        # JSON-able, as a checkpoint stores it
    return s


# -- the parser ----------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="minixception", description="Train and inspect Xception built by hand on NumPy / CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="{train,summary,compare,ablate}")
    sub.required = True

    p = sub.add_parser("train", help="train a model; writes OUT/metrics.csv, OUT/curves.png, OUT/checkpoint.npz",
                       description="Train with SGD (momentum, L2, LR schedule); evaluate every epoch; "
                                   "Ctrl-C saves a checkpoint that --resume continues exactly.")
    add_flags(p, TRAIN_FLAGS, DEFAULTS)
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT with its own settings: a run-defining flag "
                        "(--lr, --width, --data, --seed, ...) that contradicts them is refused; --epochs "
                        "extends or shortens the run (step/constant schedules continue unchanged; cosine "
                        "anneals from the current lr to 0 at the new last epoch, or restarts from the peak "
                        "lr if it had finished); --out, --device, --no-progress come from this command line")

    p = sub.add_parser("summary", help="print the per-layer table (output shape, parameters, FLOPs)")
    add_flags(p, SUMMARY_FLAGS, DEFAULTS)
    p.add_argument("--input-size", type=int, default=None,
                   help="square input size (default: 299 for xception, 32 for mini)")
    p.add_argument("--classes", type=int, default=None, help="default: 1000 for xception, 10 for mini")

    p = sub.add_parser("compare", help="Xception vs Inception V3 side by side: parameters, mult-adds, "
                                       "measured forward and training-step time on this machine",
                       description="The paper's Table 3 on this machine: both networks' parameters (and the "
                                   "paper's counts), multiply-adds, measured time, and what FC layers add.")
    from .compare import add_compare_args
    add_compare_args(p)
    add_flags(p, ("debug",), DEFAULTS)

    p = sub.add_parser("ablate", help="the paper's ablations in miniature: residual on/off, intermediate "
                                      "activation none/relu/elu; writes OUT/ablation.png, OUT/summary.csv, "
                                      "OUT/ablation.csv",
                       description="Train four variants of the mini model: residual with intermediate none / "
                                   "relu / elu, and without residual (none). Each variant trains at every rate "
                                   "of --lr-grid with --seeds seeds and is judged at its own rate, the one with "
                                   "the best mean accuracy on --val validation images; test accuracy is "
                                   "reported, and an ordering counts only if every seed agrees (the paper's "
                                   "Figures 9 and 10).")
    from .ablate import add_ablate_args
    add_ablate_args(p)
    parser.commands = dict(sub.choices)
    return parser


# -- the commands --------------------------------------------------------------------------

class CommandError(Exception):
    """A refusal of the command line itself (a resume that contradicts its checkpoint, no device)."""


def _check_device(device):
    from .backend import check_device
    try:
        check_device(device)
    except (RuntimeError, ValueError) as exc:
        raise CommandError(f"--device {device}: {exc}") from exc


def _resume_settings(args):
    """The checkpoint's settings (checked before anything is built), the flags checked against them."""
    from .checkpoint import CheckpointError, read_meta
    from .train import check_run_meta
    path = args.resume
    meta = read_meta(path)
    settings = meta.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise CheckpointError(f"{path}: the checkpoint holds no run settings; cannot rebuild its model")
    try:
        check_settings(settings)
    except SettingsError as exc:
        raise CheckpointError(f"{path}: its stored settings are invalid: {exc}") from exc
    check_run_meta(path)(meta)
    given = {k: getattr(args, k) for k in RUN_KEYS if getattr(args, k) is not None}
    if given.get("subset") == "all":
        given["subset"] = None
    clash = [f"{flag_of(k)} {v} contradicts the checkpoint's {k} {settings.get(k, DEFAULTS[k])}"
             for k, v in given.items() if v != settings.get(k, DEFAULTS[k])]
    if clash:
        raise CommandError("; ".join(clash) + ". A resume continues the saved run with its own settings; "
                           "start a new run (another --out) to change them")
    plan = meta.get("lr_plan")
    epochs = args.epochs or (math.ceil(plan[-1]["to"]) if plan else DEFAULTS["epochs"])
    return settings, meta, epochs


class DistributedError(ValueError):
    """--distributed / --sync-bn cannot run as asked (no MPI, one rank, batch not divisible)."""


def _data_parallel(args, settings):
    """None for a single process; else the DataParallel hooks for this rank (errors say how to launch)."""
    if not args.distributed:
        if args.sync_bn:
            raise DistributedError("--sync-bn needs --distributed (launch: mpiexec -n K python -m "
                                   "minixception train --distributed --sync-bn ...)")
        return None
    from .distributed import DataParallel, DistributedUnavailable, init
    try:
        dp = DataParallel(init(args.device or DEFAULTS["device"]), sync_bn=args.sync_bn)
        dp.check_batch_size(settings["batch_size"])
    except (DistributedUnavailable, ValueError) as exc:
        raise DistributedError(str(exc)) from None
    return dp


def cmd_train(args, parser):
    say = print
    if args.resume:
        settings, meta, epochs = _resume_settings(args)
        out = run_folder(args, DEFAULTS["out"])
        if meta["epoch"] >= epochs:
            print(f"nothing to train: {args.resume} is already at epoch {meta['epoch']}, and --epochs {epochs} "
                  "asks for no more; no file was written")
            return 0
    else:
        resolve(parser.commands["train"], args, DEFAULTS, TRAIN_FLAGS)
        settings, epochs = settings_from_args(args), args.epochs
    device = args.device or DEFAULTS["device"]
    _check_device(device)
    dist = _data_parallel(args, settings)
    if dist is not None:
        # rank 0 alone decides (and later locks) the run folder, and alone prints
        out = dist.group.comm.bcast(run_folder(args, DEFAULTS["out"]) if dist.rank == 0 else None, root=0)
        if dist.rank != 0:
            say = lambda *a, **k: None      # noqa: E731
    else:
        out = run_folder(args, DEFAULTS["out"])
    if args.resume:
        say(f"resuming {args.resume} (epoch {meta['epoch']}) to epoch {epochs} in {out}, with its settings: "
            + ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
    else:
        say(f"run folder: {out}", flush=True)
    t0 = time.perf_counter()
    try:
        history = run_training(settings, out, epochs, device=device, resume=args.resume, progress=args.progress,
                               overwrite=args.overwrite, distributed=dist)
    except (KeyboardInterrupt, *_library_errors()):
        raise
    except BaseException:
        if dist is None:
            raise
        # an unexpected error on one rank alone would leave the others waiting in a collective forever
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        dist.group.comm.Abort(1)
    last = history[-1]
    say(f"done in {time.perf_counter() - t0:.1f} s: test accuracy {last['test_acc']:.3f} "
        f"(chance {1 / 10:.2f}); metrics in {out}/metrics.csv, curves in {out}/curves.png, "
        f"checkpoint {out}/checkpoint.npz")
    return 0


def cmd_summary(args, parser):
    import minixception as mx
    resolve(parser.commands["summary"], args, DEFAULTS, SUMMARY_FLAGS)
    full = args.model in ("xception", "inceptionv3")
    size = args.input_size or (299 if full else 32)
    classes = args.classes or (1000 if full else 10)
    settings = dict(model=args.model, width=args.width, middle_blocks=args.middle_blocks, seed=0,
                    fc_layers=args.fc_layers)
    model = build_model(settings, num_classes=classes, input_shape=(size, size, 3))
    mx.summary(model, (size, size, 3))          # prints the table
    return 0


def _library_errors():
    """What the package raises for bad files, settings, data, devices: reported in one line."""
    from .data import ChecksumError, DatasetUnavailable
    from .models.keras_weights import WeightsUnavailableError
    from .runfolder import RunFolderError
    # CheckpointError, SettingsError and WeightFileError are ValueErrors; NonFiniteLoss a FloatingPointError
    return (CommandError, ValueError, OSError, FloatingPointError, RunFolderError, DatasetUnavailable,
            ChecksumError, WeightsUnavailableError)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .ablate import cmd_ablate
    from .compare import cmd_compare
    command = {"train": cmd_train, "summary": cmd_summary, "ablate": cmd_ablate,
               "compare": lambda a, p: cmd_compare(a)}[args.command]
    try:
        return command(args, parser)
    except KeyboardInterrupt as exc:
        print(f"\n{exc}" if str(exc) else "\ninterrupted", file=sys.stderr)
        return 130
    except _library_errors() as exc:
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
