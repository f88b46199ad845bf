"""Every command in README.md and docs/ runs exactly as written.

* ``bash`` blocks run as written with bash, in a scratch folder standing in for the reader's machine:
  the placeholder checkpoints they name (``path/to/gemma-2b``, ``~/models/gemma-2-2b``) are created
  there first as random-weight checkpoints written by transformers, with the bundled tokenizer.
  Commands that start a server (``gemma-lab lab``, ``voila``) must come up and print their URL;
  then they are stopped. ``chat`` reads an empty stdin.
* ``python`` blocks of one page run in order in one namespace (as a reader pastes them into one
  notebook), with the same placeholder checkpoints. An API synopsis is fenced as ``text``.

The one thing not run here is the set-up itself (``pip install ...``): CI runs the README's
set-up and test commands verbatim (``.ci/run``; ``test_readme.py`` checks they agree).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hf_checkpoints import write_checkpoint
from hub_standin import HubStandIn, Repo

from gemma_lab import bundled

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)\n```", re.S | re.M)  # top-level fences only
PLACEHOLDER = re.compile(r"(?:path/to|~/models)/[\w.-]+")
HUB_ID = re.compile(r"(?<![\w/.~-])google/gemma-[\w.-]+")  # Hugging Face ids, served by the stand-in
# Commands that run until stopped, and the output that shows they are up and working.
LONG_RUNNING = {"gemma-lab lab": r"https?://(localhost|127\.0\.0\.1)[:\d]*", "voila ": r"https?://localhost[:\d]*",
                "train-tiny": r"loss=\d"}


def blocks(language: str) -> list[tuple[str, int, str]]:
    """(page, index, code) for every fenced block of ``language``."""
    found = []
    for page in PAGES:
        for index, (lang, code) in enumerate(b for b in FENCE.findall(page.read_text()) if b[0] == language):
            found.append((page.relative_to(ROOT).as_posix(), index, code))
    return found


def bash_commands() -> list[tuple[str, str]]:
    """(where, command) for every command line of every bash block; a block's ``export`` lines are
    kept in front of the commands after them. The set-up itself is left to CI (see the docstring)."""
    commands = []
    for page, index, code in blocks("bash"):
        exports = []
        for number, line in enumerate(code.replace("\\\n", " ").splitlines()):
            if line.startswith("pip install "):
                line = line.split("&&", 1)[1].strip() if "&&" in line else ""  # what follows the set-up
                if "pytest" in line:
                    continue  # the README's test command is what CI runs; a test cannot run its own suite
            if line.startswith("export "):
                exports.append(line)
            elif line.strip() and not line.lstrip().startswith("#"):
                commands.append((f"{page}[{index}]:{number + 1}", "\n".join(exports + [line])))
    return commands


#: Commands a test of their own runs as written (a site build takes a while and its result is then
#: checked in a browser), by the test file that runs them.
RUN_ELSEWHERE = {"python -m tools.docs_site": "tests/test_site.py"}


def commands_run_here() -> list[tuple[str, str]]:
    return [(where, command) for where, command in bash_commands() if not any(c in command for c in RUN_ELSEWHERE)]


def _family(name: str) -> int:
    return 3 if "gemma-3" in name or "gemma3" in name else 2 if "gemma-2-" in name or "gemma2" in name else 1


@pytest.fixture(scope="module")
def reader_machine(tmp_path_factory) -> dict[str, str]:
    """A scratch home and working folder holding every placeholder checkpoint the pages name; the
    Hugging Face ids the bash blocks name (``google/gemma-2-2b``) are served by a local stand-in for
    the Hub (``hub_standin.py``) as random-weight checkpoints, and downloaded into the home's cache."""
    home = tmp_path_factory.mktemp("home")
    texts = [code for _, _, code in blocks("bash") + blocks("python")]
    tokenizer = bundled.tiny_model_dir() / "tokenizer.model"
    for name in sorted({m for text in texts for m in PLACEHOLDER.findall(text)}):
        folder = home / name.replace("~/", "")
        if not folder.exists():
            write_checkpoint(folder, _family(name), seed=3, vocab_size=3072)  # the bundled tokenizer's size
            shutil.copy(tokenizer, folder / "tokenizer.model")
    (home / "notebooks").symlink_to(ROOT / "notebooks")  # the pages' relative paths are the repository's
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    repos = {}
    for repo_id in sorted({m for _, _, code in blocks("bash") for m in HUB_ID.findall(code)}):
        folder = tmp_path_factory.mktemp("hub") / repo_id  # outside HOME: a folder there would win over the id
        write_checkpoint(folder, _family(repo_id), seed=3, vocab_size=3072)
        shutil.copy(tokenizer, folder / "tokenizer.model")
        repos[repo_id] = Repo({file.name: file.read_bytes() for file in folder.iterdir()})
    with HubStandIn(repos) as standin:
        yield {**os.environ, "HOME": str(home), "PATH": path, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
               "JUPYTER_PLATFORM_DIRS": "1", "HF_ENDPOINT": standin.url, "HF_HOME": str(home / ".cache/huggingface"),
               "HF_TOKEN": "", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize("where, command", commands_run_here(), ids=[w for w, _ in commands_run_here()])
def test_bash_command_runs_as_written(where, command, reader_machine):
    ready = next((pattern for name, pattern in LONG_RUNNING.items() if name in command), None)
    if ready is not None:
        _comes_up(command, re.compile(ready), reader_machine)
        return
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=reader_machine["HOME"],
                          env=reader_machine, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{where} failed:\n{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def _comes_up(command: str, ready: re.Pattern, env: dict[str, str]) -> None:
    """Start a command that runs until stopped, wait until its output shows it working, stop it."""
    log = Path(env["HOME"]) / "long-running.log"
    with socket.socket() as probe:  # a free port for JupyterLab, which reads JUPYTER_PORT
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "w") as sink:
        process = subprocess.Popen(["bash", "-e", "-c", command], cwd=env["HOME"], stdout=sink,
                                   env={**env, "JUPYTER_PORT": str(port), "BROWSER": "true"},
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None and not ready.search(log.read_text()):
            time.sleep(1)
        assert ready.search(log.read_text()), f"{command!r} did not come up:\n{log.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted({page for page, _, _ in blocks("python")}))
def test_python_blocks_of_a_page_run_in_order(page, reader_machine, monkeypatch):
    monkeypatch.chdir(reader_machine["HOME"])
    monkeypatch.setenv("HOME", reader_machine["HOME"])
    namespace: dict = {"__name__": "__doc_page__"}
    # A page may change torch's global state as a reader's notebook would (transformerlens.md turns
    # gradients off, as TL notebooks do); this process runs other tests after it.
    grad, dtype, threads = torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads()
    try:
        for _, index, code in (b for b in blocks("python") if b[0] == page):
            try:
                exec(compile(code, f"{page}[python block {index}]", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page}, python block {index} fails as written:\n{code}") from error
    finally:
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def test_every_page_with_commands_is_covered():
    """A new page or block is picked up without editing this file, and blocks are fenced with a language."""
    assert bash_commands() and blocks("python")
    for page in PAGES:
        unnamed = [code for lang, code in FENCE.findall(page.read_text()) if not lang]
        assert not unnamed, f"{page.name}: fence these blocks with a language (bash, python or text): {unnamed}"
