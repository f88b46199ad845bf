"""The lessons' "Open in Colab" link and Colab set-up cell, made from the repository in pyproject.toml.

    python -m tools.colab_links            # list the notebooks whose link or set-up cell is out of date
    python -m tools.colab_links --update   # rewrite them (the script, then the paired .ipynb via jupytext)

The repository address is written once, as ``[project.urls] Repository`` in ``pyproject.toml``;
a fork changes it there and runs ``--update``. Every lesson (``notebooks/NN_*.ipynb``, edited through
its twin ``notebooks/for_instructors/scripts/NN_*.py``) then opens with

* a text link to itself on Colab: no badge image, which would be a broken picture offline and is
  fetched from a remote server by every front end that shows the notebook;
* a set-up cell that acts on Colab only: it installs gemma_lab from that repository with Colab's
  own torch pinned (``torch==<the version installed>``), so pip keeps the CUDA build Colab ships
  instead of replacing it (the failure SAELens users met on Colab), and turns on Colab's widget
  manager, without which ipywidgets do not show.

``tests/test_notebook_portability.py`` checks that nothing is out of date. A developer tool, run
from the repository root; imports the standard library only (jupytext when updating).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCRIPTS = NOTEBOOKS / "for_instructors" / "scripts"  # the percent-format twins (jupytext.toml pairs them)
BRANCH = "main"

_LINK_LINE = re.compile(r"^# (\[!\[Open In Colab\]\([^)]*\)\]|\*\*\[Open in Colab\])\(([^)]*)\)(\*\*)?.*$", re.M)
_CELL = re.compile(r"^# %%.*?(?=^# %%|\Z)", re.M | re.S)


def repository() -> str:
    """``[project.urls] Repository`` from pyproject.toml, e.g. https://github.com/OWNER/NAME."""
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    url = urls.get("Repository", "").rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise SystemExit(f"pyproject.toml: [project.urls] Repository must be https://github.com/OWNER/NAME "
                         f"(Colab opens notebooks from GitHub), got {url!r}")
    return url


def colab_url(notebook: str, repo: str | None = None) -> str:
    """The address that opens ``notebooks/<notebook>`` (an .ipynb name) of the repository on Colab."""
    path = (repo or repository()).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{notebook}"


def link_line(notebook: str, repo: str | None = None) -> str:
    return f"# **[Open in Colab]({colab_url(notebook, repo)})**"


def setup_cell(repo: str | None = None) -> str:
    """The set-up cell, as it stands in a percent-format script (``# %%`` line included)."""
    return f'''# %%
# Set-up. On Google Colab this installs gemma_lab (keeping Colab's own torch) and turns on its
# widgets; anywhere else it does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    import torch  # Colab's build: pinned below, so pip keeps it instead of installing another

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"torch=={{torch.__version__}}",
                    "gemma_lab @ git+{repo or repository()}"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

'''


def lessons() -> list[Path]:
    return sorted(SCRIPTS.glob("[0-9][0-9]_*.py"))


def updated(script: Path, repo: str) -> str:
    """The script's text with its link line and set-up cell as they should be."""
    text = script.read_text(encoding="utf-8")
    notebook = script.with_suffix(".ipynb").name
    text, links = _LINK_LINE.subn(lambda _: link_line(notebook, repo), text, count=1)
    if not links:
        raise SystemExit(f"{script}: no 'Open in Colab' link line in its first cell to update")
    cells = [match for match in _CELL.finditer(text) if 'if "google.colab" in sys.modules:' in match.group(0)]
    if len(cells) != 1:
        raise SystemExit(f"{script}: expected one Colab set-up cell, found {len(cells)}")
    return text[: cells[0].start()] + setup_cell(repo) + text[cells[0].end():]


def out_of_date(repo: str | None = None) -> list[Path]:
    repo = repo or repository()
    return [script for script in lessons() if updated(script, repo) != script.read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.colab_links", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the notebooks that are out of date")
    args = parser.parse_args(argv)
    repo = repository()
    stale = out_of_date(repo)
    if not args.update:
        for script in stale:
            print(f"{script.relative_to(ROOT)}: out of date (run python -m tools.colab_links --update)")
        return 1 if stale else 0
    for script in stale:
        script.write_text(updated(script, repo), encoding="utf-8")
        subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--sync", str(script)], check=True)
        print(f"updated {script.relative_to(ROOT)} and notebooks/{script.with_suffix('.ipynb').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
