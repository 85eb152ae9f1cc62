"""CIFAR-10 from the official *binary* archive, parsed without pickle.

The archive ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_{1..5}.bin``
and ``test_batch.bin``. Each file is a run of 10000 records of 3073 bytes:

    1 label byte (0..9) + 3072 pixel bytes = 3 planes (R, G, B) of 32 x 32, row-major (CHW)

so a file is one ``frombuffer`` + reshape ``(N, 3073)`` and the pixels are turned NHWC
with a transpose. The archive is downloaded once into the cache directory
(``$MINIXCEPTION_CACHE``, default ``~/.cache/minixception``), its MD5 checked every time
it is opened, and nothing in it is ever unpickled.
"""
from __future__ import annotations

import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from ..cache import cache_dir, md5sum

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_FILE = "cifar-10-binary.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32


class DatasetUnavailable(RuntimeError):
    """The dataset is not cached and could not be downloaded."""


class ChecksumError(RuntimeError):
    """The archive's MD5 is not the published one (corrupt or different file)."""


def _download(url, dest: Path):
    """Download to ``dest`` via a temporary file in the same folder (no half file left)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while True:
                block = r.read(1 << 20)
                if not block:
                    break
                f.write(block)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def parse_records(buf: bytes, name="batch"):
    """Raw bytes of one ``*.bin`` file -> (x: uint8 (N, 32, 32, 3), y: int64 (N,))."""
    if len(buf) == 0 or len(buf) % RECORD:
        raise ValueError(f"CIFAR-10 {name}: expected a multiple of {RECORD} bytes "
                         f"(1 label + 3072 pixels per record), got {len(buf)}")
    rec = np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD)
    y = rec[:, 0].astype(np.int64)
    if y.max() > 9:
        raise ValueError(f"CIFAR-10 {name}: labels must lie in 0..9, got {int(y.max())}")
    x = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # CHW -> HWC
    return np.ascontiguousarray(x), y


def parse_cifar10_archive(path):
    """Read ``cifar-10-binary.tar.gz`` -> (x_train, y_train, x_test, y_test); no pickle anywhere."""
    members = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            base = os.path.basename(m.name)
            if m.isfile() and base in TRAIN_FILES + (TEST_FILE,):
                members[base] = tar.extractfile(m).read()
    missing = [f for f in TRAIN_FILES + (TEST_FILE,) if f not in members]
    if missing:
        raise ValueError(f"{path}: not a CIFAR-10 binary archive, missing {missing}")
    parts = [parse_records(members[f], f) for f in TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = parse_records(members[TEST_FILE], TEST_FILE)
    return x_train, y_train, x_test, y_test


def load_cifar10(root=None, download=True, url=CIFAR10_URL, md5=CIFAR10_MD5):
    """CIFAR-10 -> (x_train uint8 (50000, 32, 32, 3), y_train int64, x_test (10000, ...), y_test).

    ``root``: the folder holding (or to receive) ``cifar-10-binary.tar.gz``; default
    :func:`cache_dir`. ``download=False`` never touches the network. ``md5=None`` skips
    the check (for hand-made archives only).
    """
    root = Path(root).expanduser() if root is not None else cache_dir()
    path = root / CIFAR10_FILE
    if not path.exists():
        hint = (f"get {url} by hand and put it at {path} (or set MINIXCEPTION_CACHE), "
                "or use the built-in dataset instead: `--data shapes` (mx.data.load_shapes())")
        if not download:
            raise DatasetUnavailable(f"CIFAR-10 is not in the cache ({path}) and download=False; {hint}")
        try:
            _download(url, path)
        except Exception as exc:
            raise DatasetUnavailable(f"could not download CIFAR-10 from {url} ({exc}); {hint}") from exc
    if md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise ChecksumError(
                f"{path}: MD5 {got} does not match the published {md5}; the file is corrupt or "
                f"not the CIFAR-10 binary archive -- delete it and download {url} again")
    return parse_cifar10_archive(path)
