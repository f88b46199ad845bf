"""Every lesson notebook, run the way a student runs it: top to bottom on a fresh kernel.

Covers each ``notebooks/NN_*.ipynb`` (whoever wrote it), in three modes:

* ``tiny``: as stored, with the bundled tiny model (``GEMMA_LAB_MODEL`` empty). Exercise stubs are
  left as they are, so every ``check()`` must report "not attempted", never a failure. Each
  notebook must show at least one widget or figure.
* ``solutions``: every cell tagged ``exercise`` is replaced by the function of the same name from
  ``notebooks/for_instructors/solutions/<notebook stem>.py``, then the notebook is run; every ``check()`` must
  report that it passed. Notebooks without exercises are skipped in this mode.
* ``real_weights``: ``GEMMA_LAB_MODEL`` points at a random-weight checkpoint written by
  transformers' ``save_pretrained``, with the tiny model's ``tokenizer.model`` beside it, in a
  Gemma generation and with sizes different from the tiny model's, so a notebook that assumes
  tiny's sizes, layer count or vocabulary fails here.

Plus two lesson paths that only a particular checkpoint reaches: lesson 15's Gemma Scope section
(``GEMMA_LAB_SAE``) and lesson 16 on a Gemma 4 checkpoint.

And, without running anything: each ``.ipynb`` has its paired percent ``.py`` (in
``notebooks/for_instructors/scripts/``) with the same cells and stores no outputs; students see one
file per lesson in ``notebooks/``; each opens the standard way (a Colab badge to itself, time and learning
goals, a set-up cell that acts only on Colab, a cell where ``GEMMA_LAB_MODEL`` can be set); every
exercise cell has its solution, and a commented ``# solution("name")`` cell after it.

A check reports on one line that starts with a marker (see ``gemma_lab.exercises``): ``✔`` passed,
``✘`` failed, ``○`` not attempted; the lines are counted in the executed notebook's outputs.

One kernel per notebook and mode (the honest gate; see ``execute_notebook``), two kernels at a
time (``GEMMA_LAB_NOTEBOOK_WORKERS``). Notebooks are kept light so the whole set runs in a few
minutes on two cores. Marked slow, still in the default suite.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_support import (check_notebook_pairs, count_displayed_widgets, execute_notebook, figures_in,
                             widget_portability_problems)

from tools.colab_links import colab_url

from tools import docs_site

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
INSTRUCTORS_DIR = NOTEBOOK_DIR / "for_instructors"  # what students need not open (see jupytext.toml)
SCRIPTS_DIR = INSTRUCTORS_DIR / "scripts"
SOLUTIONS_DIR = INSTRUCTORS_DIR / "solutions"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))

PASSED, FAILED, NOT_ATTEMPTED = "✔", "✘", "○"
_RESULT_LINE = re.compile(r"^\s*([✔✘○])\s", re.MULTILINE)

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def kernel_env(model: str = "", sae: str = "") -> dict:
    """The kernel imports this checkout's gemma_lab and loads ``model`` ("" = the bundled tiny one);
    ``sae``: the SAE folder lesson 15 runs on real weights (``GEMMA_LAB_SAE``; "" = none).

    ``GEMMA_LAB_QUICK=1``: lessons that train something (18) shrink the run to a few steps.
    One intra-op thread: the lesson models are small, and on a busy machine torch's thread pool
    spinning for cores that other processes hold makes a tiny forward pass 50 times slower.
    """
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": python_path, "GEMMA_LAB_MODEL": model, "GEMMA_LAB_DTYPE": "", "GEMMA_LAB_SAE": sae,
            "OMP_NUM_THREADS": "1", "GEMMA_LAB_QUICK": "1"}


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


# --------------------------------------------------------------------------------------
# Running notebooks, two at a time
# --------------------------------------------------------------------------------------

#: Kernels run side by side (each one is a process): on two cores this nearly halves the wall time.
#: GEMMA_LAB_NOTEBOOK_WORKERS=1 runs them one after the other.
WORKERS = int(os.environ.get("GEMMA_LAB_NOTEBOOK_WORKERS", "2"))

#: Which test function runs a notebook in which mode.
MODE_OF_TEST = {"test_runs_with_the_tiny_model": "tiny", "test_runs_with_solutions_filled_in": "solutions",
                "test_runs_with_real_weights_mode": "real_weights"}


@dataclass
class Execution:
    nb: nbformat.NotebookNode
    seconds: float


class NotebookRuns:
    """Executions of (notebook, mode) on a small thread pool, each on a fresh kernel of its own.

    The session fixture starts every execution the selected tests will ask for, in test order, so
    that they overlap; each test then waits for its own. A failing notebook raises its
    ``NotebookError`` in the test that asked for it.
    """

    def __init__(self, workers: int, folder: Path, checkpoint: Path | None) -> None:
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="notebook")
        self.folder = folder  # for notebooks with the solutions filled in
        self.checkpoint = checkpoint  # the random-weight checkpoint of the real-weights mode
        self.futures: dict[tuple[Path, str], Future] = {}

    def start(self, notebook: Path, mode: str) -> None:
        if (notebook, mode) not in self.futures:
            self.futures[notebook, mode] = self.pool.submit(self._execute, notebook, mode)

    def result(self, notebook: Path, mode: str) -> Execution:
        self.start(notebook, mode)
        return self.futures[notebook, mode].result()

    def _execute(self, notebook: Path, mode: str) -> Execution:
        path, model = notebook, ""
        if mode == "solutions":
            path = self.folder / notebook.name
            nbformat.write(fill_in_solutions(notebook), path)
        elif mode == "real_weights":
            model = str(self.checkpoint)
        start = time.perf_counter()
        # Always run in the notebooks folder, as a student would (the filled-in copy lives elsewhere).
        nb = execute_notebook(path, env=kernel_env(model), timeout=300, cwd=NOTEBOOK_DIR)
        seconds = time.perf_counter() - start
        if mode == "tiny":  # the documentation site shows this run (tests/test_site.py builds it)
            docs_site.keep_executed_lesson(notebook, nb)
        return Execution(nb, seconds)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


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


@pytest.fixture(scope="session")
def runs(request, tmp_path_factory):
    """The notebook executions of this session, started up front for the selected tests."""
    wanted = []
    for item in request.session.items:
        mode = MODE_OF_TEST.get(getattr(item, "originalname", ""))
        if mode is None or Path(item.path) != Path(__file__):
            continue
        notebook = item.callspec.params["notebook"]
        if mode == "solutions" and not exercise_cells(nbformat.read(notebook, as_version=4)):
            continue  # that test skips
        wanted.append((notebook, mode))
    needs_checkpoint = any(mode == "real_weights" for _, mode in wanted)
    checkpoint = request.getfixturevalue("random_checkpoint") if needs_checkpoint else None
    runner = NotebookRuns(WORKERS, tmp_path_factory.mktemp("filled_in"), checkpoint)
    for notebook, mode in wanted:
        runner.start(notebook, mode)
    yield runner
    runner.close()


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_there_are_lesson_notebooks():
    assert NOTEBOOKS, f"no NN_*.ipynb notebooks in {NOTEBOOK_DIR}"


def test_pairs_agree_and_no_outputs_are_stored():
    problems = [p for p in check_notebook_pairs(NOTEBOOK_DIR, SCRIPTS_DIR)]
    assert not problems, "\n".join(problems)


def test_students_see_one_file_per_lesson():
    """notebooks/ as JupyterLab's file browser shows it: the .ipynb files and one folder for
    instructors (twins, solutions, test fixtures), nothing a student could open by mistake."""
    shown = sorted(p.name for p in NOTEBOOK_DIR.iterdir() if not p.name.startswith("."))
    strays = [name for name in shown if not name.endswith(".ipynb") and name != INSTRUCTORS_DIR.name]
    assert not strays, (f"notebooks/ should hold only the .ipynb lessons and for_instructors/; move {strays} "
                        f"(a lesson's percent twin belongs in {SCRIPTS_DIR.relative_to(ROOT)}/, see jupytext.toml)")
    twins = sorted(p.stem for p in SCRIPTS_DIR.glob("*.py"))
    assert twins == sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")), "every notebook has exactly one twin"


def test_every_lesson_has_the_standard_opening():
    """Colab badge to itself, time and learning goals, a set-up cell that acts only on Colab, a config cell."""
    for notebook in NOTEBOOKS:
        cells = nbformat.read(notebook, as_version=4).cells
        intro = cells[0].source
        assert colab_url(notebook.name) in intro, (
            f"{notebook.name}: the first cell has no Colab badge pointing to this notebook")
        assert "**Time:**" in intro and "Learning goals" in intro, f"{notebook.name}: no time estimate or learning goals"
        code = [cell.source for cell in cells if cell.cell_type == "code"]
        setup = next((source for source in code if "google.colab" in source), "")
        assert 'if "google.colab" in sys.modules:' in setup and "enable_custom_widget_manager()" in setup, (
            f"{notebook.name}: no guarded Colab set-up cell enabling the custom widget manager")
        assert any('os.environ["GEMMA_LAB_MODEL"]' in source for source in code), (
            f"{notebook.name}: no configuration cell where GEMMA_LAB_MODEL can be set")


def test_every_exercise_has_a_solution():
    for notebook in NOTEBOOKS:
        exercises = exercise_cells(nbformat.read(notebook, as_version=4))
        if exercises:
            fill_in_solutions(notebook)  # asserts that the file and every function exist


_SOLUTION_CELL = r'^# solution\("{name}"\)'


def exercises_without_a_solution_cell(nb) -> list[str]:
    """Names of exercises with no commented ``# solution("name")`` line in the code cells that follow
    the exercise cell up to the next markdown cell (the check cell, or a cell of its own after it)."""
    missing = []
    for index, name in exercise_cells(nb):
        pattern = re.compile(_SOLUTION_CELL.format(name=re.escape(name)), re.MULTILINE)
        found = False
        for cell in nb.cells[index + 1 :]:
            if cell.cell_type != "code":
                break
            if pattern.search(cell.source):
                found = True
                break
        if not found:
            missing.append(name)
    return missing


def test_every_exercise_has_its_solution_cell():
    """What CHANGELOG promises: after every exercise, a cell with ``# solution("name")  # uncomment to
    see one way to write it``, checked in the scripts (the pairs test keeps the notebooks equal)."""
    import jupytext

    scripts = sorted(SCRIPTS_DIR.glob("[0-9][0-9]_*.py"))
    assert scripts, f"no lesson scripts in {SCRIPTS_DIR}"
    problems = [f"{script.name}: {name}" for script in scripts
                for name in exercises_without_a_solution_cell(jupytext.read(script))]
    assert not problems, ("exercise cells without a '# solution(\"name\")  # uncomment to see one way to "
                          "write it' cell before the next markdown cell: " + ", ".join(problems))


def test_the_solution_cell_check_notices_a_missing_cell():
    exercise = nbformat.v4.new_code_cell("def f(x):\n    raise NotImplementedError",
                                         metadata={"tags": ["exercise"], "exercise": "f"})
    check_cell = nbformat.v4.new_code_cell('check("f", f)')
    solution_cell = nbformat.v4.new_code_cell('# solution("f")  # uncomment to see one way to write it')
    text = nbformat.v4.new_markdown_cell("More text.")
    nb = nbformat.v4.new_notebook(cells=[exercise, check_cell, text, solution_cell])
    assert exercises_without_a_solution_cell(nb) == ["f"]  # after the next markdown cell: too late
    nb.cells = [exercise, check_cell, solution_cell, text]
    assert exercises_without_a_solution_cell(nb) == []
    nb.cells = [exercise, nbformat.v4.new_code_cell('check("f", f)\n# solution("f")'), text]
    assert exercises_without_a_solution_cell(nb) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_with_the_tiny_model(notebook, runs):
    run = runs.result(notebook, "tiny")
    shown = count_displayed_widgets(run.nb) + figures_in(run.nb)
    assert shown >= 1, f"{notebook.name} shows no widget and no figure"
    problems = widget_portability_problems(run.nb)  # what VS Code and Colab need (test_notebook_portability.py)
    assert not problems, f"{notebook.name}: " + "; ".join(problems[:5])
    assert_stubs_not_attempted(notebook, run.nb)
    print(f"{notebook.name}: tiny model {run.seconds:.1f} s, {shown} widgets and figures")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_with_solutions_filled_in(notebook, runs):
    exercises = exercise_cells(nbformat.read(notebook, as_version=4))
    if not exercises:
        pytest.skip(f"{notebook.name} has no exercises")
    run = runs.result(notebook, "solutions")
    results = check_results(run.nb)
    assert results[FAILED] == 0 and results[NOT_ATTEMPTED] == 0, f"{notebook.name}: {results}"
    assert results[PASSED] == len(exercises), f"{notebook.name}: {len(exercises)} exercises, {results}"
    print(f"{notebook.name}: solutions {run.seconds:.1f} s, {results[PASSED]} checks passed")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_runs_with_real_weights_mode(notebook, runs):
    run = runs.result(notebook, "real_weights")
    assert count_displayed_widgets(run.nb) + figures_in(run.nb) >= 1
    assert_stubs_not_attempted(notebook, run.nb)
    print(f"{notebook.name}: random-weight checkpoint {run.seconds:.1f} s")


def assert_stubs_not_attempted(notebook: Path, nb) -> None:
    """Untouched stubs: every check reports "not attempted", none failed, none passed."""
    results, expected = check_results(nb), len(exercise_cells(nb))
    assert results[FAILED] == 0, f"{notebook.name}: an untouched exercise stub was reported as failed"
    assert results[PASSED] == 0, f"{notebook.name}: an exercise stub passed its check (the stub gives it away)"
    assert results[NOT_ATTEMPTED] == expected, (
        f"{notebook.name}: {expected} exercises but {results[NOT_ATTEMPTED]} 'not attempted' reports")


def test_gemma4_lesson_runs_on_a_gemma4_checkpoint(tmp_path):
    """Lesson 16 with GEMMA_LAB_MODEL naming a Gemma 4 checkpoint (the real-weights mode gives every lesson a
    Gemma 1/2 one): a random mixture-of-experts Gemma 4 with K=V global layers, written by transformers, with
    the tiny model's tokenizer. The sections its architecture has (K=V, experts, the router widget) run on
    it; per-layer embeddings and KV sharing, which it lacks, fall back to the lesson's random Gemma 4."""
    from hf_checkpoints import GEMMA4_MOE, write_checkpoint

    from gemma_lab.bundled import tiny_model_dir
    from gemma_lab.tokenizer import load_tokenizer

    notebook = NOTEBOOK_DIR / "16_gemma4.ipynb"
    tiny = tiny_model_dir()
    folder = tmp_path / "random_gemma4_moe"
    vocab_size = load_tokenizer(tiny / "tokenizer.model").vocab_size
    write_checkpoint(folder, 4, seed=1, vocab_size=vocab_size, **GEMMA4_MOE)
    shutil.copy(tiny / "tokenizer.model", folder / "tokenizer.model")
    nb = execute_notebook(notebook, env=kernel_env(str(folder)), timeout=300, cwd=NOTEBOOK_DIR)
    text = all_output_text(nb)
    # describe(lesson_model), the lesson's first line: the checkpoint, not the bundled tiny model.
    assert re.search(rf"Gemma 4 · 6 layers · d_model 64 · .* · from {re.escape(str(folder))}$", text, re.MULTILINE)
    assert "K=V global layers: shown on the lesson model" in text
    assert "experts: shown on the lesson model" in text
    assert ("per-layer embeddings: shown on the random Gemma 4 (the lesson model has no per-layer embeddings)"
            in text)
    assert "KV sharing: shown on the random Gemma 4 (the lesson model has no KV sharing)" in text
    assert "4 experts, top 2:" in text  # the router printout is the checkpoint's, not the random model's 8
    # The router widget's load line: on the checkpoint, not "(random weights: not a trained router)".
    assert re.search(r"layer 1: expert load \[[^\]]*\] \((?!random weights)", text)
    assert count_displayed_widgets(nb) + figures_in(nb) >= 1
    assert_stubs_not_attempted(notebook, nb)


def test_sae_lesson_runs_a_gemma_scope_folder_on_real_weights(random_checkpoint, tmp_path):
    """Lesson 15's Gemma Scope section, which runs only with GEMMA_LAB_MODEL and GEMMA_LAB_SAE set: a
    Gemma Scope 1 folder (params.npz under its released path) with random weights that fit the
    random-weight checkpoint is loaded, spliced with its error term and explored."""
    import numpy as np

    notebook = NOTEBOOK_DIR / "15_superposition_and_saes.ipynb"
    d_model = json.loads((random_checkpoint / "config.json").read_text())["hidden_size"]
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    rng, d_sae = np.random.default_rng(0), 4 * d_model
    np.savez(folder / "params.npz", W_enc=(rng.normal(size=(d_model, d_sae)) / d_model ** 0.5).astype(np.float32),
             b_enc=np.zeros(d_sae, np.float32), W_dec=(rng.normal(size=(d_sae, d_model)) / d_sae ** 0.5).astype(np.float32),
             b_dec=np.zeros(d_model, np.float32), threshold=np.full(d_sae, 0.5, np.float32))
    nb = execute_notebook(notebook, env=kernel_env(str(random_checkpoint), str(folder)), timeout=300, cwd=NOTEBOOK_DIR)
    text = all_output_text(nb)
    assert "jumprelu, blocks.1.hook_resid_post" in text, "the Gemma Scope folder was not loaded at its released site"
    assert "logits equal to the plain model's: True" in text
    assert "Set MODEL and SAE_FOLDER" not in text
