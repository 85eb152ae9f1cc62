"""The trainer: it learns, it resumes exactly, it stops on NaN, it writes its files."""
import csv

import numpy as np
import pytest

import minixception as mx
from minixception.train import NonFiniteLoss, fit, read_metrics

from helpers import params_of, tiny_data, tiny_model


FAST = dict(batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, progress=False)


def test_training_reduces_the_loss_on_a_tiny_subset(tmp_path):
    """Without augmentation, a few epochs on 64 images: the training loss falls well below its start."""
    data = tiny_data(64, 32)
    hist = fit(tiny_model(0, width=4), data, tmp_path, epochs=6, augment=False, schedule="constant",
               **dict(FAST, lr=0.01))
    losses = [r["train_loss"] for r in hist]
    assert losses[-1] < 0.6 * losses[0] and losses[-1] < 1.8, losses     # chance level is ln 10 = 2.30
    assert hist[-1]["train_acc"] > 0.4
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["train_loss"] == pytest.approx(losses[-1])
    with open(tmp_path / "metrics.csv") as f:
        assert next(csv.reader(f)) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                       "images_per_s", "epoch_time_s"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "checkpoint.npz").exists()


def test_resume_equals_uninterrupted_run(tmp_path):
    """2 epochs in one go == 1 epoch, then --resume for the second: bit-identical parameters."""
    data = tiny_data(48, 16)
    kw = dict(FAST, schedule="step", seed=3)    # (cosine would depend on the total epochs of each call)
    full = tiny_model(0, dropout=0.3)
    h_full = fit(full, data, tmp_path / "full", epochs=2, **kw)

    first = tiny_model(0, dropout=0.3)
    fit(first, data, tmp_path / "split", epochs=1, **kw)
    resumed = tiny_model(5, dropout=0.3)          # other initial weights: all must come from the file
    h_res = fit(resumed, data, tmp_path / "split", epochs=2, resume=tmp_path / "split" / "checkpoint.npz", **kw)
    for k, v in params_of(full).items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    assert [r["train_loss"] for r in h_res] == [r["train_loss"] for r in h_full]
    assert len(read_metrics(tmp_path / "split" / "metrics.csv")) == 2


def test_mid_epoch_interrupt_then_resume_equals_uninterrupted(tmp_path):
    """A Ctrl-C in the middle of an epoch saves a checkpoint that resumes to the same result."""
    data = tiny_data(64, 16)
    kw = dict(FAST, schedule="cosine", seed=1)
    full = tiny_model(0)
    fit(full, data, tmp_path / "full", epochs=2, **kw)

    part = tiny_model(0)
    with pytest.raises(KeyboardInterrupt, match="resume"):
        fit(part, data, tmp_path / "cut", epochs=2, interrupt_after_steps=6, **kw)   # 4 steps/epoch
    meta = mx.checkpoint.read_meta(tmp_path / "cut" / "checkpoint.npz")
    assert (meta["epoch"], meta["step"]) == (1, 2)
    resumed = tiny_model(0)
    fit(resumed, data, tmp_path / "cut", epochs=2, resume=tmp_path / "cut" / "checkpoint.npz", **kw)
    for k, v in params_of(full).items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    assert read_metrics(tmp_path / "cut" / "metrics.csv") [-1]["train_loss"] == \
        read_metrics(tmp_path / "full" / "metrics.csv")[-1]["train_loss"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # overflow on the way to NaN is the point
def test_nan_loss_stops_with_a_clear_message(tmp_path):
    data = tiny_data(32, 16)
    model = tiny_model(0)
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf).*--lr"):
        fit(model, data, tmp_path, epochs=2, batch_size=16, lr=1e30, momentum=0.9, progress=False)
    assert not (tmp_path / "checkpoint.npz").exists()           # nothing broken was saved


def test_labels_out_of_range_refused(tmp_path):
    data = tiny_data(32, 16)
    data["y_train"] = data["y_train"] + 5
    with pytest.raises(ValueError, match="labels must lie in"):
        fit(tiny_model(0), data, tmp_path, epochs=1, progress=False)


def test_progress_bar_runs(tmp_path, capsys):
    fit(tiny_model(0), tiny_data(32, 16), tmp_path, epochs=1, batch_size=16, progress=True)
    err = capsys.readouterr()
    assert "epoch 1/1" in err.err + err.out


def test_first_ctrl_c_is_deferred_to_a_step_boundary_second_interrupts():
    import os
    import signal
    import threading
    from minixception.train import _SigintGuard
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    with _SigintGuard() as g:
        os.kill(os.getpid(), signal.SIGINT)          # first: only a flag, the step finishes
        assert g.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)      # second: at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- nothing non-finite is saved; the run folder's files never disagree ---------------------

def _bn_momentum(model, value):
    for m in model.modules():
        if isinstance(m, mx.nn.BatchNorm2D):
            m.momentum = value


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_state_never_replaces_the_last_good_checkpoint(tmp_path):
    """NaN batch-norm statistics (finite training loss): refused before the save, old files intact."""
    data = tiny_data(32, 16)
    model = tiny_model(0)
    fit(model, data, tmp_path, epochs=2, **dict(FAST, schedule="step"))
    ckpt, metrics = (tmp_path / "checkpoint.npz").read_bytes(), (tmp_path / "metrics.csv").read_bytes()
    # cut back to epoch 1, then poison the moving statistics on the way to epoch 2
    hist = fit(tiny_model(0), data, tmp_path / "one", epochs=1, **dict(FAST, schedule="step"))
    assert len(hist) == 1
    resumed = tiny_model(0)
    _bn_momentum(resumed, float("nan"))
    good = (tmp_path / "one" / "checkpoint.npz").read_bytes()
    with pytest.raises(NonFiniteLoss, match="moving_mean|moving_variance|test loss"):
        fit(resumed, data, tmp_path / "one", epochs=2, resume=tmp_path / "one" / "checkpoint.npz",
            **dict(FAST, schedule="step"))
    assert (tmp_path / "one" / "checkpoint.npz").read_bytes() == good
    assert len(read_metrics(tmp_path / "one" / "metrics.csv")) == 1
    assert (tmp_path / "checkpoint.npz").read_bytes() == ckpt and (tmp_path / "metrics.csv").read_bytes() == metrics


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_learning_rate_with_one_step_per_epoch_saves_nothing(tmp_path):
    """One step per epoch: the loss is finite when measured, the parameters are NaN after it."""
    data = tiny_data(32, 16)
    with pytest.raises(NonFiniteLoss):
        fit(tiny_model(0), data, tmp_path, epochs=2, batch_size=32, lr=float("nan"), progress=False)
    assert not (tmp_path / "checkpoint.npz").exists() and not (tmp_path / "metrics.csv").exists()


def test_metrics_are_appended_only_after_the_checkpoint_is_written(tmp_path, monkeypatch):
    import minixception.train as train
    data = tiny_data(32, 16)
    real = train.save_checkpoint
    calls = []

    def second_save_fails(*a, **k):
        calls.append(k.get("epoch"))
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*a, **k)
    monkeypatch.setattr(train, "save_checkpoint", second_save_fails)
    with pytest.raises(OSError, match="disk full"):
        fit(tiny_model(0), data, tmp_path, epochs=2, **FAST)
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.csv")] == [1]
    assert mx.checkpoint.read_meta(tmp_path / "checkpoint.npz")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "curves.png", "metrics.csv"]


def test_a_second_fit_into_a_run_folder_is_refused_unless_overwrite(tmp_path):
    from minixception.runfolder import RunFolderError
    data = tiny_data(32, 16)
    fit(tiny_model(0), data, tmp_path, epochs=1, **FAST)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(RunFolderError, match="overwrite"):
        fit(tiny_model(1), data, tmp_path, epochs=1, **FAST)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    fit(tiny_model(1), data, tmp_path, epochs=1, overwrite=True, **FAST)
    assert (tmp_path / "checkpoint.npz").read_bytes() != before


def test_a_run_of_zero_steps_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="zero steps"):
        fit(tiny_model(0), tiny_data(1, 16), tmp_path, epochs=1, **FAST)
    with pytest.raises(ValueError, match="epochs"):
        fit(tiny_model(0), tiny_data(32, 16), tmp_path / "b", epochs=0, **FAST)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_extending_a_cosine_run_keeps_its_learning_rates_and_anneals_from_there(tmp_path, capsys):
    """Planned 4 epochs, stopped after 2, extended to 6: epoch 2's lr is the 4-epoch plan's, the new
    epochs anneal down from it (no jump back up); extending a finished run is a warm restart, said so."""
    data = tiny_data(64, 16)
    kw = dict(FAST, schedule="cosine", seed=1)
    plan = fit(tiny_model(0), data, tmp_path / "plan", epochs=4, **kw)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(0), data, tmp_path / "cut", epochs=4, interrupt_after_steps=8, **kw)  # 4 steps/epoch
    ext = fit(tiny_model(0), data, tmp_path / "cut", epochs=6, resume=tmp_path / "cut" / "checkpoint.npz", **kw)
    lrs = [r["lr"] for r in ext]
    assert lrs[:2] == [r["lr"] for r in plan[:2]]
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])), lrs
    assert "anneal" in capsys.readouterr().out

    more = fit(tiny_model(0), data, tmp_path / "plan", epochs=5, resume=tmp_path / "plan" / "checkpoint.npz", **kw)
    assert more[-1]["lr"] == pytest.approx(kw["lr"])
    assert "warm restart" in capsys.readouterr().out


def test_resume_with_no_more_epochs_writes_nothing(tmp_path, capsys):
    data = tiny_data(32, 16)
    fit(tiny_model(0), data, tmp_path, epochs=1, **FAST)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    hist = fit(tiny_model(0), data, tmp_path, epochs=1, resume=tmp_path / "checkpoint.npz", **FAST)
    assert len(hist) == 1 and "nothing to train" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_of_a_checkpoint_missing_a_training_field_changes_nothing(tmp_path):
    from minixception.checkpoint import CheckpointError
    model, data = tiny_model(0), tiny_data(32, 16)
    opt = mx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mx.save_checkpoint(tmp_path / "c.npz", model, opt, epoch=1)       # no data_rng, no history
    other = tiny_model(3)
    before = params_of(other)
    with pytest.raises(CheckpointError, match="data_rng"):
        fit(other, data, tmp_path / "run", epochs=2, resume=tmp_path / "c.npz", **FAST)
    for k, v in before.items():
        np.testing.assert_array_equal(other.state_dict()[k], v, err_msg=k)


def test_fit_is_reachable_after_a_plain_import():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import minixception as mx; print(mx.train.fit.__name__)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "fit", r.stderr
