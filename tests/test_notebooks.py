"""Every lesson notebook, run the way a student runs it: top to bottom on a fresh kernel.

Covers each ``notebooks/NN_*.ipynb`` (whoever wrote it), in three modes:

* ``tiny``: as stored, with the bundled tiny model (``GEMMA_LAB_MODEL`` empty). Exercise stubs are
  left as they are, so every ``check()`` must report "not attempted", never a failure. Each
  notebook must show at least one widget or figure.
* ``solutions``: every cell tagged ``exercise`` is replaced by the function of the same name from
  ``notebooks/solutions/<notebook stem>.py``, then the notebook is run; every ``check()`` must
  report that it passed. Notebooks without exercises are skipped in this mode.
* ``real_weights``: ``GEMMA_LAB_MODEL`` points at a random-weight checkpoint written by
  transformers' ``save_pretrained``, with the tiny model's ``tokenizer.model`` beside it, in a
  Gemma generation and with sizes different from the tiny model's, so a notebook that assumes
  tiny's sizes, layer count or vocabulary fails here.

Plus: each ``.ipynb`` has its paired percent ``.py`` with the same cells, and stores no outputs.

A check reports on one line that starts with a marker (see ``gemma_lab.exercises``): ``✔`` passed,
``✘`` failed, ``○`` not attempted; the lines are counted in the executed notebook's outputs.

One kernel per notebook and mode (the honest gate; see ``execute_notebook``). Notebooks are
kept light so the whole set runs in a few minutes on two cores. Marked slow, still in the
default suite.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_support import check_notebook_pairs, count_displayed_widgets, execute_notebook, figures_in

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
SOLUTIONS_DIR = NOTEBOOK_DIR / "solutions"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))

PASSED, FAILED, NOT_ATTEMPTED = "✔", "✘", "○"
_RESULT_LINE = re.compile(r"^\s*([✔✘○])\s", re.MULTILINE)

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def kernel_env(model: str = "") -> dict:
    """The kernel imports this checkout's gemma_lab and loads ``model`` ("" = the bundled tiny one).

    One intra-op thread: the lesson models are small, and on a busy machine torch's thread pool
    spinning for cores that other processes hold makes a tiny forward pass 50 times slower.
    """
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": python_path, "GEMMA_LAB_MODEL": model, "GEMMA_LAB_DTYPE": "", "OMP_NUM_THREADS": "1"}


def exercise_cells(nb) -> list[tuple[int, str]]:
    """(cell index, exercise name) of every cell tagged ``exercise``."""
    found = []
    for index, cell in enumerate(nb.cells):
        if "exercise" in cell.metadata.get("tags", []):
            name = cell.metadata.get("exercise")
            assert name, f"cell {index} is tagged 'exercise' but has no 'exercise' name in its metadata"
            found.append((index, name))
    return found


def solution_sources(path: Path) -> dict[str, str]:
    """Top-level function name -> its source (decorators included) in a solutions file."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    sources = {}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            sources[node.name] = "\n".join(lines[first - 1 : node.end_lineno])
    return sources


def fill_in_solutions(notebook: Path) -> nbformat.NotebookNode:
    """The notebook with each exercise cell replaced by the solution function of the same name."""
    nb = nbformat.read(notebook, as_version=4)
    solutions_file = SOLUTIONS_DIR / f"{notebook.stem}.py"
    assert solutions_file.is_file(), f"{notebook.name} has exercises but {solutions_file} is missing"
    sources = solution_sources(solutions_file)
    for index, name in exercise_cells(nb):
        assert name in sources, f"{solutions_file.name} has no function {name!r} (cell {index} of {notebook.name})"
        nb.cells[index].source = sources[name]
    return nb


def all_output_text(nb) -> str:
    """Every text an executed notebook printed or displayed (plain text and HTML)."""
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(_joined(output.get("text")))
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in output.get("data", {}):
                    texts.append(_joined(output["data"][mime]))
    return "\n".join(texts)


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def check_results(nb) -> dict[str, int]:
    """How many check() lines of each kind the executed notebook shows."""
    counts = {PASSED: 0, FAILED: 0, NOT_ATTEMPTED: 0}
    for marker in _RESULT_LINE.findall(all_output_text(nb)):
        counts[marker] += 1
    return counts


def run(path: Path, env: dict) -> tuple[nbformat.NotebookNode, float]:
    start = time.perf_counter()
    nb = execute_notebook(path, env=env, timeout=300)
    return nb, time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A transformers checkpoint with random weights and the tiny model's tokenizer.

    Its generation differs from the tiny model's (Gemma 2 unless tiny is Gemma 2, then Gemma 1) and
    so do its sizes (4 layers, d_model 64, 4 heads over 2 kv heads, d_head 16, sliding window 8).
    """
    from hf_checkpoints import write_checkpoint

    from gemma_lab.bundled import tiny_model_dir
    from gemma_lab.tokenizer import load_tokenizer

    tiny = tiny_model_dir()
    tiny_family = {"gemma": 1, "gemma2": 2}.get(json.loads((tiny / "config.json").read_text()).get("model_type"), 3)
    family = 1 if tiny_family == 2 else 2
    folder = tmp_path_factory.mktemp("random_gemma")
    vocab_size = load_tokenizer(tiny / "tokenizer.model").vocab_size
    write_checkpoint(folder, family, vocab_size=vocab_size)
    shutil.copy(tiny / "tokenizer.model", folder / "tokenizer.model")
    return folder


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_there_are_lesson_notebooks():
    assert NOTEBOOKS, f"no NN_*.ipynb notebooks in {NOTEBOOK_DIR}"


def test_pairs_agree_and_no_outputs_are_stored():
    problems = [p for p in check_notebook_pairs(NOTEBOOK_DIR)]
    assert not problems, "\n".join(problems)


def test_every_exercise_has_a_solution():
    for notebook in NOTEBOOKS:
        exercises = exercise_cells(nbformat.read(notebook, as_version=4))
        if exercises:
            fill_in_solutions(notebook)  # asserts that the file and every function exist


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_with_the_tiny_model(notebook):
    nb, seconds = run(notebook, kernel_env())
    shown = count_displayed_widgets(nb) + figures_in(nb)
    assert shown >= 1, f"{notebook.name} shows no widget and no figure"
    results = check_results(nb)
    assert results[FAILED] == 0, f"{notebook.name}: an untouched exercise stub was reported as failed"
    assert results[PASSED] == 0, f"{notebook.name}: an exercise stub passed its check (the stub gives it away)"
    assert results[NOT_ATTEMPTED] == len(exercise_cells(nb)), (
        f"{notebook.name}: {len(exercise_cells(nb))} exercises but {results[NOT_ATTEMPTED]} 'not attempted' reports"
    )
    print(f"{notebook.name}: tiny {seconds:.1f} s, {shown} widgets/figures")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_with_solutions_filled_in(notebook, tmp_path):
    exercises = exercise_cells(nbformat.read(notebook, as_version=4))
    if not exercises:
        pytest.skip(f"{notebook.name} has no exercises")
    filled = tmp_path / notebook.name
    nbformat.write(fill_in_solutions(notebook), filled)
    # Run from the notebooks folder, as the student would, although the file is a temporary copy.
    start = time.perf_counter()
    nb = execute_notebook(filled, env=kernel_env(), timeout=300, cwd=NOTEBOOK_DIR)
    seconds = time.perf_counter() - start
    results = check_results(nb)
    assert results[FAILED] == 0 and results[NOT_ATTEMPTED] == 0, f"{notebook.name}: {results}"
    assert results[PASSED] == len(exercises), f"{notebook.name}: {len(exercises)} exercises, {results}"
    print(f"{notebook.name}: solutions {seconds:.1f} s, {results[PASSED]} checks passed")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_with_real_weights_mode(notebook, random_checkpoint):
    nb, seconds = run(notebook, kernel_env(str(random_checkpoint)))
    assert count_displayed_widgets(nb) + figures_in(nb) >= 1
    assert check_results(nb)[FAILED] == 0
    print(f"{notebook.name}: real-weights mode {seconds:.1f} s")
