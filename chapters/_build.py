r"""Build the chapter notebooks from their sources in ``chapters/src/`` and execute them.

Each source ``chapters/src/NN_name.py`` is a plain Python file in the "percent" format:

    # %% [markdown]
    r'''
    Prose with $\LaTeX$ ...
    '''

    # %%
    code ...

A ``# %% [markdown]`` marker starts a markdown cell whose body is one (raw) triple-quoted
string; a ``# %%`` marker starts a code cell. The source files run as ordinary scripts too
(``python chapters/src/01_convolution_by_hand.py``), which is handy while editing.

Usage (from the repository root):

    python chapters/_build.py                 # build and execute every chapter, full mode
    python chapters/_build.py 01 04           # only chapters whose name starts with 01 / 04
    python chapters/_build.py --fast 07       # execute with MINIXCEPTION_FAST=1
    python chapters/_build.py --no-execute    # write the notebooks without outputs

The executed notebooks (outputs and figures included) are what is committed, so that they
read on GitHub without running; the mode that produced the outputs is recorded in each
notebook's metadata (``metadata.minixception.mode``) and in ``chapters/README.md``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"

_MARKER = re.compile(r"^# %%(?P<md> \[markdown\])?\s*$")
_STRING = re.compile(r'^\s*r?("""|\'\'\')(?P<body>.*)\1\s*$', re.S)


def parse_source(text: str):
    """Split a percent-format source into ``[("markdown" | "code", source), ...]``."""
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            m = _STRING.match(body)
            if m is None:
                raise ValueError(f"markdown cell is not one triple-quoted string:\n{body[:200]}")
            body = m.group("body").strip("\n")
        if body.strip():
            cells.append((kind, body))

    for line in text.splitlines():
        m = _MARKER.match(line)
        if m:
            flush()
            kind, lines = ("markdown" if m.group("md") else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def make_notebook(cells):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "markdown" else new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def execute(nb, workdir, fast=False, timeout=1800):
    """Run ``nb`` in place with nbclient (kernel python3); MINIXCEPTION_FAST=1 when ``fast``."""
    from nbclient import NotebookClient

    old = os.environ.get("MINIXCEPTION_FAST")
    os.environ["MINIXCEPTION_FAST"] = "1" if fast else "0"
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        if old is None:
            os.environ.pop("MINIXCEPTION_FAST", None)
        else:
            os.environ["MINIXCEPTION_FAST"] = old
    return nb


def sources(prefixes=()):
    files = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if prefixes:
        files = [f for f in files if any(f.stem.startswith(p) for p in prefixes)]
    return files


def build(src: Path, run=True, fast=False):
    import nbformat

    nb = make_notebook(parse_source(src.read_text()))
    out = HERE / (src.stem + ".ipynb")
    seconds = None
    if run:
        t0 = time.perf_counter()
        execute(nb, HERE, fast=fast)
        seconds = time.perf_counter() - t0
        nb.metadata["minixception"] = {
            "mode": "fast" if fast else "full",
            "executed": time.strftime("%Y-%m-%d", time.gmtime()),
            "seconds": round(seconds, 1),
        }
    nbformat.write(nb, out)
    return out, seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chapters", nargs="*", help="name prefixes, e.g. 01 04 (default: all)")
    ap.add_argument("--fast", action="store_true", help="execute with MINIXCEPTION_FAST=1")
    ap.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = ap.parse_args(argv)
    files = sources(args.chapters)
    if not files:
        sys.exit(f"no chapter source matches {args.chapters} in {SRC}")
    for src in files:
        out, seconds = build(src, run=not args.no_execute, fast=args.fast)
        took = "" if seconds is None else f" in {seconds:.1f} s ({'fast' if args.fast else 'full'} mode)"
        print(f"wrote {out.relative_to(HERE.parent)}{took}", flush=True)


if __name__ == "__main__":
    main()
