"""The run folder: where a run writes, and the rules that keep one run from destroying another.

    out = fresh_folder("runs/train")          # runs/train, else runs/train-2, runs/train-3, ...
    with claim(out, resume=None, overwrite=False):
        ...                                   # train; the folder is ours until the block ends

A folder *holds a run* when it has a ``checkpoint.npz`` or a ``metrics.csv``. ``claim`` refuses
such a folder unless the caller resumes it (``resume=`` a checkpoint inside that folder) or
replaces it (``overwrite=True``: the run's own files are removed, nothing else). It checks that the folder can be written, takes
the folder's lock file (``.lock``: the owner's pid and host) so a second process writing there at
the same time is refused by name, and removes the temporary files a killed save left behind.
A lock whose process is gone (same host, pid not running) is stale: it is taken over, and said so.
Claims nest within one process, so the command line can claim a folder before loading the data
and the trainer claim it again.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

LOCK = ".lock"
RUN_FILES = ("checkpoint.npz", "metrics.csv", "curves.png")   # what a run writes (and --overwrite removes)
TEMP_GLOB = ".ckpt-*.tmp"                                    # checkpoint.save_checkpoint's temporary files

_held = {}          # resolved folder -> nesting depth of this process's claims


class RunFolderError(RuntimeError):
    """The run folder cannot be used: it holds a run, another process writes there, or it is not writable."""


def holds_run(folder) -> bool:
    folder = Path(folder)
    return (folder / RUN_FILES[0]).exists() or (folder / RUN_FILES[1]).exists()


def fresh_folder(base) -> Path:
    """``base`` when it is free (missing or empty), else the first free ``base-2``, ``base-3``, ..."""
    base = Path(base)
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_writable(folder, flag="--out"):
    """Create ``folder`` if needed and prove a file can be written there (RunFolderError otherwise)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{flag} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(f"{flag} {folder}: cannot write there ({exc.strerror or exc})") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # alive, owned by someone else
        return True
    return True


def _read_lock(path):
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _take_lock(folder: Path):
    """Create ``folder/.lock`` for this process; refuse a live owner, take over a stale one."""
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            info = _read_lock(path)
            if info is not None and info.get("host") != me["host"]:
                raise RunFolderError(
                    f"{folder}: locked by pid {info['pid']} on host {info.get('host')}, which this machine "
                    f"cannot check; if that run is over, delete {path}")
            if info is not None and _pid_alive(info["pid"]):
                raise RunFolderError(f"{folder}: another run is writing there (pid {info['pid']} on host "
                                     f"{info.get('host')}); wait for it, or choose another --out")
            what = f"of pid {info['pid']}, no longer running" if info else "(unreadable)"
            print(f"note: taking over the stale lock {path} {what}", file=sys.stderr, flush=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise RunFolderError(f"{folder}: another process took the lock {path} at the same moment")


def _release_lock(folder: Path):
    path = folder / LOCK
    info = _read_lock(path)
    if info is not None and info["pid"] == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def claim(folder, resume=None, overwrite=False, flag="--out"):
    """Hold ``folder`` for one run (see the module docstring) -> its Path.

    resume: the checkpoint being continued, or None. A folder holding a run is accepted for a
      resume of a checkpoint inside it; another run's folder is still refused (or overwritten).
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:                     # nested: the outer claim already checked and locked
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    check_writable(folder, flag)
    _take_lock(folder)
    _held[key] = 1
    try:
        for tmp in folder.glob(TEMP_GLOB):       # a save killed mid-write; we hold the lock, none is ours
            with contextlib.suppress(OSError):
                tmp.unlink()
        ours = resume is not None and Path(resume).resolve().parent == folder.resolve()
        if holds_run(folder) and not ours:
            if not overwrite:
                raise RunFolderError(
                    f"{folder} already holds a run ({', '.join(n for n in RUN_FILES if (folder / n).exists())}); "
                    f"continue it with --resume {folder / RUN_FILES[0]}, replace it with --overwrite, "
                    f"or choose another {flag}")
            for name in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
        yield folder
    finally:
        del _held[key]
        _release_lock(folder)
