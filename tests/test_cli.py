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
    """The fair protocol end to end: two rates, two seeds, two variants -> the files, the rows, the
    rate with the best mean validation accuracy chosen, and the verdict printed."""
    import csv
    out = tmp_path / "abl"
    assert main(["ablate", "--subset", "96", "--epochs", "1", "--batch-size", "16", "--width", "0.25",
                 "--middle-blocks", "1", "--variants", "residual_none,plain_none", "--lr-grid", "0.01", "0.2",
                 "--seeds", "2", "--seed", "3", "--no-progress", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "holding out the last 19 of the 96 training images" in said       # no --val: a fifth
    assert (out / "ablation.png").stat().st_size > 10_000
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 * 2 * 2                         # variants x rates x seeds
    with open(out / "ablation.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    assert list(epochs[0])[:7] == ["variant", "residual", "intermediate", "lr", "seed", "epoch", "train_loss"]
    assert len(epochs) == len(summary)                       # one epoch per trial
    assert {(r["variant"], r["residual"], r["intermediate"]) for r in epochs} == {
        ("residual_none", "True", "none"), ("plain_none", "False", "none")}
    final = {}
    for name in ("residual_none", "plain_none"):
        mine = [r for r in summary if r["variant"] == name]
        assert [(float(r["lr"]), r["seed"]) for r in mine] == [(0.01, "3"), (0.01, "4"), (0.2, "3"), (0.2, "4")]
        mean_val = {lr: sum(float(r["val_acc"]) for r in mine if r["lr"] == lr) / 2 for lr in ("0.01", "0.2")}
        best = "0.2" if mean_val["0.2"] > mean_val["0.01"] else "0.01"         # the first of equals
        assert [(r["lr"], r["seed"]) for r in mine if r["chosen"] == "True"] == [(best, "3"), (best, "4")]
        assert (out / name / f"lr{float(best):g}-seed4" / "metrics.csv").is_file()
        final[name] = {r["seed"]: r for r in mine if r["chosen"] == "True"}
        accs = [float(r["test_acc"]) for r in final[name].values()]
        assert f"{name} lr {float(best):g} test acc {sum(accs) / 2:.3f} ({min(accs):.3f}..{max(accs):.3f})" in [
            " ".join(line.split()) for line in said.splitlines()]

    def holds(key, better):
        return [f"{a} {'>' if better(1, 0) else '<'} {b}" for a in final for b in final if a != b and all(
            better(float(final[a][s][key]), float(final[b][s][key])) for s in ("3", "4"))]
    lines = said.splitlines()
    for label, key, better in (("test accuracy:", "test_acc", lambda u, v: u > v),
                               ("final training loss:", "train_loss", lambda u, v: u < v)):
        (line,) = [l for l in lines if l.strip().startswith(label)]
        assert line.split(":", 1)[1].strip() == (", ".join(holds(key, better)) or "none")


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
