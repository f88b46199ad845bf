"""The lessons open the same way in JupyterLab, VS Code and Colab (as far as can be checked headless).

* Colab: each lesson links to itself on Colab with a text link (no remote badge image, which
  offline is a broken picture), at the repository named once in pyproject.toml
  (``tools/colab_links.py`` writes the link and the set-up cell; nothing may be out of date). The
  set-up cell, run with a stand-in ``google.colab``, installs gemma_lab from that repository with
  the running torch pinned, so pip keeps Colab's own build, and turns on Colab's widget manager.
* VS Code: each ``.ipynb`` is valid nbformat 4.5 (cell ids), runs on the ``python3`` kernel, uses
  no JupyterLab-only features (magics beyond a few portable ones, JavaScript, HTML that needs
  JupyterLab's styles, remote images). The widget state of executed lessons (ipywidgets 8, core
  modules only) is checked where tests/test_notebooks.py runs them
  (``jupyter_support.widget_portability_problems``); JupyterLab 4 in a real browser is
  tests/test_browser.py.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch
from packaging.requirements import Requirement

from tools import colab_links

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Magics every front end runs (IPython's own); anything else, e.g. %%javascript or %matplotlib widget
# (needs ipympl's front-end extension), is JupyterLab-specific or needs an extension.
PORTABLE_MAGICS = {"%time", "%%time", "%timeit", "%%timeit", "%matplotlib inline", "%pip", "%%capture"}
MAGIC = re.compile(r"^\s*(%%?\w+(?: \w+)?)", re.M)
REMOTE_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*https?:|<img[^>]+src=[\"']?https?:", re.I)
FRONT_END_HTML = re.compile(r"<script|<style|<iframe|class=[\"']?jp-", re.I)


def test_links_and_setup_cells_follow_the_repository_in_pyproject():
    assert colab_links.out_of_date() == [], "run python -m tools.colab_links --update"
    repo = colab_links.repository()
    for notebook in LESSONS:
        intro = nbformat.read(notebook, as_version=4).cells[0].source
        assert f"[Open in Colab]({colab_links.colab_url(notebook.name, repo)})" in intro
        assert not REMOTE_IMAGE.search(intro), f"{notebook.name}: a remote image in the first cell"


@pytest.mark.parametrize("notebook", LESSONS, ids=[p.stem for p in LESSONS])
def test_the_colab_setup_cell_keeps_colabs_torch(notebook, monkeypatch):
    cells = nbformat.read(notebook, as_version=4).cells
    setup = next(cell.source for cell in cells if cell.cell_type == "code" and "google.colab" in cell.source)
    ran, enabled = [], []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: enabled.append(True))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr("subprocess.run", lambda args, **kw: ran.append((args, kw)))
    exec(compile(setup, f"{notebook.name}: set-up cell", "exec"), {})
    assert enabled == [True]
    [(args, options)] = ran
    assert args[:5] == [sys.executable, "-m", "pip", "install", "-q"] and options == {"check": True}
    requirements = [Requirement(arg) for arg in args[5:]]
    pins = [r for r in requirements if r.name == "torch"]
    assert pins and all(p.specifier.contains(torch.__version__, prereleases=True) for p in pins), (
        f"{notebook.name}: the install does not keep the torch already there ({torch.__version__})")
    [package] = [r for r in requirements if r.name == "gemma_lab"]
    assert package.url == f"git+{colab_links.repository()}" and not package.extras  # no [lab]: Colab is the lab


@pytest.mark.parametrize("notebook", LESSONS, ids=[p.stem for p in LESSONS])
def test_lessons_use_nothing_only_jupyterlab_has(notebook):
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) >= (4, 5) and all(cell.get("id") for cell in nb.cells), (
        f"{notebook.name}: cells without ids (nbformat < 4.5); VS Code rewrites the whole file on save")
    assert nb.metadata.kernelspec.name == "python3" and nb.metadata.kernelspec.language == "python"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            magics = {m.strip() for m in MAGIC.findall(cell.source)}
            assert magics <= PORTABLE_MAGICS, f"{notebook.name} cell {index}: {sorted(magics - PORTABLE_MAGICS)}"
            assert "Javascript(" not in cell.source, f"{notebook.name} cell {index}: JavaScript output"
        else:
            assert not REMOTE_IMAGE.search(cell.source), f"{notebook.name} cell {index}: a remote image"
            assert not FRONT_END_HTML.search(cell.source), f"{notebook.name} cell {index}: front-end-specific HTML"
            for image in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", cell.source):  # local images exist
                assert (notebook.parent / image).is_file(), f"{notebook.name} cell {index}: {image} is missing"
