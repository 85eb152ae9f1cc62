"""Runs never lose data: the run folder, the lock, flag validation, resume and clean CLI errors."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from minixception.checkpoint import read_meta
from minixception.cli import main
from minixception.train import read_metrics

REPO = str(pathlib.Path(__file__).resolve().parents[1])
TINY = ["--subset", "48", "--batch-size", "16", "--width", "0.25", "--middle-blocks", "1", "--no-progress"]


def _train(out, *extra, epochs=1):
    return main(["train", "--epochs", str(epochs), "--out", str(out), *TINY, *extra])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run (cosine over 1 epoch); tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert _train(out) == 0
    return out


def _copy_run(src, dst):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


# -- 1. the run folder is never silently overwritten -------------------------------------

def test_second_run_into_a_run_folder_is_refused(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path / "run")
    before = _snapshot(out)
    capsys.readouterr()
    assert _train(out) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and str(out) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _snapshot(out) == before


def test_overwrite_replaces_the_run(finished_run, tmp_path):
    out = _copy_run(finished_run, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    assert _train(out, "--overwrite", "--seed", "1") == 0
    assert read_meta(out / "checkpoint.npz")["settings"]["seed"] == 1
    assert len(read_metrics(out / "metrics.csv")) == 1
    assert (out / "notes.txt").read_text() == "mine"           # only the run's own files are replaced


def test_without_out_each_run_gets_a_fresh_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--epochs", "1", *TINY]
    assert main(args) == 0
    assert main(args) == 0
    assert (tmp_path / "runs" / "train" / "checkpoint.npz").is_file()
    assert (tmp_path / "runs" / "train-2" / "checkpoint.npz").is_file()
    out = capsys.readouterr().out
    assert os.path.join("runs", "train-2") in out


def test_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import minixception.data as data
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("data loaded before --out was checked"))
    (tmp_path / "afile").write_text("x")
    assert _train(tmp_path / "afile" / "run") == 2
    err = capsys.readouterr().err
    assert "--out" in err and "afile" in err and "Traceback" not in err
    assert _train(tmp_path / "afile") == 2
    assert "not a folder" in capsys.readouterr().err


def _write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def test_a_live_lock_refuses_a_second_run_naming_the_other_process(tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "run", other.pid)
        assert _train(tmp_path / "run") == 2
        err = capsys.readouterr().err
        assert f"pid {other.pid}" in err and socket.gethostname() in err
        assert not (tmp_path / "run" / "metrics.csv").exists()
        assert (tmp_path / "run" / ".lock").exists()            # the other run's lock is left alone
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path / "run", dead.pid)
    (tmp_path / "run" / ".ckpt-leftover.tmp").write_bytes(b"half a checkpoint")   # a killed save
    assert _train(tmp_path / "run") == 0
    captured = capsys.readouterr()
    assert "stale" in captured.err + captured.out and str(dead.pid) in captured.err + captured.out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.npz", "curves.png", "metrics.csv"]


# -- 2. nonsense settings never start ---------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-0.1"),
    ("--momentum", "nan"), ("--momentum", "1.5"), ("--momentum", "-0.1"),
    ("--weight-decay", "-1"), ("--weight-decay", "inf"),
    ("--bn-momentum", "nan"), ("--bn-momentum", "5"), ("--bn-momentum", "1"), ("--bn-momentum", "-0.5"),
    ("--batch-size", "0"), ("--epochs", "0"), ("--seed", "-1"), ("--width", "0"), ("--width", "-1"),
    ("--dropout", "1"), ("--middle-blocks", "-1"), ("--subset", "0"), ("--subset", "200000"),
])
def test_nonsense_flags_are_refused_at_parsing_naming_the_flag(tmp_path, capsys, flag, value):
    # a tiny run around the flag (the last occurrence wins): if the check were missing, this fails fast
    argv = ["train", "--out", str(tmp_path / "run"), "--epochs", "1", *TINY, flag, value]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err
    assert not (tmp_path / "run").exists()


def test_subset_above_cifar10_size_is_refused(tmp_path, capsys, monkeypatch):
    from minixception.data import cifar10
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar10, "_download", lambda url, dest: pytest.fail("download before the check"))
    with pytest.raises(SystemExit):
        main(["train", "--data", "cifar10", "--out", str(tmp_path / "r"), *TINY, "--subset", "50001"])
    err = capsys.readouterr().err
    assert "--subset" in err and "50000" in err


ABLATE_TINY = ["--epochs", "1", "--variants", "plain_none", *TINY]


@pytest.mark.parametrize("flag,value", [
    ("--lr-grid", "nan"), ("--lr-grid", "0"), ("--lr-grid", "11"), ("--lr-grid", "-0.1"), ("--lr-grid", "fast"),
    ("--seeds", "0"), ("--seeds", "-1"), ("--seeds", "1.5"), ("--val", "-1"), ("--val", "many"),
])
def test_ablate_refuses_nonsense_protocol_flags_at_parsing(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["ablate", "--out", str(tmp_path / "a"), *ABLATE_TINY, flag, value])
    assert e.value.code == 2
    (line,) = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert flag in line and value in line
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("extra, says", [
    (["--val", "40"], "leaves 8, less than one batch"),                 # 48 images, batch 16
    (["--val", "0", "--lr-grid", "0.01", "0.1"], "needs validation images"),
    (["--lr-grid", "0.1", "0.05", "0.1000000001"], "0.1 more than once"),  # the same trial folder twice
    (["--lr", "0.1", "--lr-grid", "0.01", "0.1"], "not both"),
])
def test_ablate_refuses_a_protocol_that_cannot_run(tmp_path, capsys, extra, says):
    with pytest.raises(SystemExit) as e:
        main(["ablate", "--out", str(tmp_path / "a"), *ABLATE_TINY, *extra])
    assert e.value.code == 2
    (line,) = [l for l in capsys.readouterr().err.splitlines() if "error" in l]
    assert says in line and ("--val" in line or "--lr-grid" in line)
    assert not (tmp_path / "a").exists()


def test_ablate_passes_its_flags_to_the_protocol(tmp_path, monkeypatch, capsys):
    """The flags reach fair_comparison: the grid, the seeds, --no-augment, the validation images cut
    from the end of the training images, and models built from the run settings."""
    import numpy as np
    import minixception.ablate as ablate
    from minixception import nn
    from minixception.data import load_dataset
    from minixception.runs import build_model
    seen = {}

    def fake(variants, data, build, **kw):
        seen.update(variants=variants, data=data, build=build, **kw)
        raise KeyboardInterrupt("stop here")
    monkeypatch.setattr(ablate, "fair_comparison", fake)
    assert main(["ablate", "--out", str(tmp_path / "a"), "--epochs", "3", "--subset", "64", "--batch-size", "8",
                 "--width", "0.25", "--middle-blocks", "1", "--bn-momentum", "0.7", "--no-augment",
                 "--variants", "residual_elu,plain_none", "--lr-grid", "0.02", "0.2", "--seeds", "3",
                 "--seed", "5", "--val", "10", "--schedule", "step", "--no-progress"]) == 130
    assert seen["variants"] == {"residual_elu": dict(residual=True, intermediate="elu"),
                                "plain_none": dict(residual=False, intermediate="none")}
    assert seen["grid"] == [0.02, 0.2] and seen["seeds"] == [5, 6, 7] and seen["augment"] is False
    assert (seen["epochs"], seen["batch_size"], seen["schedule"]) == (3, 8, "step")
    assert seen["out"] == tmp_path / "a"
    full = load_dataset("shapes", 64, seed=5)
    data = seen["data"]
    np.testing.assert_array_equal(data["x_train"], full["x_train"][:54])
    np.testing.assert_array_equal(data["x_val"], full["x_train"][54:])
    np.testing.assert_array_equal(data["y_val"], full["y_train"][54:])
    np.testing.assert_array_equal(data["x_test"], full["x_test"])
    model = seen["build"](dict(residual=False, intermediate="elu"), 6)
    assert not any(isinstance(m, nn.Residual) for m in model.modules())
    assert all(m.intermediate == "elu" for m in model.modules() if isinstance(m, nn.SeparableConv2D))
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2D)} == {0.7}
    twin = build_model(dict(model="mini", width=0.25, middle_blocks=1, residual=False, intermediate="elu",
                            bn_momentum=0.7, seed=6))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2, err_msg=k)


def test_ablate_shares_the_flag_checks(tmp_path, capsys):
    for flag, value in (("--lr", "nan"), ("--batch-size", "0"), ("--subset", "200000")):
        with pytest.raises(SystemExit):
            main(["ablate", "--out", str(tmp_path / "a"), "--epochs", "1", "--variants", "plain_none",
                  *TINY, flag, value])
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


# -- 3. resume says what it does ----------------------------------------------------------

def test_resume_refuses_a_contradicting_flag_and_accepts_an_agreeing_one(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path / "run")
    ckpt = str(out / "checkpoint.npz")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "--resume", ckpt, "--epochs", "2", "--lr", "0.1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1" in err and "0.05" in err
    assert _snapshot(out) == before
    # the same value is no contradiction; without --out the run continues in the checkpoint's folder
    assert main(["train", "--resume", ckpt, "--epochs", "2", "--lr", "0.05", "--width", "0.25",
                 "--no-progress"]) == 0
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == [1, 2]


def test_resume_with_no_more_epochs_says_so_and_writes_nothing(finished_run, tmp_path, capsys):
    out = _copy_run(finished_run, tmp_path / "run")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "1", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "nothing to train" in said and "already" in said
    assert "metrics in" not in said and "checkpoint " + str(out) not in said
    assert _snapshot(out) == before


def test_resume_of_a_checkpoint_with_absurd_settings_is_refused_before_building(tmp_path, capsys, monkeypatch):
    import numpy as np
    from minixception.checkpoint import MARKER
    import minixception.runs as runs
    monkeypatch.setattr(runs, "build_model", lambda *a, **k: pytest.fail("model built from unchecked settings"))
    meta = {"epoch": 1, "step": 0, "settings": {**runs.DEFAULTS, "width": 2000}}
    np.savez(tmp_path / "c.npz", **{MARKER: np.array(1), "meta": np.array(json.dumps(meta))})
    assert main(["train", "--resume", str(tmp_path / "c.npz"), "--epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "width" in err and "2000" in err and "Traceback" not in err


# -- 5. the command line ends cleanly -------------------------------------------------------

def test_a_bad_checkpoint_is_one_line_on_stderr_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"definitely not a checkpoint")
    assert main(["train", "--resume", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "minixception", "train", "--resume", str(bad), "--debug"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode != 0 and "Traceback" in r.stderr and "CheckpointError" in r.stderr


@pytest.mark.parametrize("left", ["ablation.csv", "summary.csv", "residual_none/lr0.05-seed0/metrics.csv",
                                  "plain_none/checkpoint.npz"])
def test_ablate_refuses_a_folder_holding_an_ablation(tmp_path, capsys, monkeypatch, left):
    import minixception.ablate as ablate
    monkeypatch.setattr(ablate, "fair_comparison", lambda *a, **k: pytest.fail("trained into a taken folder"))
    (tmp_path / "abl" / left).parent.mkdir(parents=True)
    (tmp_path / "abl" / left).write_text("variant\n")
    assert main(["ablate", "--out", str(tmp_path / "abl"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds an ablation" in err and "--overwrite" in err and left.split("/")[0] in err


def test_ablate_overwrite_replaces_an_ablation(tmp_path, capsys):
    out = tmp_path / "abl"
    argv = ["ablate", "--out", str(out), *ABLATE_TINY, "--variants", "residual_none"]
    assert main(argv) == 0
    trial = out / "residual_none" / "lr0.05-seed0"
    assert (trial / "checkpoint.npz").is_file()
    before = _snapshot(trial)
    capsys.readouterr()
    assert main(argv) == 2                                         # refused: the files are untouched
    err = capsys.readouterr().err
    assert "ablation.csv" in err and "residual_none" in err
    assert _snapshot(trial) == before
    (trial / "notes.txt").write_text("mine")
    (out / "residual_none" / "lr0.1-seed0").mkdir()
    (out / "residual_none" / "lr0.1-seed0" / "metrics.csv").write_text("epoch\n")   # another trial of it
    assert main([*argv, "--overwrite", "--seed", "1"]) == 0
    assert (out / "residual_none" / "lr0.05-seed1" / "checkpoint.npz").is_file()
    assert {l.split(",")[2] for l in (out / "summary.csv").read_text().splitlines()[1:]} == {"1"}
    # the old ablation's trial is gone, but only its run files: what else was there is kept
    assert sorted(p.name for p in trial.iterdir()) == ["notes.txt"]
    assert not (out / "residual_none" / "lr0.1-seed0").exists()


def test_a_run_in_another_process_holds_the_folder_until_it_ends(tmp_path, capsys):
    """A real second process claims the folder; ours is refused naming it, then succeeds once it is gone."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom minixception.runfolder import claim\n"
         "with claim(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.readline()\n", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(out) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.communicate("\n", timeout=60)
    assert not (out / ".lock").exists()                 # released on exit
    assert _train(out) == 0


def test_subset_all_means_every_image():
    from minixception.cli import build_parser, resolve, TRAIN_FLAGS
    from minixception.runs import DEFAULTS
    parser = build_parser()
    args = resolve(parser.commands["train"], parser.parse_args(["train", "--subset", "all"]), DEFAULTS, TRAIN_FLAGS)
    assert args.subset is None and args.lr == DEFAULTS["lr"] and args.out is None


def test_no_gpu_is_one_line_before_any_work(tmp_path, capsys):
    import minixception as mx
    if mx.backend.gpu_available():
        pytest.skip("this machine has a GPU")
    assert _train(tmp_path / "run", "--device", "gpu") == 2
    err = capsys.readouterr().err
    assert "--device gpu" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_ablate_without_a_gpu_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import minixception as mx
    import minixception.data as data
    if mx.backend.gpu_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the device check"))
    assert main(["ablate", "--out", str(tmp_path / "a"), *ABLATE_TINY, "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--device gpu" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
