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
