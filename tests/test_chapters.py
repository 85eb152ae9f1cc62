"""The notebook chapters run top to bottom (fast mode), and are built from their sources.

Each chapter is executed with ``MINIXCEPTION_FAST=1`` by nbclient in a temporary copy (the
committed notebooks, outputs and figures included, are never rewritten here). A cell that
raises -- including a failed ``assert`` on one of the chapter's claims -- fails the test.
"""
import os
import re
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_source_listings_find_every_marked_line(path):
    """A listing of the package's code (mx.diagrams.show_source) whose mark matched no line says
    so in its output; a committed notebook must carry no such note (the code moved under it)."""
    nb = nbformat.read(path, as_version=4)
    notes = [text for c in nb.cells if c.cell_type == "code" for o in c.outputs
             for text in [o.get("text", "")] + [str(v) for v in o.get("data", {}).values()]
             if "no line of this version matches" in text]
    assert not notes, f"{path.name}: a show_source mark found no line: {notes[0][-300:]}"


SOURCES = sorted((CHAPTERS / "src").glob("[0-9][0-9]_*.py"))
CORE = ("01", "03", "04", "05", "07")     # the chapters that derive ops: each shows its code and has a gradcheck exercise


@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_chapter_has_exercises_with_hints_and_solutions(src):
    cells = _build.parse_source(src.read_text())
    md = [body for kind, body in cells if kind == "markdown"]
    ex = next((i for i, (kind, body) in enumerate(cells) if kind == "markdown" and "## Exercises" in body), None)
    assert ex is not None, f"{src.name}: no '## Exercises' section"
    exercises = cells[ex][1].split("## Exercises", 1)[1].split("## Solutions", 1)[0]
    numbered = [line for line in exercises.splitlines() if re.match(r"\d+\. ", line)]
    hints = exercises.count("<summary>Hint</summary>")
    assert numbered and hints == len(numbered), f"{src.name}: {len(numbered)} exercises but {hints} hints"
    assert "## Solutions" in cells[ex][1] or any("## Solutions" in b for b in md[md.index(cells[ex][1]):])
    solutions = [body for kind, body in cells[ex + 1:] if kind == "code"]
    assert solutions, f"{src.name}: the Solutions section has no code"
    if src.stem[:2] in CORE:
        assert any("mx.gradcheck.check_function" in body for body in solutions), \
            f"{src.name}: a core chapter needs a write-your-own-op exercise checked with mx.gradcheck"
        assert any("show_source(" in body for kind, body in cells if kind == "code"), \
            f"{src.name}: a core chapter shows the package's code for what it derives"


@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_chapter_cites_nothing_outside_the_repository(src):
    text = src.read_text()
    # the project's private design notes, a folder beside the checkout, a machine's absolute path
    outside = re.compile(r"DESIGN\.md|\.\./shared|/work/|design notes")
    found = outside.findall(text)
    assert not found, f"{src.name} cites {found}, which is not part of the repository"


def test_source_parser_splits_cells():
    text = '# %% [markdown]\nr"""\n# Title\n$x$\n"""\n\n# %%\nx = 1\n\n# %%\ny = 2\n'
    assert _build.parse_source(text) == [("markdown", "# Title\n$x$"), ("code", "x = 1"), ("code", "y = 2")]
    with pytest.raises(ValueError):
        _build.parse_source("# %% [markdown]\nnot a string\n")
