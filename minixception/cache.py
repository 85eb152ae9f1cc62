"""Where downloads are cached, and their checksums (shared by the CIFAR-10 loader and the
Keras ImageNet weights).

The cache folder is ``$MINIXCEPTION_CACHE`` when set, else ``~/.cache/minixception``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MINIXCEPTION_CACHE`` if set, else ``~/.cache/minixception``."""
    env = os.environ.get("MINIXCEPTION_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minixception"


def md5sum(path, chunk=1 << 20) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
