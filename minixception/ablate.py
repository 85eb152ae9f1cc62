"""The paper's ablations in miniature (Figures 9 and 10), compared fairly, on the mini model.

Four variants of the same network:

    residual + intermediate none   (the reference; it appears in both panels)
    residual + intermediate relu
    residual + intermediate elu
    no residual + intermediate none

Figure 9 of the paper: without residual connections convergence is slower and worse.
Figure 10: no activation between depthwise and pointwise convolution beats ELU, which
beats ReLU.

A fair comparison (``fair_comparison``) trains every variant at every rate of a grid with
several seeds and judges it at its own rate, the one with the best mean accuracy on validation
images; an ordering counts only if every seed agrees (``holds_for_every_seed``). ``python -m minixception ablate`` runs it
(``run_ablation``) and writes into ``OUT``:

    ablation.csv   one row per trial and epoch (fit's columns, its "lr" renamed "epoch_lr"; "test_*"
                   there are measured on the validation images when there are any, else on the
                   test images)
    summary.csv    one row per trial: validation and test accuracy after recomputing batch norm's
                   statistics for the final weights, and whether the trial is at its variant's
                   chosen rate
    ablation.png   plot_fair_comparison's two rows, Figure 9 and Figure 10
    <variant>/lr<lr>-seed<s>/   each trial's run folder (metrics.csv, curves.png, checkpoint.npz)

Without ``--out`` each ablation gets a fresh folder (``runs/ablation``, ``runs/ablation-2``,
...); an ``--out`` that holds an ablation is refused unless ``--overwrite``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VARIANTS = (  # name, residual, intermediate
    ("residual_none", True, "none"),
    ("residual_relu", True, "relu"),
    ("residual_elu", True, "elu"),
    ("plain_none", False, "none"),
)

# the plot's rows: the paper's two figures, each comparing against residual_none
PANELS = (("Fig. 9: residual connections", ("residual_none", "plain_none")),
          ("Fig. 10: activation between depthwise and pointwise",
           ("residual_none", "residual_elu", "residual_relu")))

ABLATE_DEFAULTS = dict(epochs=4, subset=2000, width=0.5, middle_blocks=4, out="runs/ablation",
                       lr_grid=None, seeds=1, val=None)
ABLATE_FLAGS = ("data", "epochs", "subset", "width", "middle_blocks", "batch_size", "lr", "lr_grid", "seeds",
                "val", "momentum", "weight_decay", "schedule", "bn_momentum", "augment", "device", "seed", "out",
                "overwrite", "progress", "debug")
SUMMARY_FIELDS = ("variant", "lr", "seed", "val_acc", "test_acc", "test_loss", "train_loss", "seconds", "chosen")


def _defaults():
    from .runs import DEFAULTS
    return {**DEFAULTS, **ABLATE_DEFAULTS}


def add_ablate_args(p):
    """The ablation's flags: the training flags it shares (defined once, in the CLI) and ``--variants``."""
    from .cli import add_flags
    add_flags(p, ABLATE_FLAGS, _defaults())
    p.add_argument("--variants", default=",".join(v[0] for v in VARIANTS),
                   help="comma-separated subset of the runs (default: all four)")


def training_images(args):
    """How many training images ``--data`` with ``--subset`` gives (before holding out ``--val``)."""
    from .runs import DATA_SIZES
    return args.subset if args.subset is not None else DATA_SIZES[args.data]


def check_protocol(p, args):
    """Complete and check the protocol's flags (after ``cli.resolve``); refusals go through ``p.error``.

    Sets ``args.lr_grid`` (default: ``[--lr]``), ``args.seed_list`` (seed, seed+1, ...) and
    ``args.val`` (default 0 with one rate; with several, a fifth of the training images).
    Returns a line to print when the validation images were chosen here, else None.
    """
    grid = args.lr_grid or [args.lr]
    names = [f"{lr:g}" for lr in grid]          # as the trial folders spell them
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        p.error(f"argument --lr-grid: each rate once (to 6 significant digits), got {', '.join(twice)} "
                "more than once")
    n = training_images(args)
    note = None
    if args.val is None:
        args.val = n // 5 if len(grid) > 1 else 0
        if args.val:
            note = (f"--val not given: holding out the last {args.val} of the {n} training images as "
                    f"validation images, to choose among {len(grid)} learning rates")
    elif args.val == 0 and len(grid) > 1:
        p.error(f"argument --val: choosing among {len(grid)} learning rates needs validation images; "
                "--val 0 holds out none")
    if n - args.val < args.batch_size:
        p.error(f"argument --val: holding out {args.val} of the {n} training images leaves {n - args.val}, "
                f"less than one batch (--batch-size {args.batch_size})")
    args.lr_grid = grid
    args.seed_list = [args.seed + i for i in range(args.seeds)]
    return note


def _variants(args):
    """--variants -> {name: dict(residual=, intermediate=)} in the order given."""
    known = {v[0]: v for v in VARIANTS}
    wanted = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    bad = [v for v in wanted if v not in known]
    if not wanted:
        raise ValueError(f"--variants: expected some of {list(known)}, got none")
    if bad:
        raise ValueError(f"--variants: unknown ablation variant(s) {bad}: expected some of {list(known)}")
    return {name: dict(residual=known[name][1], intermediate=known[name][2]) for name in wanted}


def ablation_in(out):
    """What in ``out`` belongs to an ablation (its CSV files, trial folders holding runs) -> [names]."""
    from .runfolder import holds_run
    out = Path(out)
    taken = [n for n in ("ablation.csv", "summary.csv") if (out / n).is_file()]
    for name, _, _ in VARIANTS:
        folder = out / name
        if holds_run(folder):                                  # the single-run layout of older versions
            taken.append(name)
        elif folder.is_dir() and any(holds_run(t) for t in folder.iterdir() if t.is_dir()):
            taken.append(name)
    return taken


def clear_ablation(out):
    """Remove the ablation in ``out`` (for ``--overwrite``): its CSV files and figure, and each trial
    folder's run files (a trial another process is writing is refused, as ``claim`` refuses it);
    trial folders left empty are removed too, anything else in them is kept."""
    from .runfolder import claim, holds_run
    out = Path(out)
    for name, _, _ in VARIANTS:
        folder = out / name
        trials = [t for t in sorted(folder.iterdir()) if t.is_dir() and holds_run(t)] if folder.is_dir() else []
        for t in trials + ([folder] if holds_run(folder) else []):
            with claim(t, overwrite=True):
                pass
            if t != folder and not any(t.iterdir()):
                t.rmdir()
    for n in ("ablation.csv", "summary.csv", "ablation.png"):      # last: a refusal above leaves them
        (out / n).unlink(missing_ok=True)


def split_validation(data, val):
    """The last ``val`` training images become validation images -> fair_comparison's data dict."""
    n = len(data["x_train"]) - val
    return dict(x_train=data["x_train"][:n], y_train=data["y_train"][:n],
                x_val=data["x_train"][n:], y_val=data["y_train"][n:],
                x_test=data["x_test"], y_test=data["y_test"])


def run_ablation(args):
    """Run the fair comparison the flags describe -> [Trial]; writes the CSV files and the figure.

    ``args``: resolved flags (``cli.resolve``, then ``check_protocol``). Each trial is a run folder
    ``OUT/<variant>/lr<lr>-seed<s>``; an ``OUT`` that already holds an ablation is refused unless
    ``args.overwrite``, which removes that ablation first (``clear_ablation``).
    """
    from .data import load_dataset
    from .runfolder import RunFolderError, check_writable
    from .runs import build_model
    out = Path(args.out)
    variants = _variants(args)
    check_writable(out)
    taken = ablation_in(out)
    if taken and not args.overwrite:
        raise RunFolderError(f"{out} already holds an ablation ({', '.join(taken)}); replace it with "
                             "--overwrite, or choose another --out")
    if taken:
        clear_ablation(out)         # no trial of the old ablation is left to be mistaken for the new one's
    loaded = load_dataset(args.data, args.subset, seed=args.seed)
    data = split_validation(loaded, args.val)
    shape, classes = data["x_train"].shape[1:], len(loaded["classes"])

    def build(kw, seed):
        settings = dict(model="mini", width=args.width, middle_blocks=args.middle_blocks, dropout=0.0,
                        bn_momentum=args.bn_momentum, seed=seed, **kw)
        return build_model(settings, num_classes=classes, input_shape=shape)

    print(f"{len(variants)} variant(s) x {len(args.lr_grid)} rate(s) with seed {args.seed_list[0]}, then "
          f"{len(args.seed_list) - 1} more seed(s) at each variant's chosen rate; {len(data['x_train'])} training, "
          f"{len(data['x_val'])} validation, {len(data['x_test'])} test images", flush=True)
    trials = fair_comparison(variants, data, build, grid=args.lr_grid, seeds=args.seed_list, epochs=args.epochs,
                             batch_size=args.batch_size, momentum=args.momentum, weight_decay=args.weight_decay,
                             schedule=args.schedule, augment=args.augment, device=args.device, out=out,
                             progress=args.progress, log=lambda line: print(line, flush=True))
    write_ablation_csv(out / "ablation.csv", trials)
    write_summary_csv(out / "summary.csv", trials)
    ran = [(title, [n for n in names if n in variants]) for title, names in PANELS]
    plot_fair_comparison(trials, [(t, names) for t, names in ran if names], path=out / "ablation.png")
    return trials


def write_ablation_csv(path, trials):
    """One row per trial and epoch: variant, residual, intermediate, lr (the trial's peak rate),
    seed, then fit's columns, its ``lr`` (the epoch's scheduled rate) renamed ``epoch_lr``."""
    from .train import FIELDS
    known = {v[0]: v for v in VARIANTS}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("variant", "residual", "intermediate", "lr", "seed")
                   + tuple("epoch_lr" if k == "lr" else k for k in FIELDS))
        for t in trials:
            _, residual, inter = known[t.variant]
            for r in t.history:
                w.writerow((t.variant, residual, inter, t.lr, t.seed) + tuple(r[k] for k in FIELDS))


def write_summary_csv(path, trials):
    """One row per trial (SUMMARY_FIELDS); ``chosen``: the trial is at its variant's chosen rate."""
    rates = chosen_rates(trials)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SUMMARY_FIELDS)
        for t in trials:
            w.writerow((t.variant, t.lr, t.seed, t.val_acc, t.test_acc, t.test_loss, t.history[-1]["train_loss"],
                        t.seconds, t.lr == rates[t.variant]))


def report(trials):
    """The verdict in lines: each variant's chosen rate and test accuracy over seeds, and the
    orderings every seed agrees on (test accuracy, final training loss)."""
    final, rates = final_trials(trials), chosen_rates(trials)
    n_seeds = max(len(ts) for ts in final.values())
    width = max(len(name) for name in final)
    lines = [f"chosen learning rate and test accuracy over {n_seeds} seed(s) (mean, min..max):"]
    for name, ts in final.items():
        accs = [t.test_acc for t in ts]
        lines.append(f"  {name:{width}s}  lr {rates[name]:<8g} test acc {np.mean(accs):.3f} "
                     f"({min(accs):.3f}..{max(accs):.3f})")
    lines.append("orderings that hold for every seed" + (" (one seed: no evidence of a difference)"
                                                         if n_seeds == 1 else "") + ":")
    for label, metric, higher, sign in (("test accuracy", "test_acc", True, ">"),
                                        ("final training loss", "train_loss", False, "<")):
        pairs = holds_for_every_seed(trials, metric, higher_is_better=higher)
        said = ", ".join(f"{a} {sign} {b}" for a, b in pairs) or "none"
        lines.append(f"  {label + ':':21s} {said}")
    return lines


# -- a fair comparison: every variant gets its own learning rate and several seeds ----------------

@dataclass
class Trial:
    """One training run of a fair comparison."""
    variant: str
    lr: float
    seed: int               # weights drawn with rng=seed, data order and augmentation with seed=seed
    history: list           # fit's per-epoch rows; "test_*" columns are on the validation images
                            # (on the test images when there are no validation images)
    val_acc: float          # after recomputing batch norm's statistics for the final weights (nan: no
                            # validation images)
    test_acc: float         # likewise, on the test images
    test_loss: float
    seconds: float


def fair_comparison(variants, data, build, *, grid, seeds, epochs, batch_size=64, momentum=0.9,
                    weight_decay=1e-5, schedule="cosine", augment=True, device="cpu", out=None,
                    progress=False, log=print):
    """Compare model variants fairly: each at its own learning rate, over several seeds -> [Trial].

    Every variant is trained at every learning rate of ``grid`` with every seed of ``seeds``.
    Per variant, the rate with the best *mean* validation accuracy over the seeds is its rate
    (``chosen_rates``; ties: the first in ``grid``), and the variant is judged by its runs at that
    rate on the *test* images, which chose nothing. Choosing on the mean over seeds, not on one
    seed, matters: a rate at the edge of stability can win on one seed and diverge on the next.

    One variant's rate is never imposed on another (a rate tuned for one architecture can be
    "uncharitable" to the next), and a difference counts only if the seeds agree on it
    (``holds_for_every_seed``). Seed ``s`` gives every variant the same data order and
    augmentation, so the runs of one seed form a paired comparison.

    variants: {name: keyword arguments for ``build``}; build(kwargs, seed) -> a fresh model.
    data: dict x_train, y_train, x_val, y_val, x_test, y_test (host uint8 images, int labels);
      the validation images choose the rates, the test images are only reported. With one rate
      the validation images may be empty: val_acc is then nan, and the per-epoch rows of the
      history are measured on the test images instead.
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
    has_val = len(data["x_val"]) > 0
    if len(grid) > 1 and not has_val:
        raise ValueError("fair_comparison: tuning a learning rate needs validation images (x_val is empty)")
    names = [f"{lr:g}" for lr in grid]
    if len(set(names)) < len(names):
        raise ValueError(f"fair_comparison: the grid holds a rate twice (to 6 significant digits, as the run "
                         f"folders name them): {grid}")
    # fit measures every epoch on its "test" images: the validation images here, so that the test
    # images stay unseen until the end; with none, the test images (nothing is chosen on them then)
    watch = ("x_val", "y_val") if has_val else ("x_test", "y_test")
    fit_data = dict(x_train=data["x_train"], y_train=data["y_train"], x_test=data[watch[0]], y_test=data[watch[1]])
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
        val = (evaluate(model, model_input(data["x_val"]), model_input(data["y_val"]), 256, mean, std)[1]
               if has_val else math.nan)
        test_loss, test = evaluate(model, model_input(data["x_test"]), model_input(data["y_test"]), 256, mean, std)
        trial = Trial(name, lr, seed, hist, val, test, test_loss, time.perf_counter() - t0)
        log(f"{name:40s} lr {lr:<7g} seed {seed}: train loss {hist[-1]['train_loss']:.3f}, "
            f"val acc {val:.3f}, test acc {test:.3f} ({trial.seconds:.0f} s)")
        return trial

    def model_input(a):
        from .backend import to_device
        return to_device(a, device)

    return [run(name, lr, seed) for name in variants for lr in grid for seed in seeds]


def chosen_rates(trials):
    """{variant: its learning rate} -- the rate with the best mean validation accuracy over the
    seeds (ties, or no validation images: the first rate the trials list)."""
    rates = {}
    for name in dict.fromkeys(t.variant for t in trials):
        per_lr = {}
        for t in trials:
            if t.variant == name:
                per_lr.setdefault(t.lr, []).append(t.val_acc)
        score = {lr: (np.mean(v) if not np.isnan(v).any() else -np.inf) for lr, v in per_lr.items()}
        rates[name] = max(per_lr, key=lambda lr: score[lr])       # max keeps the first of equals
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

    * the tuning: validation accuracy at each learning rate of the grid, the mean over seeds
      (band: min..max), the chosen rate circled;
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
            lrs = sorted({t.lr for t in trials if t.variant == name})
            vals = [[t.val_acc for t in trials if t.variant == name and t.lr == lr] for lr in lrs]
            if not np.isnan(vals).any():             # without validation images nothing was tuned
                mean_val = [np.mean(v) for v in vals]
                ax_lr.plot(lrs, mean_val, "o-", color=color, label=name)
                ax_lr.fill_between(lrs, [min(v) for v in vals], [max(v) for v in vals], color=color, alpha=0.15)
                ax_lr.plot([rates[name]], [mean_val[lrs.index(rates[name])]], "o", ms=13, mfc="none", mec=color,
                           mew=2)
            losses = np.array([[r["train_loss"] for r in t.history] for t in final[name]])
            ep = np.arange(1, losses.shape[1] + 1)
            ax_loss.plot(ep, losses.mean(0), "-", color=color, lw=2,
                         label=f"{name} (lr {rates[name]:g}, {len(losses)} seeds)")
            ax_loss.fill_between(ep, losses.min(0), losses.max(0), color=color, alpha=0.2)
            accs = [t.test_acc for t in final[name]]
            ax_acc.barh(i, np.mean(accs), color=color, alpha=0.35)
            ax_acc.plot(accs, [i] * len(accs), "o", color=color)
        if ax_lr.lines:
            ax_lr.set_xscale("log")
            rates_tried = sorted({t.lr for t in trials if t.variant in names})
            ax_lr.set_xticks(rates_tried, [f"{lr:g}" for lr in rates_tried])
            ax_lr.minorticks_off()
        else:
            ax_lr.text(0.5, 0.5, "no validation images:\nno rate tuned", ha="center", va="center",
                       transform=ax_lr.transAxes)
        ax_lr.set_xlabel("learning rate"); ax_lr.set_ylim(0, 1)
        ax_lr.set_ylabel("validation accuracy\n(mean; band: min..max over seeds)"); ax_lr.axhline(0.1, color="gray", ls=":")
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
    from .cli import _check_device, resolve, run_folder
    p = parser.commands["ablate"]
    if args.lr is not None and args.lr_grid is not None:
        p.error("argument --lr-grid: give either --lr (one rate) or --lr-grid (rates to choose from), not both")
    resolve(p, args, _defaults(), ABLATE_FLAGS)
    note = check_protocol(p, args)
    _check_device(args.device)                  # before any folder, download or training
    args.out = run_folder(args, ABLATE_DEFAULTS["out"])
    print(f"ablation folder: {args.out}", flush=True)
    if note:
        print(note, flush=True)
    trials = run_ablation(args)
    for line in report(trials):
        print(line)
    out = Path(args.out)
    print(f"wrote {out / 'ablation.png'}, {out / 'summary.csv'} and {out / 'ablation.csv'}")
    return 0
