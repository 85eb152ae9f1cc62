"""The paper's ablations in miniature (Figures 9 and 10), on the mini model.

Five runs on the same data, seed and schedule:

    residual + intermediate none   (the reference; it appears in both panels)
    residual + intermediate relu
    residual + intermediate elu
    no residual + intermediate none

Figure 9 of the paper: without residual connections convergence is slower and worse.
Figure 10: no activation between depthwise and pointwise convolution beats ELU, which
beats ReLU. Writes ``OUT/ablation.csv`` (one row per run and epoch), ``OUT/ablation.png``
(test accuracy and training loss per epoch, the two comparisons side by side) and each
run's folder ``OUT/<variant>/`` (metrics.csv, curves.png, checkpoint.npz). Without ``--out``
each ablation gets a fresh folder (``runs/ablation``, ``runs/ablation-2``, ...); an ``--out``
that holds an ablation is refused unless ``--overwrite``.
"""
from __future__ import annotations

import csv
from pathlib import Path

VARIANTS = (  # name, residual, intermediate
    ("residual_none", True, "none"),
    ("residual_relu", True, "relu"),
    ("residual_elu", True, "elu"),
    ("plain_none", False, "none"),
)

ABLATE_DEFAULTS = dict(epochs=4, subset=2000, width=0.5, middle_blocks=4, out="runs/ablation")
ABLATE_FLAGS = ("data", "epochs", "subset", "width", "middle_blocks", "batch_size", "lr", "momentum",
                "weight_decay", "schedule", "bn_momentum", "device", "seed", "out", "overwrite", "progress",
                "debug")


def _defaults():
    from .runs import DEFAULTS
    return {**DEFAULTS, **ABLATE_DEFAULTS}


def add_ablate_args(p):
    """The ablation's flags: the training flags it shares (defined once, in the CLI) and ``--variants``."""
    from .cli import add_flags
    add_flags(p, ABLATE_FLAGS, _defaults())
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS),
                   help="comma-separated subset of the runs (default: all four)")


def run_ablation(args):
    """Train each variant -> {variant: history}; writes the CSV and the figure.

    ``args`` are resolved flags (``cli.resolve``). Each variant is a run folder ``OUT/<variant>``;
    an ``OUT`` that already holds an ablation is refused unless ``args.overwrite``.
    """
    from .runfolder import RunFolderError, check_writable, holds_run
    from .runs import run_training
    out = Path(args.out)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = {v[0]: v for v in VARIANTS}
    bad = [v for v in wanted if v not in known]
    if bad:
        raise ValueError(f"--variants: unknown ablation variant(s) {bad}: expected some of {list(known)}")
    check_writable(out)
    taken = [n for n in ("ablation.csv", *known) if (out / n).is_file() or holds_run(out / n)]
    if taken and not args.overwrite:
        raise RunFolderError(f"{out} already holds an ablation ({', '.join(taken)}); replace it with "
                             "--overwrite, or choose another --out")
    results = {}
    for name in wanted:
        _, residual, inter = known[name]
        settings = dict(data=args.data, model="mini", batch_size=args.batch_size, lr=args.lr,
                        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                        subset=args.subset, seed=args.seed, width=args.width,
                        middle_blocks=args.middle_blocks, residual=residual, intermediate=inter,
                        dropout=0.0, augment=True, bn_momentum=args.bn_momentum, title=f"ablation: {name}")
        print(f"== {name}: residual={residual}, intermediate={inter}", flush=True)
        results[name] = run_training(settings, out / name, args.epochs, device=args.device,
                                     progress=args.progress, overwrite=args.overwrite)
    write_ablation_csv(out / "ablation.csv", results)
    plot_ablation(out / "ablation.png", results)
    return results


def write_ablation_csv(path, results):
    from .train import FIELDS
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("variant", "residual", "intermediate") + FIELDS)
        for name, hist in results.items():
            _, residual, inter = dict((v[0], v) for v in VARIANTS)[name]
            for r in hist:
                w.writerow((name, residual, inter) + tuple(r[k] for k in FIELDS))


def plot_ablation(path, results):
    """Two panels as the paper's Figures 9 (residual vs not) and 10 (intermediate activation):
    test accuracy (solid) and training loss (dashed, right axis) per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("Fig. 9: residual connections", ("residual_none", "plain_none")),
              ("Fig. 10: activation between depthwise and pointwise",
               ("residual_none", "residual_elu", "residual_relu")))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (title, names) in zip(axes, panels):
        ax2 = ax.twinx()
        for i, name in enumerate(n for n in names if n in results):
            h = results[name]
            ep = [r["epoch"] for r in h]
            c = f"C{i}"
            ax.plot(ep, [r["test_acc"] for r in h], "o-", color=c, label=f"{name} (test acc)")
            ax2.plot(ep, [r["train_loss"] for r in h], "--", color=c, alpha=0.6, label=f"{name} (train loss)")
        ax.set_xlabel("epoch"); ax.set_ylabel("test accuracy"); ax.set_ylim(0, 1)
        ax2.set_ylabel("training loss (dashed)")
        ax.set_title(title); ax.grid(alpha=0.3); ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cmd_ablate(args, parser):
    from .cli import resolve, run_folder
    resolve(parser.commands["ablate"], args, _defaults(), ABLATE_FLAGS)
    args.out = run_folder(args, ABLATE_DEFAULTS["out"])
    print(f"ablation folder: {args.out}", flush=True)
    results = run_ablation(args)
    print("final test accuracy: " + ", ".join(f"{k} {v[-1]['test_acc']:.3f}" for k, v in results.items() if v))
    print(f"wrote {Path(args.out) / 'ablation.png'} and {Path(args.out) / 'ablation.csv'}")
    return 0
