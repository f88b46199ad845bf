"""What every widget shares: the default model, one forward pass cached, and one way to redraw.

Role: the bottom of the widget layer. It resolves ``model=None, tokenizer=None`` to the lesson model
(the bundled tiny Gemma unless ``$GEMMA_LAB_MODEL`` names a checkpoint), runs a prompt through
``run_with_cache`` once, names each activation's axes in the package vocabulary, and shows figures in
an ``Output`` the one way that displays each picture once (made with interactive mode off,
``clear_output(wait=True)``, ``display``, ``plt.close``).

Imports the model side (cache, hooks through the model, tokenizer, notebook defaults) and plotting;
the model side never imports this.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display
from matplotlib.figure import Figure

from gemma_lab import viz
from gemma_lab.hook_points import hook_axes  # noqa: F401  (the widgets' axis labels, from the hook table)

#: Widgets refuse prompts longer than this many tokens: every picture is per position.
MAX_PROMPT_TOKENS = 128
#: The tokenizer widget tokenizes at most this many characters (its table has a row per token).
MAX_TOKENIZER_CHARS = 20_000
#: Seed boxes take 0 to this (a browser's number input is exact only up to 2**53).
MAX_SEED = 2**32 - 1

#: The prompt every model widget opens with (an indirect-object sentence the tiny model completes).
DEFAULT_TEXT = "When Mary and John went to the store, John gave a drink to"

_lesson_model = None  # (model, tokenizer), loaded once per kernel and shared by every widget


def resolve_model(model=None, tokenizer=None):
    """``(model, tokenizer)``: both as given, or the lesson model when neither is given.

    The lesson model is the bundled tiny Gemma, or the checkpoint ``$GEMMA_LAB_MODEL`` names
    (``gemma_lab.notebook.load_lesson_model``); it is loaded once and shared. A model without its
    tokenizer (or the reverse) is refused: ids only mean something in the vocabulary they came from.
    """
    global _lesson_model
    if isinstance(model, (str, Path)):  # "tiny" or a checkpoint folder: load it, with its own tokenizer
        from gemma_lab.loading import load_pretrained
        from gemma_lab.tokenizer import load_tokenizer

        model, tokenizer = load_pretrained(model), tokenizer or load_tokenizer(model)
    if model is not None and not hasattr(model, "cfg"):
        raise TypeError(f"model must be a gemma_lab model, a checkpoint path or 'tiny', got {type(model).__name__}")
    if model is None and tokenizer is None:
        if _lesson_model is None:
            from gemma_lab.notebook import load_lesson_model

            _lesson_model = load_lesson_model()
        return _lesson_model
    if model is None or tokenizer is None:
        missing = "model" if model is None else "tokenizer"
        raise ValueError(f"pass both model and tokenizer (the {missing} is missing), or neither for the "
                         "bundled tiny Gemma")
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.cfg.vocab_size} embedding rows: they do not belong together")
    return model, tokenizer


def full_width() -> widgets.Layout:
    """A layout for a text box as wide as its box, margins included.

    ``width="100%"`` plus the 2 px margins ipywidgets puts on each side of a control overflows the
    box by 4 px, and the right edge is clipped; ``auto`` lets the flex box stretch it instead.
    """
    return widgets.Layout(width="auto", flex="0 0 auto", align_self="stretch")


def cached_names(name: str) -> bool:
    """Every hook point except ``hook_result``.

    Hooking ``hook_result`` makes attention sum per-head outputs instead of running ``o_proj``, a
    different (if equal up to rounding) computation; the widgets show the model's usual one.
    """
    return not name.endswith("hook_result")


def encode(tokenizer, text: str, device) -> torch.Tensor:
    """``[batch=1, pos]`` token ids of ``text`` with ``<bos>``; ValueError when too long to draw."""
    ids = tokenizer.encode(text)
    if len(ids) > MAX_PROMPT_TOKENS:
        raise ValueError(f"the text is {len(ids)} tokens long; the widgets draw at most {MAX_PROMPT_TOKENS}")
    return torch.tensor([ids], dtype=torch.long, device=device)


def run_prompt(model, tokens: torch.Tensor, names_filter=cached_names, **kwargs):
    """``(logits, cache)`` of one forward pass, by default with every activation (see ``cached_names``)."""
    with torch.inference_mode():
        return model.run_with_cache(tokens, names_filter=names_filter, **kwargs)


def str_tokens(tokenizer, ids) -> list[str]:
    """One display string per token id."""
    return tokenizer.to_str_tokens(ids.tolist() if hasattr(ids, "tolist") else list(ids))


def token_label(tokenizer, token_id: int) -> str:
    return viz.readable_token(tokenizer.to_str_tokens([int(token_id)])[0])


def shape_string(tensor: torch.Tensor, axes: Sequence[str]) -> str:
    """``[batch=1, pos=7, d_model=64]``."""
    return "[" + ", ".join(f"{a}={n}" for a, n in zip(axes, tensor.shape, strict=True)) + "]"


def show(out: widgets.Output, figures: Iterable[Figure] = (), html_parts: Iterable[str] = ()) -> None:
    """Replace what ``out`` shows by the HTML parts, then the figures (each closed once shown)."""
    with out:
        out.clear_output(wait=True)
        for part in html_parts:
            display(HTML(part))
        for fig in figures:
            display(fig)
            plt.close(fig)


def message_html(text: str, kind: str = "note") -> str:
    colour = {"note": "#555", "error": "#b00020"}[kind]
    return f'<div style="color:{colour};padding:4px 0">{html.escape(text)}</div>'


def table_html(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A small HTML table; cells are escaped."""
    th = "<th style='text-align:left;padding:0 8px'>{}</th>"
    td = "<td style='text-align:left;padding:0 8px;font-family:monospace'>{}</td>"
    head = "".join(th.format(html.escape(str(h))) for h in header)
    body = "".join("<tr>" + "".join(td.format(html.escape(str(c))) for c in row) + "</tr>" for row in rows)
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


class WidgetBase:
    """Holds the root widget and the Output every redraw replaces; shows itself as a cell's value."""

    widget: widgets.Box

    def __init__(self) -> None:
        self.out = widgets.Output()
        self.notice = widgets.HTML()  # what the constructor could not use as given, shown above the controls
        self.notes: list[str] = []
        self.figures: list[Figure] = []  # what the last redraw displayed
        self.redraws = 0

    @property
    def figure(self) -> Figure | None:
        """The first figure the last redraw displayed (None if it drew none)."""
        return self.figures[0] if self.figures else None

    def _root(self, children: Sequence[widgets.Widget]) -> widgets.VBox:
        """The outer box, with a CSS class naming the widget (``gemma-lab-inferencestepper``) for browsers."""
        box = widgets.VBox([self.notice, *children])
        box.add_class(f"gemma-lab-{type(self).__name__.lower()}")
        return box

    def _setting(self, name: str, value, valid: bool, fallback, allowed: str):
        """``value`` if ``valid``, else ``fallback`` with a note in the widget (never a traceback)."""
        if valid:
            return value
        self.notes.append(f"{name}={value!r} cannot be used ({allowed}); showing {name}={fallback!r} instead")
        self.notice.value = "".join(message_html(note, "error") for note in self.notes)
        return fallback

    def _int_setting(self, name: str, value, low: int, high: int, fallback: int) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return self._setting(name, value, ok, fallback, f"a whole number from {low} to {high}")

    def _float_setting(self, name: str, value, low: float, high: float, fallback: float) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        return self._setting(name, value, ok, fallback, f"a number from {low:g} to {high:g}")

    def _show(self, figures: Sequence[Figure] = (), html_parts: Sequence[str] = ()) -> None:
        self.figures = list(figures)
        self.redraws += 1
        show(self.out, self.figures, html_parts)

    def _ipython_display_(self) -> None:
        display(self.widget)


class ModelWidget(WidgetBase):
    """A widget about a model: ``model``, ``tokenizer`` and ``cfg`` (see ``resolve_model``)."""

    def __init__(self, model=None, tokenizer=None) -> None:
        super().__init__()
        self.model, self.tokenizer = resolve_model(model, tokenizer)
        self.cfg = self.model.cfg
