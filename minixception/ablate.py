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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


# -- a fair comparison: every variant gets its own learning rate and several seeds ----------------

@dataclass
class Trial:
    """One training run of a fair comparison."""
    variant: str
    lr: float
    seed: int               # weights drawn with rng=seed, data order and augmentation with seed=seed
    history: list           # fit's per-epoch rows; "test_*" columns are on the validation images
    val_acc: float          # after recomputing batch norm's statistics for the final weights
    test_acc: float         # likewise, on the test images
    test_loss: float
    seconds: float


def fair_comparison(variants, data, build, *, grid, seeds, epochs, batch_size=64, momentum=0.9,
                    weight_decay=1e-5, schedule="cosine", augment=True, device="cpu", out=None,
                    progress=False, log=print):
    """Compare model variants fairly: a learning rate tuned per variant, then several seeds -> [Trial].

    1. Tune: train every variant at every learning rate of ``grid`` with the first seed; keep,
       per variant, the rate with the best validation accuracy (ties: the first in ``grid``).
    2. Repeat: train every variant at its own rate with each further seed.

    One variant's rate is never imposed on another (a rate tuned for one architecture can be
    "uncharitable" to the next), and a difference counts only if the seeds agree on it
    (``holds_for_every_seed``). Seed ``s`` gives every variant the same data order and
    augmentation, so the runs of one seed form a paired comparison.

    variants: {name: keyword arguments for ``build``}; build(kwargs, seed) -> a fresh model.
    data: dict x_train, y_train, x_val, y_val, x_test, y_test (host uint8 images, int labels);
      the validation images choose the rates, the test images are only reported.
    out: a folder for the run folders (``out/<variant>/lr<lr>-seed<s>``), or None for temporary ones.
    """
    import tempfile
    import time

    from .train import evaluate, fit, recompute_bn_statistics
    from .data.iterator import channel_stats
    grid, seeds = [float(v) for v in grid], [int(v) for v in seeds]
    if not grid or not seeds:
        raise ValueError(f"fair_comparison needs at least one learning rate and one seed, got grid={grid}, "
                         f"seeds={seeds}")
    missing = [k for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test") if k not in data]
    if missing:
        raise KeyError(f"fair_comparison: data lacks {missing} (expected x/y for train, val and test)")
    if len(grid) > 1 and len(data["x_val"]) == 0:
        raise ValueError("fair_comparison: tuning a learning rate needs validation images (x_val is empty)")
    fit_data = dict(x_train=data["x_train"], y_train=data["y_train"], x_test=data["x_val"], y_test=data["y_val"])
    mean, std = channel_stats(data["x_train"])

    def run(name, lr, seed):
        model = build(dict(variants[name]), seed)
        folder = (Path(out) / name / f"lr{lr:g}-seed{seed}") if out is not None else tempfile.mkdtemp(
            prefix="minixception_fair_")
        t0 = time.perf_counter()
        hist = fit(model, fit_data, folder, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, schedule=schedule, augment=augment, device=device, seed=seed,
                   progress=progress,
                   verbose=False, overwrite=out is not None)
        recompute_bn_statistics(model, model_input(data["x_train"]), model_input(data["y_train"]), 128, mean, std)
        val = evaluate(model, model_input(data["x_val"]), model_input(data["y_val"]), 256, mean, std)[1]
        test_loss, test = evaluate(model, model_input(data["x_test"]), model_input(data["y_test"]), 256, mean, std)
        trial = Trial(name, lr, seed, hist, val, test, test_loss, time.perf_counter() - t0)
        log(f"{name:40s} lr {lr:<7g} seed {seed}: train loss {hist[-1]['train_loss']:.3f}, "
            f"val acc {val:.3f}, test acc {test:.3f} ({trial.seconds:.0f} s)")
        return trial

    def model_input(a):
        from .backend import to_device
        return to_device(a, device)

    trials = []
    for name in variants:
        tuned = [run(name, lr, seeds[0]) for lr in grid]
        trials += tuned
        best = max(tuned, key=lambda t: t.val_acc).lr            # max keeps the first of equals
        trials += [run(name, best, s) for s in seeds[1:]]
    return trials


def chosen_rates(trials):
    """{variant: the learning rate it was repeated at} -- the one with more than the tuning seed's run,
    or (one seed only) the tuning run with the best validation accuracy."""
    rates = {}
    for name in dict.fromkeys(t.variant for t in trials):
        mine = [t for t in trials if t.variant == name]
        per_lr = {}
        for t in mine:
            per_lr.setdefault(t.lr, []).append(t)
        rates[name] = max(per_lr, key=lambda lr: (len(per_lr[lr]), max(t.val_acc for t in per_lr[lr])))
    return rates


def final_trials(trials):
    """{variant: [Trial per seed]} at each variant's chosen rate, in seed order."""
    rates = chosen_rates(trials)
    return {name: sorted((t for t in trials if t.variant == name and t.lr == lr), key=lambda t: t.seed)
            for name, lr in rates.items()}


def holds_for_every_seed(trials, metric="test_acc", higher_is_better=True):
    """[(a, b)]: variant a beat variant b on ``metric`` for every seed (paired by seed), each at its rate."""
    final = final_trials(trials)
    value = {name: {t.seed: getattr(t, metric) if hasattr(t, metric) else t.history[-1][metric] for t in ts}
             for name, ts in final.items()}
    pairs = []
    for a in final:
        for b in final:
            common = sorted(set(value[a]) & set(value[b]))
            if a == b or not common:
                continue
            better = [(value[a][s] > value[b][s]) if higher_is_better else (value[a][s] < value[b][s]) for s in common]
            if all(better):
                pairs.append((a, b))
    return pairs


def plot_fair_comparison(trials, panels, path=None):
    """One row per panel ``(title, [variant, ...])``, three plots per row -> the figure (saved to
    ``path`` and closed when given):

    * the tuning: validation accuracy at each learning rate of the grid (first seed), the chosen
      rate circled;
    * training loss per epoch at each variant's rate: the mean over seeds, the band from the best
      to the worst seed;
    * test accuracy at the end: one dot per seed, a bar at the mean.
    """
    import matplotlib.pyplot as plt

    final, rates = final_trials(trials), chosen_rates(trials)
    fig, axes = plt.subplots(len(panels), 3, figsize=(15, 3.9 * len(panels)), squeeze=False,
                             gridspec_kw={"width_ratios": [0.8, 1, 0.9]})
    for row, (title, names) in zip(axes, panels):
        ax_lr, ax_loss, ax_acc = row
        for i, name in enumerate(names):
            color = f"C{i}"
            first = final[name][0].seed
            sweep = sorted((t for t in trials if t.variant == name and t.seed == first), key=lambda t: t.lr)
            ax_lr.plot([t.lr for t in sweep], [t.val_acc for t in sweep], "o-", color=color, label=name)
            best = next(t for t in sweep if t.lr == rates[name])
            ax_lr.plot([best.lr], [best.val_acc], "o", ms=13, mfc="none", mec=color, mew=2)
            losses = np.array([[r["train_loss"] for r in t.history] for t in final[name]])
            ep = np.arange(1, losses.shape[1] + 1)
            ax_loss.plot(ep, losses.mean(0), "-", color=color, lw=2,
                         label=f"{name} (lr {rates[name]:g}, {len(losses)} seeds)")
            ax_loss.fill_between(ep, losses.min(0), losses.max(0), color=color, alpha=0.2)
            accs = [t.test_acc for t in final[name]]
            ax_acc.barh(i, np.mean(accs), color=color, alpha=0.35)
            ax_acc.plot(accs, [i] * len(accs), "o", color=color)
        ax_lr.set_xscale("log"); ax_lr.set_xlabel("learning rate"); ax_lr.set_ylim(0, 1)
        ax_lr.set_ylabel("validation accuracy\n(tuning seed)"); ax_lr.axhline(0.1, color="gray", ls=":")
        ax_loss.set_xlabel("epoch"); ax_loss.set_ylabel("training loss\n(mean; band: min..max over seeds)")
        ax_loss.legend(fontsize=8); ax_loss.set_title(title)
        ax_acc.set_yticks(range(len(names))); ax_acc.set_yticklabels([n.replace(" ", "\n", 1) for n in names],
                                                                     fontsize=8)
        ax_acc.invert_yaxis(); ax_acc.set_xlim(0, 1); ax_acc.axvline(0.1, color="gray", ls=":")
        ax_acc.set_xlabel("test accuracy at the end (dots: seeds; bar: mean)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=90)
        plt.close(fig)
    return fig


def cmd_ablate(args, parser):
    from .cli import resolve, run_folder
    resolve(parser.commands["ablate"], args, _defaults(), ABLATE_FLAGS)
    args.out = run_folder(args, ABLATE_DEFAULTS["out"])
    print(f"ablation folder: {args.out}", flush=True)
    results = run_ablation(args)
    print("final test accuracy: " + ", ".join(f"{k} {v[-1]['test_acc']:.3f}" for k, v in results.items() if v))
    print(f"wrote {Path(args.out) / 'ablation.png'} and {Path(args.out) / 'ablation.csv'}")
    return 0
