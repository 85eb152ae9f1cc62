"""Data-parallel SGD: K ranks x B/K images reproduce 1 process x B images, in float64.

The collective tests launch ``mpiexec -n 2`` (subprocesses, each rank on one thread) and skip
cleanly where mpi4py or the launcher is missing. The in-process tests cover what needs no
second rank: synchronised batch norm's math and gradients on a one-rank group, the buckets,
and the error messages.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minixception as mx
from minixception import distributed as D
from minixception.cli import main
from minixception.gradcheck import check_layer, rel_error

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--width", "0.25", "--middle-blocks", "1", "--no-progress", "--dtype", "float64"]


class Solo:
    """A one-rank group: every collective is the identity (no MPI needed)."""
    rank, size = 0, 1

    def allreduce_sum_(self, buf):
        return buf

    def broadcast_(self, buf, root=0):
        return buf

    def sum(self, values):
        return np.asarray(values, dtype=np.float64)

    def any(self, flag):
        return bool(flag)

    def shard(self, n):
        return 0, n


# -- in process -----------------------------------------------------------------------------------

def test_sync_batchnorm_on_one_rank_is_batchnorm(rng):
    x = rng.standard_normal((4, 5, 5, 3)) * 3 + 2
    dy = rng.standard_normal(x.shape)
    bn = mx.nn.BatchNorm2D(3, momentum=0.9, dtype="float64")
    bn.gamma.data[:] = rng.standard_normal(3)
    model = D.convert_sync_batchnorm(mx.nn.Sequential(mx.nn.BatchNorm2D(3, momentum=0.9, dtype="float64")), Solo())
    layer = next(m for m in model.modules() if isinstance(m, mx.nn.BatchNorm2D))
    assert type(layer) is D.SyncBatchNorm2D
    layer.gamma.data[:] = bn.gamma.data
    for step in range(2):                  # the second step shifts by a non-zero moving mean
        y0, y1 = bn(x), layer(x)
        assert rel_error(y0, y1) < 1e-13
        assert rel_error(bn.backward(dy), layer.backward(dy)) < 1e-13
        assert rel_error(bn.gamma.grad, layer.gamma.grad) < 1e-13
        assert rel_error(bn.beta.grad, layer.beta.grad) < 1e-13
        assert rel_error(bn.moving_mean, layer.moving_mean) < 1e-13
        assert rel_error(bn.moving_variance, layer.moving_variance) < 1e-13
    layer.eval(), bn.eval()
    assert rel_error(bn(x), layer(x)) < 1e-13


def test_sync_batchnorm_gradients(rng):
    layer = mx.nn.BatchNorm2D(3, dtype="float64")
    D.convert_sync_batchnorm(layer, Solo())
    layer.gamma.data[:] = [0.5, 1.5, -2.0]
    layer.moving_mean[:] = [0.3, -1.0, 4.0]             # a shift that is not the batch mean
    errors = check_layer(layer, rng.standard_normal((3, 4, 4, 3)) * 2 + 1)
    assert max(errors.values()) < 1e-7, errors


def test_buckets_keep_order_and_size():
    arrays = [np.zeros(n) for n in (10, 20, 500, 5, 5)] + [np.zeros(3, np.float32)]
    b = D.make_buckets(arrays, bucket_bytes=8 * 32)
    assert b == [[0, 1], [2], [3, 4], [5]]              # order kept; big alone; dtype change splits
    assert sum(b, []) == list(range(len(arrays)))


def test_dtype_float64_trains_in_float64(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--subset", "32", "--batch-size", "16", "--out", str(out), *TINY]) == 0
    ck = np.load(out / "checkpoint.npz")
    floats = [k for k in ck.files if k.startswith(("model/", "optim/")) and ck[k].dtype.kind == "f"]
    assert floats and all(ck[k].dtype == np.float64 for k in floats)


def test_cli_refuses_what_cannot_run(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert main(["train", "--sync-bn", "--out", out, *TINY]) == 2
    assert "--sync-bn needs --distributed" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # as if mpi4py were not installed
    assert main(["train", "--distributed", "--out", out, *TINY]) == 2
    err = capsys.readouterr().err
    assert "mpi4py" in err and "pip install" in err


def test_single_process_distributed_says_how_to_launch(tmp_path, capsys):
    pytest.importorskip("mpi4py")
    assert main(["train", "--distributed", "--out", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "single process" in err and "mpiexec -n" in err


def test_batch_must_divide_by_ranks():
    dp = D.DataParallel(type("Three", (Solo,), {"size": 3})())
    dp.check_batch_size(12)
    with pytest.raises(ValueError, match="must divide by the 3 ranks"):
        dp.check_batch_size(16)


def test_local_batch_is_a_contiguous_slice_with_its_share():
    group = type("Rank1of3", (Solo,), {"rank": 1, "size": 3, "shard": lambda self, n: (n // 3, 2 * n // 3)})()
    dp = D.DataParallel(group)
    xb, yb = dp.local_batch(np.arange(12)[:, None], np.arange(12))
    assert yb.tolist() == [4, 5, 6, 7] and dp.weight == 4 / 12


def _rank(rank, size):
    """A DataParallel for rank ``rank`` of ``size``, cutting batches with the real Group.shard."""
    group = type("Rank", (Solo,), {"rank": rank, "size": size, "shard": D.Group.shard})()
    return D.DataParallel(group)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_each_rank_makes_exactly_its_slice_of_the_global_batches(ranks):
    """K ranks each making B/K images = one process making B, bit for bit, augmentation on;
    the generator ends the epoch where one process's does (so resume stays exact)."""
    x, y = mx.data.make_shapes(47, seed=3)
    mean, std = mx.data.channel_stats(x)
    it = lambda seed, **kw: mx.data.BatchIterator(x, y, 10, mean, std, shuffle=True, augment=True,
                                                  rng=np.random.default_rng(seed), **kw)
    whole = it(4)
    full = list(whole)                                   # 4 batches of 10 and one of 7 (none divide by 2 or 3)
    assert [len(yb) for _, yb in full] == [10, 10, 10, 10, 7]
    for r in range(ranks):
        dp = _rank(r, ranks)
        part = it(4, shard=dp.rows)
        got = []
        for xb, yb in part:
            got.append((xb, yb, dp.weight))              # the weight belongs to the batch just made
        assert len(got) == len(full)
        for (xf, yf), (xb, yb, w) in zip(full, got):
            lo, hi = dp.group.shard(len(yf))
            assert xb.dtype == xf.dtype and xb.shape == (hi - lo, *xf.shape[1:])
            np.testing.assert_array_equal(xb, xf[lo:hi])
            np.testing.assert_array_equal(yb, yf[lo:hi])
            assert w == (hi - lo) / len(yf)
        assert part.rng.bit_generator.state == whole.rng.bit_generator.state
    for n in (10, 7):           # the ranks' rows together are the whole batch: none made twice or missed
        cuts = [_rank(r, ranks).group.shard(n) for r in range(ranks)]
        assert cuts[0][0] == 0 and cuts[-1][1] == n and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))


def test_a_rank_resumed_mid_epoch_makes_the_same_slices():
    x, y = mx.data.make_shapes(47, seed=3)
    mean, std = mx.data.channel_stats(x)
    full = list(mx.data.BatchIterator(x, y, 10, mean, std, shuffle=True, augment=True, rng=4))
    dp = _rank(1, 2)
    part = mx.data.BatchIterator(x, y, 10, mean, std, shuffle=True, augment=True, rng=4, shard=dp.rows)
    got = list(part.epoch(skip=3))
    assert len(got) == 2
    for (xf, yf), (xb, yb) in zip(full[3:], got):
        lo, hi = dp.group.shard(len(yf))
        np.testing.assert_array_equal(xb, xf[lo:hi])
        np.testing.assert_array_equal(yb, yf[lo:hi])


@pytest.mark.gpu
def test_each_rank_makes_exactly_its_slice_on_the_gpu():
    import cupy
    x, y = mx.data.make_shapes(47, seed=3)
    mean, std = mx.data.channel_stats(x)
    xd, yd = cupy.asarray(x), cupy.asarray(y)
    it = lambda **kw: mx.data.BatchIterator(xd, yd, 10, mean, std, shuffle=True, augment=True, rng=4, **kw)
    full = list(it())
    dp = _rank(1, 2)
    got = list(it(shard=dp.rows))
    assert len(got) == len(full)
    for (xf, yf), (xb, yb) in zip(full, got):
        lo, hi = dp.group.shard(len(yf))
        assert isinstance(xb, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(xb), cupy.asnumpy(xf[lo:hi]))
        np.testing.assert_array_equal(cupy.asnumpy(yb), cupy.asnumpy(yf[lo:hi]))


def test_batch_iterator_refuses_a_bad_shard():
    x, y = mx.data.make_shapes(8, seed=0)
    with pytest.raises(TypeError, match="shard must be None or a callable"):
        mx.data.BatchIterator(x, y, 4, [0, 0, 0], [1, 1, 1], shard=(0, 2))
    it = mx.data.BatchIterator(x, y, 4, [0, 0, 0], [1, 1, 1], shard=lambda n: (1, n + 1))
    with pytest.raises(ValueError, match=r"shard\(4\) must give 0 <= lo <= hi <= 4, got \(1, 5\)"):
        next(iter(it))


# -- under mpiexec -n 2 -------------------------------------------------------------------------

def _mpiexec():
    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.skip("no mpiexec on PATH (pip install -e '.[distributed]')")
    return exe


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    # two ranks share the two cores: one thread each, or they fight
    env.update(MINIXCEPTION_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _run(cmd, ranks=None, timeout=180):
    if ranks:
        cmd = [_mpiexec(), "-n", str(ranks), *cmd]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _train(out, ranks=None, extra=()):
    cmd = [sys.executable, "-m", "minixception", "train", "--out", str(out), *TINY, *extra]
    if ranks:
        cmd += ["--distributed"]
    return _run(cmd, ranks)


def _metrics(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _arrays(out):
    ck = np.load(out / "checkpoint.npz")
    return {k: ck[k] for k in ck.files if k.startswith(("model/", "optim/momentum/"))}


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


def test_two_ranks_with_sync_bn_reproduce_one_process(tmp_path):
    """2 ranks x 8 images == 1 process x 16 images: 2 epochs of 4 steps, then a 2-rank resume."""
    _mpiexec()
    run = ["--subset", "64", "--batch-size", "16", "--seed", "3", "--schedule", "step"]  # not cosine: it
    # depends on --epochs, and the 2-rank run reaches its 3 epochs by a resume
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, extra=[*run, "--epochs", "3"])
    log = _train(two, ranks=2, extra=[*run, "--epochs", "2", "--sync-bn"])
    assert log.count("epoch 1/2") == 1 and "done in" in log      # rank 0 alone prints ...
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.npz", "curves.png", "metrics.csv"]  # ... writes
    _run([sys.executable, "-m", "minixception", "train", "--resume", str(two / "checkpoint.npz"), "--epochs", "3",
          "--out", str(two), "--no-progress", "--distributed", "--sync-bn"], ranks=2)
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in m2] == ["1", "2", "3"]
    for a, b in zip(m1, m2):
        for key in ("train_loss", "test_loss"):
            assert abs(float(a[key]) - float(b[key])) < 1e-9, (key, a[key], b[key])
        assert a["train_acc"] == b["train_acc"] and a["test_acc"] == b["test_acc"]
    w1, w2 = _arrays(one), _arrays(two)
    assert w1.keys() == w2.keys() and any(k.startswith("optim/momentum/") for k in w1)
    worst = max(_rel_l2(w1[k], w2[k]) for k in w1)
    assert worst < 1e-7, worst


def test_two_ranks_interrupted_mid_epoch_then_resumed_equal_one_uninterrupted_process(tmp_path):
    """Ctrl-C after step 3 of 8 under 2 ranks: rank 0's checkpoint (the epoch's partial sums counted
    once), then a 2-rank resume, ends where one process running straight through ends."""
    _mpiexec()
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, extra=["--subset", "64", "--batch-size", "16", "--epochs", "2", "--schedule", "step"])
    _run([sys.executable, str(ROOT / "tests" / "_mpi_worker.py"), str(two), "resume"], ranks=2)
    m1, m2 = _metrics(one), _metrics(two)
    assert len(m1) == len(m2) == 2
    for a, b in zip(m1, m2):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert abs(float(a[key]) - float(b[key])) < 1e-9, (key, a[key], b[key])
    w1, w2 = _arrays(one), _arrays(two)
    assert w1.keys() == w2.keys()
    assert max(_rel_l2(w1[k], w2[k]) for k in w1) < 1e-7


def test_two_ranks_without_sync_bn_use_per_rank_statistics(tmp_path):
    """One step without --sync-bn equals the hand computation: each half normalised alone."""
    _mpiexec()
    from minixception.data import load_dataset
    from minixception.data.iterator import BatchIterator, channel_stats
    from minixception.losses import softmax_cross_entropy
    from minixception.runs import DEFAULTS, build_model

    run = ["--subset", "16", "--batch-size", "16", "--epochs", "1", "--schedule", "constant", "--no-augment"]
    out = tmp_path / "two"
    _train(out, ranks=2, extra=run)
    got = _arrays(out)

    settings = dict(DEFAULTS, width=0.25, middle_blocks=1, subset=16, batch_size=16, dtype="float64", augment=False)
    data = load_dataset("shapes", 16, seed=settings["seed"])
    mean, std = channel_stats(data["x_train"])
    it = BatchIterator(data["x_train"], np.asarray(data["y_train"], np.int64), 16, mean, std, shuffle=True,
                       rng=np.random.default_rng(settings["seed"]), dtype="float64")
    xb, yb = next(iter(it))

    def one_step(halves):
        """SGD step from the gradient averaged over ``halves`` (each with its own batch norm)."""
        models = [build_model(settings) for _ in halves]
        for m, (lo, hi) in zip(models, halves):
            _, dlogits = softmax_cross_entropy(m(xb[lo:hi]), yb[lo:hi])
            m.backward(dlogits * (hi - lo) / 16)
        for ps in zip(*(m.parameters() for m in models[1:]), models[0].parameters()):
            for p in ps[:-1]:
                ps[-1].grad += p.grad
        opt = mx.optim.SGD(models[0].parameters(), lr=settings["lr"], momentum=settings["momentum"],
                           weight_decay=settings["weight_decay"])
        opt.step()
        sd = {f"model/{k}": v for k, v in models[0].state_dict().items()}
        bufs = [dict(m.named_buffers()) for m in models]
        for k in bufs[0]:                                  # per-rank moving statistics, averaged
            sd[f"model/{k}"] = sum(b[k] for b in bufs) / len(bufs)
        sd.update({f"optim/momentum/{i}": b for i, b in enumerate(opt.buffers)})
        return sd

    per_rank = one_step([(0, 8), (8, 16)])
    whole = one_step([(0, 16)])
    assert got.keys() == per_rank.keys()
    assert max(_rel_l2(per_rank[k], got[k]) for k in got) < 1e-10
    # and it is a different step from one process's: batch statistics of 8 are not those of 16
    assert max(_rel_l2(whole[k], got[k]) for k in got if k.startswith("model/")) > 1e-3


def test_gradient_allreduce_broadcast_and_drift_check(tmp_path):
    """Real ranks: rank 0's weights reach rank 1; the allreduced gradient (several buckets, sync BN)
    is the single-process gradient of the whole batch; a one-ulp difference is named as drift."""
    _run([sys.executable, str(ROOT / "tests" / "_mpi_worker.py"), str(tmp_path)], ranks=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["size"] == 2 and r["local_n"] == 4
        assert r["broadcast_err"] == 0.0
        assert r["buckets"] > 1 and r["buckets"] < r["params"]
        assert r["local_vs_ref_before"] > 1e-3               # a half batch alone is not the answer ...
        assert r["grad_err"] < 1e-12                         # ... the allreduced sum is
        assert abs(r["loss"] - r["ref_loss"]) < 1e-12
        assert r["bn_buffer_err"] < 1e-12
        assert r["drift_ok"]
        assert r["drift_error"] and r["drift_name"] in r["drift_error"] and "1 array" in r["drift_error"]


def test_nccl_calls_are_plumbed_in_place_on_the_current_stream(monkeypatch):
    """No GPU here: NCCL's path runs against recording stand-ins for cupy and cupy.cuda.nccl
    (argument plumbing only; a GPU machine with NCCL runs the real thing)."""
    import types
    calls = []

    class Communicator:
        def __init__(self, ndev, uid, rank):
            calls.append(("init", ndev, uid, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):
            calls.append(("allReduce", send, recv, count, dtype, op, stream))

        def bcast(self, buf, count, dtype, root, stream):
            calls.append(("bcast", buf, count, dtype, root, stream))

    nccl = types.SimpleNamespace(get_unique_id=lambda: (42,), NcclCommunicator=Communicator, NCCL_SUM=0,
                                 NCCL_FLOAT32=7, NCCL_FLOAT64=8)
    stream = types.SimpleNamespace(ptr=99)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)

    class Comm:                            # rank 1 of 2: receives rank 0's unique id
        def Get_rank(self):
            return 1

        def Get_size(self):
            return 2

        def bcast(self, obj, root=0):
            calls.append(("mpi bcast", obj, root))
            return (42,)

    comm = D._NcclComm(nccl, Comm())
    buf = types.SimpleNamespace(data=types.SimpleNamespace(ptr=1234), size=10, dtype=np.dtype(np.float64))
    comm.allreduce_sum_(buf)
    comm.broadcast_(buf, 0)
    assert calls == [("mpi bcast", None, 0), ("init", 2, (42,), 1), ("allReduce", 1234, 1234, 10, 8, 0, 99),
                     ("bcast", 1234, 10, 8, 0, 99)]
    with pytest.raises(TypeError, match="float32 or float64"):
        comm.allreduce_sum_(types.SimpleNamespace(data=buf.data, size=3, dtype=np.dtype(np.int32)))
