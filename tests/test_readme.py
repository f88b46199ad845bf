"""The README's two commands are what CI runs, and the package's layers point one way."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_gives_two_setup_commands():
    main, tests = readme_commands()
    assert main.startswith("pip install torch==2.13.0 ")
    assert tests.startswith("pip install torch==2.13.0 ") and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_model_file_names_no_checkpoint_tensors():
    """Checkpoint names live in the loader's table only."""
    model_source = (ROOT / "gemma_lab" / "model.py").read_text()
    for name in ("post_attention_layernorm", "embed_tokens", "input_layernorm", "qkv_proj"):
        assert name not in model_source
