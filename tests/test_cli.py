"""The command line end to end on tiny runs: train (files written, resume), summary, ablate, help, errors."""
import subprocess
import sys

import pytest

from minixception.cli import main
from minixception.train import read_metrics

TINY = ["--subset", "48", "--batch-size", "16", "--width", "0.25", "--middle-blocks", "1", "--no-progress"]


def test_train_end_to_end_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    for name in ("metrics.csv", "curves.png", "checkpoint.npz"):
        assert (out / name).is_file(), name
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 1 and 0.0 <= rows[0]["test_acc"] <= 1.0 and rows[0]["lr"] == 0.05
    assert "test accuracy" in capsys.readouterr().out

    assert main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "resuming" in capsys.readouterr().out


def test_train_ablation_switches_reach_the_model(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(out), "--no-residual", "--intermediate", "elu",
                 "--dropout", "0.2", "--schedule", "step", *TINY]) == 0
    from minixception.checkpoint import read_meta
    s = read_meta(out / "checkpoint.npz")["settings"]
    assert (s["residual"], s["intermediate"], s["dropout"], s["schedule"]) == (False, "elu", 0.2, "step")
    from minixception.runs import build_model
    from minixception import nn
    m = build_model(s)
    assert not any(isinstance(x, nn.Residual) for x in m.modules())
    assert all(x.intermediate == "elu" for x in m.modules() if isinstance(x, nn.SeparableConv2D))


def test_cifar10_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from minixception.data import cifar10
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path / "cache"))

    def no_network(url, dest):
        raise OSError("no route to host")
    monkeypatch.setattr(cifar10, "_download", no_network)
    assert main(["train", "--data", "cifar10", "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert cifar10.CIFAR10_URL in err and "--data shapes" in err and str(tmp_path / "cache") in err


def test_summary_mini(capsys):
    assert main(["summary", "--model", "mini", "--width", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "block1_conv1" in out and "predictions" in out


def test_ablate_tiny(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["ablate", "--subset", "32", "--epochs", "1", "--batch-size", "16", "--width", "0.25",
                 "--middle-blocks", "1", "--variants", "residual_none,plain_none", "--no-progress",
                 "--out", str(out)]) == 0
    assert (out / "ablation.png").stat().st_size > 1000
    lines = (out / "ablation.csv").read_text().splitlines()
    assert lines[0].startswith("variant,residual,intermediate,epoch")
    assert {l.split(",")[0] for l in lines[1:]} == {"residual_none", "plain_none"}
    assert (out / "plain_none" / "metrics.csv").is_file()


def test_help_documents_every_option():
    r = subprocess.run([sys.executable, "-m", "minixception", "train", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for flag in ("--data", "--model", "--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay",
                 "--schedule", "--subset", "--device", "--seed", "--out", "--resume", "--no-residual",
                 "--intermediate", "--dropout"):
        assert flag in r.stdout, flag


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["fly"])
