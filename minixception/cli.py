"""Command line: ``python -m minixception {train,summary,ablate}`` (also the ``minixception`` script).

    python -m minixception train                      # mini Xception on the built-in shapes data, CPU
    python -m minixception train --data cifar10 --device gpu --epochs 30 --out runs/c10
    python -m minixception train --resume runs/c10/checkpoint.npz --epochs 40
    python -m minixception summary --model xception
    python -m minixception summary --model inceptionv3
    python -m minixception compare                     # Xception vs Inception V3, side by side
    python -m minixception train --polyak 0.999        # also evaluate Polyak-averaged weights
    python -m minixception ablate --out runs/ablation
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .runs import DEFAULTS, RUN_KEYS, build_model, run_training  # noqa: F401  (re-exported)


def _add_model_args(p, ablation=True):
    p.add_argument("--model", choices=["mini", "xception", "inceptionv3"], default=DEFAULTS["model"],
                   help="mini: the small Xception for 32x32 (default); xception: the full 36-layer "
                        "Xception (22.9M parameters at ImageNet size; slow on a CPU); inceptionv3: "
                        "Keras's Inception V3, the paper's baseline (23.8M parameters; needs 75x75 "
                        "inputs, so 32x32 images are upsampled to 96x96: very slow on a CPU)")
    p.add_argument("--width", type=float, default=DEFAULTS["width"],
                   help="channel multiplier of the mini model (default %(default)s)")
    p.add_argument("--middle-blocks", type=int, default=DEFAULTS["middle_blocks"],
                   help="identity middle-flow blocks of the mini model (default %(default)s; Xception: 8)")
    if ablation:
        p.add_argument("--no-residual", dest="residual", action="store_false",
                       help="drop every residual connection (the paper's Figure 9 ablation)")
        p.add_argument("--intermediate", choices=["none", "relu", "elu"], default=DEFAULTS["intermediate"],
                       help="activation between depthwise and pointwise conv (Figure 10; default none)")
        p.add_argument("--dropout", type=float, default=DEFAULTS["dropout"],
                       help="dropout rate before the classifier (the paper: 0.5 on ImageNet; default %(default)s)")
    p.add_argument("--fc-layers", type=int, nargs="+", default=list(DEFAULTS["fc_layers"]), metavar="UNITS",
                   help="fully connected + ReLU layers between the global pool and the classifier, "
                        "e.g. --fc-layers 4096 4096 (the paper's JFT models 'with FC layers'); default none")


def _add_train_args(p):
    p.add_argument("--data", choices=["shapes", "cifar10"], default=DEFAULTS["data"],
                   help="shapes: built-in generated dataset, no download (default); cifar10: the official "
                        "binary archive, downloaded once into $MINIXCEPTION_CACHE (default ~/.cache/minixception)")
    _add_model_args(p)
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs in total (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="default %(default)s")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (default %(default)s)")
    p.add_argument("--momentum", type=float, default=DEFAULTS["momentum"], help="SGD momentum (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                   help="L2 on kernels, added to the gradient (default %(default)s)")
    p.add_argument("--schedule", choices=["constant", "step", "cosine"], default=DEFAULTS["schedule"],
                   help="learning-rate schedule: constant; step = x0.94 every 2 epochs (the paper's); "
                        "cosine to 0 over --epochs (default)")
    p.add_argument("--subset", type=int, default=DEFAULTS["subset"],
                   help="train on the first N training images (test: N/5, at least 200); 0 = all "
                        "(shapes: 10000/2000, cifar10: 50000/10000). Default %(default)s")
    p.add_argument("--bn-momentum", type=float, default=DEFAULTS["bn_momentum"],
                   help="batch norm's moving-average momentum (Keras/Xception: 0.99, made for long "
                        "ImageNet runs; with a few hundred steps the moving statistics would lag far "
                        "behind and eval accuracy with them; default %(default)s)")
    p.add_argument("--polyak", type=float, default=DEFAULTS["polyak"], metavar="DECAY",
                   help="keep a Polyak (exponential moving) average of the weights with this decay, "
                        "e.g. 0.999, and evaluate each epoch with both the raw and the averaged weights "
                        "(metrics.csv columns polyak_test_loss/polyak_test_acc); default off")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random crop (4-pixel padding) / horizontal flip")
    p.add_argument("--device", choices=["cpu", "gpu"], default=DEFAULTS["device"],
                   help="cpu: NumPy; gpu: CuPy, data included (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seeds the weights, the data order and augmentation, and the shapes data")
    p.add_argument("--out", default=DEFAULTS["out"],
                   help="run folder: metrics.csv, curves.png, checkpoint.npz (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")
    p.add_argument("--dtype", choices=["float32", "float64"], default=DEFAULTS["dtype"],
                   help="the model's and the batches' float type (default %(default)s; float64 for exact "
                        "comparisons)")
    p.add_argument("--distributed", action="store_true",
                   help="synchronous data-parallel SGD over MPI, one process per CPU socket or GPU: "
                        "mpiexec -n K python -m minixception train --distributed ...; --batch-size is the "
                        "global batch, split evenly over the K ranks")
    p.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch norm uses the statistics of the whole global batch "
                        "(allreduced), so K ranks compute exactly what one process would")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minixception", description="Train and inspect Xception built by hand on NumPy / CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="{train,summary,compare,ablate}")
    sub.required = True

    p = sub.add_parser("train", help="train a model; writes OUT/metrics.csv, OUT/curves.png, OUT/checkpoint.npz",
                       description="Train with SGD (momentum, L2, LR schedule); evaluate every epoch; "
                                   "Ctrl-C saves a checkpoint that --resume continues exactly.")
    _add_train_args(p)
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue the run saved in CHECKPOINT (its settings are used; --epochs, --out, "
                        "--device and --no-progress come from this command line)")

    p = sub.add_parser("summary", help="print the per-layer table (output shape, parameters, FLOPs)")
    _add_model_args(p, ablation=False)
    p.add_argument("--input-size", type=int, default=None,
                   help="square input size (default: 299 for xception and inceptionv3, 32 for mini)")
    p.add_argument("--classes", type=int, default=None, help="default: 1000 for xception/inceptionv3, 10 for mini")

    p = sub.add_parser("compare", help="Xception vs Inception V3 side by side: parameters, mult-adds, "
                                       "measured forward and training-step time, the FC layers' cost",
                       description="Build both networks at 299x299 and print one table (the paper's Table 3 "
                                   "on this machine). Timing is a few batch-N steps on this machine's CPU "
                                   "(or GPU with --device gpu): minutes on a small CPU.")
    from .compare import add_compare_args
    add_compare_args(p)

    p = sub.add_parser("ablate", help="the paper's ablations in miniature: residual on/off, intermediate "
                                      "activation none/relu/elu; writes OUT/ablation.png and OUT/ablation.csv",
                       description="Train the mini model five times on the same data and seed: residual "
                                   "with intermediate none / relu / elu, and without residual (none); plot "
                                   "the curves side by side (the paper's Figures 9 and 10).")
    from .ablate import add_ablate_args
    add_ablate_args(p)
    return parser


def settings_from_args(args):
    s = {k: getattr(args, k) for k in RUN_KEYS}
    if s["subset"] == 0:
        s["subset"] = None
    return s


def cmd_train(args):
    if args.resume:
        from .checkpoint import read_meta
        settings = read_meta(args.resume).get("settings")
        if not settings:
            raise SystemExit(f"{args.resume}: the checkpoint holds no run settings; cannot rebuild its model")
    else:
        settings = settings_from_args(args)
    from .data import ChecksumError, DatasetUnavailable
    from .train import NonFiniteLoss
    if args.device == "gpu":                   # before any work: one line, not a traceback from deep inside
        from .backend import check_device
        try:
            check_device("gpu")
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    dist = None
    try:
        dist = _data_parallel(args, settings)
        if args.resume and (dist is None or dist.rank == 0):
            print(f"resuming {args.resume} with its settings: {json.dumps(settings)}", flush=True)
        history = run_training(settings, args.out, args.epochs, device=args.device, resume=args.resume,
                               progress=args.progress, distributed=dist)
    except (DatasetUnavailable, ChecksumError, NonFiniteLoss, DistributedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"\n{exc}" if str(exc) else "\ninterrupted", file=sys.stderr)
        return 130
    except BaseException:
        if dist is None:
            raise
        # an error on one rank alone would leave the others waiting in a collective forever
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        dist.group.comm.Abort(1)
    if history and (dist is None or dist.rank == 0):
        last = history[-1]
        print(f"done in {time.perf_counter() - t0:.1f} s: test accuracy {last['test_acc']:.3f} "
              f"(chance {1 / 10:.2f}); metrics in {args.out}/metrics.csv, curves in {args.out}/curves.png, "
              f"checkpoint {args.out}/checkpoint.npz")
    return 0


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
        dp = DataParallel(init(args.device), sync_bn=args.sync_bn)
        dp.check_batch_size(settings["batch_size"])
    except (DistributedUnavailable, ValueError) as exc:
        raise DistributedError(str(exc)) from None
    return dp


def cmd_summary(args):
    import minixception as mx
    full = args.model in ("xception", "inceptionv3")
    size = args.input_size or (299 if full else 32)
    classes = args.classes or (1000 if full else 10)
    settings = dict(model=args.model, width=args.width, middle_blocks=args.middle_blocks, seed=0,
                    fc_layers=args.fc_layers)
    model = build_model(settings, num_classes=classes, input_shape=(size, size, 3))
    mx.summary(model, (size, size, 3))          # prints the table
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "summary":
        return cmd_summary(args)
    if args.command == "compare":
        from .compare import cmd_compare
        return cmd_compare(args)
    from .ablate import cmd_ablate
    return cmd_ablate(args)


if __name__ == "__main__":
    sys.exit(main())
