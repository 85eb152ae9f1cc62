"""The notebook chapters run top to bottom (fast mode), and are built from their sources.

Each chapter is executed with ``MINIXCEPTION_FAST=1`` by nbclient in a temporary copy (the
committed notebooks, outputs and figures included, are never rewritten here). A cell that
raises -- including a failed ``assert`` on one of the chapter's claims -- fails the test.
"""
import os
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
NOTEBOOKS = sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 600          # seconds per cell; fast mode keeps every chapter well under a minute

sys.path.insert(0, str(CHAPTERS))
import _build  # noqa: E402  (chapters/_build.py: the source parser)


def test_every_chapter_is_built_and_listed():
    """Every source has its notebook, and chapters/README.md links every notebook."""
    built = {nb.stem for nb in NOTEBOOKS}
    srcs = {p.stem for p in (CHAPTERS / "src").glob("[0-9][0-9]_*.py")}
    assert srcs and srcs == built, f"sources without notebooks: {srcs - built}; notebooks without sources: {built - srcs}"
    readme = (CHAPTERS / "README.md").read_text()
    assert all(f"{name}.ipynb" in readme for name in built), "chapters/README.md must link every chapter"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_executes_in_fast_mode(path, tmp_path, monkeypatch):
    before = path.read_bytes()
    work = tmp_path / path.name
    shutil.copy(path, work)
    nb = nbformat.read(work, as_version=4)
    for cell in nb.cells:                      # start from a clean notebook, as a reader would
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("MINIXCEPTION_FAST", "1")
    # One BLAS thread in the notebook kernel: on a busy 2-core machine OpenBLAS's threaded GEMM
    # with a long inner dimension (x^T dy in the 1x1 convolutions' backward) was measured 100x+
    # slower than single-threaded, turning seconds into minutes. The chapters' correctness does
    # not depend on it; an explicit setting in the environment wins.
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()               # raises CellExecutionError naming the cell on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert path.read_bytes() == before     # the committed notebook is untouched


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_matches_its_source_and_is_executed(path):
    """The committed notebook is built from chapters/src/<name>.py and carries its outputs."""
    src = CHAPTERS / "src" / (path.stem + ".py")
    assert src.exists(), f"{path.name} has no source {src}"
    want = _build.parse_source(src.read_text())
    nb = nbformat.read(path, as_version=4)
    got = [(c.cell_type, c.source) for c in nb.cells]
    assert got == want, f"{path.name} is out of date: run `python chapters/_build.py {path.stem[:2]}`"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name} was committed unexecuted"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert nb.metadata.get("minixception", {}).get("mode") in ("full", "fast")
    figures = [o for c in code for o in c.outputs if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert figures, f"{path.name} has no figure"


def test_source_parser_splits_cells():
    text = '# %% [markdown]\nr"""\n# Title\n$x$\n"""\n\n# %%\nx = 1\n\n# %%\ny = 2\n'
    assert _build.parse_source(text) == [("markdown", "# Title\n$x$"), ("code", "x = 1"), ("code", "y = 2")]
    with pytest.raises(ValueError):
        _build.parse_source("# %% [markdown]\nnot a string\n")
