"""What makes the package feel finished: one version, a changelog that names it, a fast --help.

* The version is written once, in ``gemma_lab/__init__.py``; pyproject.toml reads it from there
  (hatch's dynamic version) and ``gemma-lab --version`` prints it.
* CHANGELOG.md has a section for it (or an [Unreleased] one above it).
* ``gemma-lab --help`` answers without importing torch (nor numpy, matplotlib, ipywidgets,
  huggingface_hub): checked in a fresh interpreter with ``-X importtime``, which lists every module
  imported, so nothing imported lazily by a later change can hide.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import gemma_lab

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "matplotlib", "ipywidgets", "huggingface_hub", "safetensors", "sentencepiece")


def test_the_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "gemma_lab/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", gemma_lab.__version__)


def test_the_changelog_names_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert versions, "CHANGELOG.md has no '## [version]' sections"
    released = [v for v in versions if v != "Unreleased"]
    assert released and released[0] == gemma_lab.__version__, (
        f"the newest released section of CHANGELOG.md is {released[:1]}, the package says {gemma_lab.__version__}")


def modules_imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "gemma_lab", *args], cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""}, capture_output=True, text=True, timeout=120)
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, names


@pytest.mark.parametrize("args", [("--help",), ("download", "--help"), ("--version",)])
def test_help_answers_without_importing_torch(args):
    done, imported = modules_imported(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gemma_lab.cli" in imported  # the listing works
    heavy = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert not heavy, f"gemma-lab {' '.join(args)} imported {heavy[:5]}"
    if args == ("--version",):
        assert done.stdout.strip() == f"gemma-lab {gemma_lab.__version__}"
    else:
        assert "usage: gemma-lab" in done.stdout


def test_the_package_facade_imports_lazily_and_completely():
    imported = subprocess.run([sys.executable, "-c", "import sys, gemma_lab; print(sorted(sys.modules))"],
                              env={"PYTHONPATH": str(ROOT), "PATH": ""}, capture_output=True, text=True, timeout=120)
    assert "'torch'" not in imported.stdout, "import gemma_lab imported torch"
    for name in gemma_lab.__all__:  # every advertised name resolves
        assert getattr(gemma_lab, name) is not None
    assert set(gemma_lab.__all__) <= set(dir(gemma_lab))
