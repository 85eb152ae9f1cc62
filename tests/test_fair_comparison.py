"""The fair-comparison protocol of the ablations: a learning rate per variant, several seeds, and
only the orderings every seed agrees on."""
import numpy as np
import pytest

import minixception as mx
from minixception.ablate import Trial, chosen_rates, fair_comparison, final_trials, holds_for_every_seed
from helpers import tiny_model


def _trial(variant, lr, seed, val, test):
    return Trial(variant, lr, seed, [{"train_loss": 1.0 - test}], val, test, 1.0, 0.0)


def test_chosen_rates_follow_the_best_mean_validation_accuracy_over_seeds():
    # a: 0.1 wins on seed 0 (0.7 vs 0.5) but diverges on seed 1: its mean loses to 0.01's
    trials = [_trial("a", 0.01, 0, 0.5, 0.5), _trial("a", 0.01, 1, 0.5, 0.55),
              _trial("a", 0.1, 0, 0.7, 0.6), _trial("a", 0.1, 1, 0.2, 0.3),
              _trial("b", 0.01, 0, 0.6, 0.6), _trial("b", 0.01, 1, 0.5, 0.5),
              _trial("b", 0.1, 0, 0.4, 0.4), _trial("b", 0.1, 1, 0.8, 0.7)]
    assert chosen_rates(trials) == {"a": 0.01, "b": 0.1}
    final = final_trials(trials)
    assert [(t.lr, t.seed) for t in final["a"]] == [(0.01, 0), (0.01, 1)]
    assert [(t.lr, t.seed) for t in final["b"]] == [(0.1, 0), (0.1, 1)]
    # one seed: that seed decides; equal means: the first rate listed
    assert chosen_rates([t for t in trials if t.seed == 0]) == {"a": 0.1, "b": 0.01}
    assert chosen_rates([_trial("c", 0.2, 0, 0.5, 0.5), _trial("c", 0.02, 0, 0.5, 0.1)]) == {"c": 0.2}


def test_an_ordering_holds_only_if_every_seed_agrees():
    trials = []
    for s, (a, b, c) in enumerate([(0.9, 0.5, 0.4), (0.8, 0.6, 0.7), (0.7, 0.3, 0.2)]):
        trials += [_trial("a", 0.1, s, a, a), _trial("b", 0.1, s, b, b), _trial("c", 0.1, s, c, c)]
    pairs = holds_for_every_seed(trials)
    assert set(pairs) == {("a", "b"), ("a", "c")}          # b vs c flips at seed 1: not an ordering
    # a metric from the last history row, lower is better: train_loss = 1 - test here
    assert set(holds_for_every_seed(trials, "train_loss", higher_is_better=False)) == set(pairs)


def test_report_gives_the_chosen_rates_and_the_orderings_every_seed_agrees_on():
    from minixception.ablate import report
    trials = []
    for name, accs, losses in (("a", (0.8, 0.7), (0.2, 0.3)), ("b", (0.5, 0.75), (0.4, 0.35)),
                               ("c", (0.1, 0.2), (0.9, 0.1))):
        trials.append(Trial(name, 0.3, 0, [{"train_loss": 5.0}], 0.0, 0.0, 1.0, 0.0))     # a rate not chosen
        trials += [Trial(name, 0.1, s, [{"train_loss": 5.0}, {"train_loss": loss}], 0.5, acc, 1.0, 0.0)
                   for s, (acc, loss) in enumerate(zip(accs, losses))]
    lines = [" ".join(line.split()) for line in report(trials)]
    assert "a lr 0.1 test acc 0.750 (0.700..0.800)" in lines and "c lr 0.1 test acc 0.150 (0.100..0.200)" in lines
    assert lines[-2:] == ["test accuracy: a > c, b > c",         # a vs b flips at seed 1
                          "final training loss: a < b"]          # the last epoch's loss; c flips against both


def _data(n_train=48, n_val=32, n_test=32):
    x, y, xt, yt = mx.data.load_shapes(n_train + n_val, n_test, seed=0)
    return dict(x_train=x[:n_train], y_train=y[:n_train], x_val=x[n_train:], y_val=y[n_train:],
                x_test=xt, y_test=yt)


def test_fair_comparison_runs_every_rate_with_every_seed_and_judges_at_the_best_mean(tmp_path):
    built = []

    def build(kw, seed):
        built.append((kw["width"], seed))
        return tiny_model(seed, width=kw["width"])

    lines = []
    trials = fair_comparison({"narrow": dict(width=2), "wide": dict(width=4)}, _data(), build,
                             grid=(0.001, 0.05), seeds=(3, 4), epochs=1, batch_size=16,
                             out=tmp_path, log=lines.append)
    assert len(trials) == len(lines) == 2 * 2 * 2             # variants x rates x seeds
    assert built == [(2, 3), (2, 4), (2, 3), (2, 4), (4, 3), (4, 4), (4, 3), (4, 4)]
    assert [(t.variant, t.lr, t.seed) for t in trials[:4]] == [
        ("narrow", 0.001, 3), ("narrow", 0.001, 4), ("narrow", 0.05, 3), ("narrow", 0.05, 4)]
    for name in ("narrow", "wide"):
        mean = {lr: np.mean([t.val_acc for t in trials if t.variant == name and t.lr == lr]) for lr in (0.001, 0.05)}
        best = 0.05 if mean[0.05] > mean[0.001] else 0.001
        assert chosen_rates(trials)[name] == best
        assert [(t.lr, t.seed) for t in final_trials(trials)[name]] == [(best, 3), (best, 4)]
        for lr in (0.001, 0.05):
            assert (tmp_path / name / f"lr{lr:g}-seed4" / "checkpoint.npz").is_file()
    for t in trials:
        assert 0.0 <= t.val_acc <= 1.0 and 0.0 <= t.test_acc <= 1.0 and np.isfinite(t.test_loss)
        assert len(t.history) == 1 and t.seconds > 0


def test_fair_comparison_evaluates_with_recomputed_statistics(tmp_path):
    """The reported accuracies are the final weights' with batch norm statistics recomputed."""
    from minixception.data.iterator import channel_stats
    from minixception.train import evaluate, recompute_bn_statistics
    data = _data()
    models = []

    def build(kw, seed):
        models.append(tiny_model(seed))
        return models[-1]

    (trial,) = fair_comparison({"only": {}}, data, build, grid=(0.05,), seeds=(0,), epochs=1, batch_size=16,
                               log=lambda s: None)
    mean, std = channel_stats(data["x_train"])
    model = models[0]
    assert trial.test_acc == evaluate(model, data["x_test"], data["y_test"], 256, mean, std)[1]
    stats = {k: v.copy() for k, v in model.state_dict().items() if "moving" in k}
    recompute_bn_statistics(model, data["x_train"], data["y_train"], 128, mean, std)
    for k, v in stats.items():                                    # already recomputed: a fixed point
        np.testing.assert_allclose(model.state_dict()[k], v, rtol=1e-6, err_msg=k)


def test_recompute_bn_statistics_is_the_mean_of_the_batch_statistics():
    from minixception.data.iterator import BatchIterator, channel_stats
    from minixception.train import recompute_bn_statistics
    data = _data()
    model = tiny_model(0)
    bn = model[1]
    mean, std = channel_stats(data["x_train"])
    before = {k: v.copy() for k, v in model.state_dict().items() if "moving" not in k}
    recompute_bn_statistics(model, data["x_train"], data["y_train"], 16, mean, std, rng=1)
    conv = model[0]
    means, variances = [], []
    with mx.nn.inference_mode():
        for xb, _ in BatchIterator(data["x_train"], data["y_train"], 16, mean, std, shuffle=True, rng=1):
            h = conv(xb).astype(np.float64)
            means.append(h.mean(axis=(0, 1, 2)))
            variances.append(h.var(axis=(0, 1, 2)))
    np.testing.assert_allclose(bn.moving_mean, np.mean(means, 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance, np.mean(variances, 0), rtol=1e-3)
    assert bn.momentum == 0.99 and model.training                  # restored
    for k, v in before.items():                                     # no weight touched
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)


@pytest.mark.parametrize("kwargs, message", [
    (dict(grid=(), seeds=(0,)), "at least one learning rate"),
    (dict(grid=(0.1,), seeds=()), "at least one learning rate"),
])
def test_fair_comparison_refuses_an_empty_grid_or_no_seeds(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fair_comparison({"a": {}}, _data(), lambda kw, s: tiny_model(s), epochs=1, **kwargs)


def test_fair_comparison_needs_validation_images_to_tune():
    data = _data()
    with pytest.raises(KeyError, match="x_val"):
        fair_comparison({"a": {}}, {k: v for k, v in data.items() if k != "x_val"}, lambda kw, s: tiny_model(s),
                        grid=(0.1,), seeds=(0,), epochs=1)
    data["x_val"], data["y_val"] = data["x_val"][:0], data["y_val"][:0]
    with pytest.raises(ValueError, match="validation images"):
        fair_comparison({"a": {}}, data, lambda kw, s: tiny_model(s), grid=(0.1, 0.2), seeds=(0,), epochs=1)


def test_fair_comparison_without_validation_images(monkeypatch):
    """One rate needs no validation images: val_acc is nan, and fit watches the test images."""
    import math
    import minixception.train as train
    data = _data()
    data["x_val"], data["y_val"] = data["x_val"][:0], data["y_val"][:0]
    watched = []
    real_fit = train.fit

    def fit(model, fit_data, out, **kw):
        watched.append(fit_data["x_test"])
        return real_fit(model, fit_data, out, **kw)
    monkeypatch.setattr(train, "fit", fit)
    (trial,) = fair_comparison({"a": {}}, data, lambda kw, s: tiny_model(s), grid=(0.05,), seeds=(0,), epochs=1,
                               batch_size=16, log=lambda s: None)
    assert math.isnan(trial.val_acc) and 0.0 <= trial.test_acc <= 1.0 and np.isfinite(trial.test_loss)
    assert len(watched) == 1 and watched[0] is data["x_test"]
    assert chosen_rates([trial]) == {"a": 0.05}


def test_fair_comparison_refuses_a_rate_twice():
    # 0.1 and 0.1000000001 would share the run folder lr0.1-seed0
    with pytest.raises(ValueError, match="twice"):
        fair_comparison({"a": {}}, _data(), lambda kw, s: tiny_model(s), grid=(0.1, 0.2, 0.1000000001),
                        seeds=(0,), epochs=1)


def test_plot_fair_comparison_draws_every_variant(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from minixception.ablate import plot_fair_comparison
    trials = []
    for name, base in (("a", 0.8), ("b", 0.5)):
        for lr in (0.01, 0.1):                 # 0.01 has the better validation accuracy on every seed
            trials += [Trial(name, lr, s, [{"train_loss": 2.0}, {"train_loss": 1.0 + s / 10 + (lr > 0.05)}],
                             base - lr - s / 100, base - s / 10 if lr < 0.05 else 0.0, 1.0, 0.0) for s in (0, 1, 2)]
    fig = plot_fair_comparison(trials, [("both", ["a", "b"]), ("one", ["b"])], path=tmp_path / "fair.png")
    assert (tmp_path / "fair.png").stat().st_size > 10_000
    ax_lr, ax_loss, ax_acc = fig.axes[:3]
    assert len(ax_lr.lines) >= 4                                   # a sweep and a circle per variant
    band = ax_loss.collections[0].get_paths()[0].vertices          # variant a: min..max over its 3 seeds
    assert np.isclose(band[:, 1].max(), 2.0) and np.isclose(band[:, 1].min(), 1.0)
    tuning_band = ax_lr.collections[0].get_paths()[0].vertices     # variant a: val acc over seeds, per rate
    assert np.isclose(tuning_band[:, 1].max(), 0.79) and np.isclose(tuning_band[:, 1].min(), 0.68)
    assert [tuple(np.round(line.get_xdata(), 3)) for line in ax_acc.lines][:2] == [(0.8, 0.7, 0.6), (0.5, 0.4, 0.3)]
