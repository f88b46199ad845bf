"""One setting switches every lesson notebook between the bundled tiny Gemma and real weights.

Set the environment variable ``GEMMA_LAB_MODEL`` to a local checkpoint folder (for example a
downloaded ``google/gemma-2b``) before starting Jupyter, or pass ``path=`` in the notebook's
config cell; with nothing set, the bundled tiny model is used.

    from gemma_lab.notebook import load_lesson_model
    model, tokenizer = load_lesson_model()

Imports the loader and tokenizer only; never widgets or plotting.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gemma_lab.bundled import is_tiny_name, tiny_model_dir
from gemma_lab.loading import load_pretrained
from gemma_lab.model import Gemma
from gemma_lab.tokenizer import GemmaTokenizer, load_tokenizer

#: The environment variable every notebook reads.
MODEL_ENV = "GEMMA_LAB_MODEL"
DTYPE_ENV = "GEMMA_LAB_DTYPE"


def lesson_model_path(path: str | os.PathLike | None = None) -> str:
    """The checkpoint the lessons use: ``path``, else ``$GEMMA_LAB_MODEL``, else ``"tiny"``."""
    chosen = path or os.environ.get(MODEL_ENV, "").strip() or "tiny"
    return str(chosen)


def load_lesson_model(path: str | os.PathLike | None = None, dtype: torch.dtype | str | None = None,
                      ) -> tuple[Gemma, GemmaTokenizer]:
    """The model and tokenizer for a lesson, in eval mode (fp32 by default for exact numbers).

    Real checkpoints are large: ``$GEMMA_LAB_DTYPE=bfloat16`` halves the memory they need.
    """
    chosen = lesson_model_path(path)
    dtype = dtype or os.environ.get(DTYPE_ENV) or None
    if chosen != "tiny" and not Path(chosen).exists():
        raise FileNotFoundError(f"{MODEL_ENV}={chosen}: no such checkpoint folder")
    model = load_pretrained(chosen, dtype=dtype)
    tokenizer = load_tokenizer(chosen)
    return model, tokenizer


def lesson_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder or file behind ``lesson_model_path`` (the bundled folder for ``"tiny"``).

    The model holds no file path, so a lesson that wants the files (to open them with transformers,
    say) asks here.
    """
    chosen = lesson_model_path(path)
    return tiny_model_dir() if is_tiny_name(chosen) else Path(chosen)


def describe(model: Gemma, source: str | os.PathLike | None = None) -> str:
    """One line naming the model a lesson runs on (printed at the top of each notebook).

    ``source``: where it was loaded from (default: the lesson checkpoint, ``lesson_checkpoint()``).
    """
    cfg = model.cfg
    source = source if source is not None else lesson_checkpoint()
    generation = "3n" if cfg.is_gemma3n else cfg.family
    return (f"Gemma {generation} · {cfg.n_layers} layers · d_model {cfg.d_model} · {cfg.n_heads} heads "
            f"({cfg.attention_kind}) · {model.n_params():,} parameters · from {source}")
