"""Data: the CIFAR-10 binary parser on a written archive, checksum and offline errors,
the built-in shapes data's determinism, the batch iterator and its augmentation."""
import hashlib
import io
import tarfile

import numpy as np
import pytest

import minixception as mx
from minixception.data import cifar10 as C
from minixception.data.iterator import BatchIterator, channel_stats, normalize, random_crop_flip


def _write_archive(path, n_per_file=7, seed=0):
    """A small archive in the official format: cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin,
    each record 1 label byte + 3072 bytes (R, G, B planes of 32x32). Returns the expected arrays."""
    rng = np.random.default_rng(seed)
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in C.TRAIN_FILES + (C.TEST_FILE,):
            chw = rng.integers(0, 256, size=(n_per_file, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, size=n_per_file, dtype=np.uint8)
            buf = b"".join(bytes([labels[i]]) + chw[i].tobytes() for i in range(n_per_file))
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(buf)
            tar.addfile(info, io.BytesIO(buf))
            expected[name] = (chw.transpose(0, 2, 3, 1), labels.astype(np.int64))
    return expected


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cifar10_parser_reads_written_archive(tmp_path):
    path = tmp_path / C.CIFAR10_FILE
    exp = _write_archive(path)
    x_tr, y_tr, x_te, y_te = mx.data.load_cifar10(root=tmp_path, download=False, md5=_md5(path))
    assert x_tr.shape == (35, 32, 32, 3) and x_tr.dtype == np.uint8
    assert y_tr.dtype == np.int64 and x_te.shape == (7, 32, 32, 3)
    np.testing.assert_array_equal(x_tr, np.concatenate([exp[f][0] for f in C.TRAIN_FILES]))
    np.testing.assert_array_equal(y_tr, np.concatenate([exp[f][1] for f in C.TRAIN_FILES]))
    np.testing.assert_array_equal(x_te, exp[C.TEST_FILE][0])
    np.testing.assert_array_equal(y_te, exp[C.TEST_FILE][1])
    # NHWC, not CHW: pixel (row 1, col 2) of the green plane of the first image
    with tarfile.open(path) as tar:
        raw = tar.extractfile("cifar-10-batches-bin/data_batch_1.bin").read()
    assert x_tr[0, 1, 2, 1] == raw[1 + 1 * 1024 + 1 * 32 + 2] and y_tr[0] == raw[0]


def test_cifar10_cache_dir_from_env(tmp_path, monkeypatch):
    path = tmp_path / C.CIFAR10_FILE
    _write_archive(path, n_per_file=2)
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path))
    assert mx.data.cache_dir() == tmp_path
    x_tr, *_ = mx.data.load_cifar10(download=False, md5=_md5(path))
    assert x_tr.shape == (10, 32, 32, 3)


def test_cifar10_checksum_failure(tmp_path):
    _write_archive(tmp_path / C.CIFAR10_FILE, n_per_file=2)
    with pytest.raises(mx.data.ChecksumError, match="MD5"):
        mx.data.load_cifar10(root=tmp_path, download=False)    # the published MD5: does not match


def test_cifar10_offline_error_names_url_cache_and_alternative(tmp_path, monkeypatch):
    def no_network(url, dest):
        raise OSError("network is unreachable")
    monkeypatch.setattr(C, "_download", no_network)
    with pytest.raises(mx.data.DatasetUnavailable) as ei:
        mx.data.load_cifar10(root=tmp_path)
    msg = str(ei.value)
    assert C.CIFAR10_URL in msg and str(tmp_path / C.CIFAR10_FILE) in msg and "--data shapes" in msg
    with pytest.raises(mx.data.DatasetUnavailable, match="download=False"):
        mx.data.load_cifar10(root=tmp_path, download=False)


def test_cifar10_bad_record_length_refused():
    with pytest.raises(ValueError, match="3073"):
        C.parse_records(b"\x00" * 3072)


def test_shapes_deterministic_from_seed():
    a = mx.data.load_shapes(60, 20, seed=3)
    b = mx.data.load_shapes(60, 20, seed=3)
    c = mx.data.load_shapes(60, 20, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    x, y, xt, yt = a
    assert x.shape == (60, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [6] * 10          # balanced
    assert not np.array_equal(x[:20], xt)                              # test is not a copy of train


def test_shapes_classes_differ_in_content():
    """Each class's mean image is not a constant: objects are drawn (and not all the same)."""
    x, y = mx.data.make_shapes(200, seed=0)
    assert x.std() > 20
    means = np.stack([x[y == k].astype(float).mean(0) for k in range(10)])
    assert len({m.tobytes() for m in means}) == 10


def test_normalize_per_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 8, 8, 3)).astype(np.uint8)
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(std, x.reshape(-1, 3).std(0))
    z = normalize(x, mean, std)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1, atol=1e-4)


def test_random_crop_flip_is_a_shifted_or_mirrored_window():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 2)).astype(np.float32)
    y = random_crop_flip(x, np.random.default_rng(1), pad=2)
    oy, ox, fl = mx.data.draw_crop_flip(np.random.default_rng(1), 64, pad=2)
    assert fl.any() and (~fl).any() and len(set(oy.tolist())) > 1
    xpad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(64):
        win = xpad[i, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        np.testing.assert_array_equal(y[i], win[:, ::-1] if fl[i] else win)


def test_batch_iterator_shuffles_with_seed_and_covers_everything():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=3)
    y = np.arange(10, dtype=np.int64)
    it = lambda seed: BatchIterator(x, y, 4, [0, 0, 0], [1, 1, 1], shuffle=True, rng=seed)
    a = np.concatenate([yb for _, yb in it(0)])
    b = np.concatenate([yb for _, yb in it(0)])
    c = np.concatenate([yb for _, yb in it(1)])
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(10)) and a.tolist() != list(range(10))
    assert a.tolist() != c.tolist()
    for xb, yb in it(0):
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb.astype(np.float32))   # images follow labels
    assert len(it(0)) == 3


def test_batch_iterator_skip_replays_random_draws():
    """epoch(skip=k) yields exactly the batches after the first k of an uninterrupted epoch."""
    x, y = mx.data.make_shapes(40, seed=1)
    mean, std = channel_stats(x)
    full = list(BatchIterator(x, y, 8, mean, std, shuffle=True, augment=True, rng=5))
    part = list(BatchIterator(x, y, 8, mean, std, shuffle=True, augment=True, rng=5).epoch(skip=2))
    assert len(part) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], part):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_batch_iterator_draw_protocol():
    """The generator's calls are fixed (checkpoints save its state and resume replays them):
    one permutation per epoch, then per batch the crop/flip draws of all its images."""
    x, y = mx.data.make_shapes(21, seed=2)
    mean, std = channel_stats(x)
    got = list(BatchIterator(x, y, 8, mean, std, shuffle=True, augment=True, rng=np.random.default_rng(9)))
    rng = np.random.default_rng(9)
    order = rng.permutation(21)
    assert len(got) == 3
    for k, (xb, yb) in enumerate(got):
        idx = order[8 * k:8 * k + 8]
        draws = mx.data.draw_crop_flip(rng, len(idx))
        np.testing.assert_array_equal(yb, y[idx])
        np.testing.assert_array_equal(xb, mx.data.crop_flip(normalize(x[idx], mean, std), *draws))


def test_crop_flip_wants_one_draw_per_image():
    x = np.zeros((3, 4, 4, 1), np.float32)
    oy, ox, fl = mx.data.draw_crop_flip(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="expected 3 draws"):
        mx.data.crop_flip(x, oy, ox, fl)


def test_load_dataset_subset():
    d = mx.data.load_dataset("shapes", subset_size=30, seed=0)
    assert d["x_train"].shape[0] == 30 and d["x_test"].shape[0] == 200 and len(d["classes"]) == 10
    with pytest.raises(ValueError, match="unknown dataset"):
        mx.data.load_dataset("mnist")
