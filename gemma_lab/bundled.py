"""Where the bundled tiny Gemma lives, in a source checkout and in an installed wheel.

The repository keeps the checkpoint in ``data/tiny-gemma/``; a built wheel carries the same
folder inside the package as ``gemma_lab/_bundled/tiny-gemma/`` (see ``pyproject.toml``).
This module imports nothing heavy: the loader and the tokenizer both ask it for the path.
"""

from __future__ import annotations

from pathlib import Path

#: Names that ``load_pretrained`` / ``load_tokenizer`` accept for the bundled model.
TINY_NAMES = ("tiny", "tiny-gemma")


def tiny_model_dir() -> Path:
    """The folder of the bundled tiny Gemma (``config.json``, ``model.safetensors``, ``tokenizer.model``)."""
    package_dir = Path(__file__).resolve().parent
    candidates = [
        package_dir / "_bundled" / "tiny-gemma",  # installed from a wheel
        package_dir.parent / "data" / "tiny-gemma",  # source checkout / editable install
    ]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"the bundled tiny Gemma was not found (looked in {tried}); "
        "reinstall gemma_lab or run `python -m gemma_lab.tiny.train` to rebuild it"
    )


def is_tiny_name(name: object) -> bool:
    """True when ``name`` asks for the bundled model rather than a path."""
    return isinstance(name, str) and name in TINY_NAMES


def bundled_dir(name: str) -> Path:
    """The folder ``data/<name>`` of a source checkout, or ``gemma_lab/_bundled/<name>`` in a wheel
    (e.g. ``tiny-sae``: the sparse autoencoders trained on the tiny Gemma)."""
    package_dir = Path(__file__).resolve().parent
    candidates = [package_dir / "_bundled" / name, package_dir.parent / "data" / name]
    for folder in candidates:
        if folder.is_dir():
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"the bundled {name} was not found (looked in {tried}); reinstall gemma_lab")
