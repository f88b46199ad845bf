"""One setting switches every lesson notebook between the bundled tiny Gemma and real weights.

Set the environment variable ``GEMMA_LAB_MODEL`` to a model id (``google/gemma-2-2b``, fetched
through the Hugging Face cache) or a local checkpoint folder before starting Jupyter, or set it
in the notebook's config cell; with nothing set, the bundled tiny model is used.

    from gemma_lab.notebook import load_lesson_model
    model, tokenizer = load_lesson_model()

Imports the loader and tokenizer only; never widgets or plotting.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gemma_lab.hub import is_hub_id, is_kaggle_handle, resolve_model
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
    dtype = dtype or os.environ.get(DTYPE_ENV) or None
    folder = lesson_checkpoint(path)  # a Hub id is downloaded (or found in the cache) once, here
    return load_pretrained(folder, dtype=dtype), load_tokenizer(folder)


def lesson_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder or file behind ``lesson_model_path`` (the bundled folder for ``"tiny"``, the
    snapshot in the Hugging Face cache for a model id, downloaded if it is not there yet).

    The model holds no file path, so a lesson that wants the files (to open them with transformers,
    say) asks here.
    """
    chosen = lesson_model_path(path)
    try:
        return resolve_model(chosen)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{MODEL_ENV}={chosen}: {error}") from None


def describe(model: Gemma, source: str | os.PathLike | None = None) -> str:
    """One line naming the model a lesson runs on (printed at the top of each notebook).

    ``source``: where it was loaded from (default: the lesson checkpoint, ``lesson_checkpoint()``).
    """
    cfg = model.cfg
    if source is None:
        chosen = lesson_model_path()
        source = chosen if is_hub_id(chosen) or is_kaggle_handle(chosen) else lesson_checkpoint()
    return (f"Gemma {cfg.family} · {cfg.n_layers} layers · d_model {cfg.d_model} · {cfg.n_heads} heads "
            f"({cfg.attention_kind}) · {model.n_params():,} parameters · from {source}")
