"""Pure plotting functions: tensors and token strings in, a matplotlib ``Figure`` (or an HTML string) out.

Role in the package: the plotting layer. It sits above the model and the interpretability code and
below the widgets, which only wire controls to these functions. Each function reads its inputs,
draws, and returns; it keeps no state and never talks to a model.

Must not import: torch (tensors are recognised by duck typing, so this module works without it),
the model, loading or generation code, or ``ipywidgets``. Figures are made by pyplot with
interactive mode off and closed at once (see ``new_figure``), so pyplot never keeps them and a
notebook shows each one exactly once: when it is the value of a cell, or through ``display(fig)``.
All drawing uses the object-oriented API on the returned Figure and its Axes.

Conventions shared by every function:

* Axis names follow the package vocabulary: ``batch``, ``pos`` (``q_pos``/``k_pos`` in attention),
  ``d_model``, ``head``, ``kv_head``, ``group``, ``d_head``, ``d_mlp``, ``vocab``, ``layer``.
* Inputs may be torch tensors (any dtype or device; detached and copied to CPU as float) or numpy arrays.
* Single-panel functions take ``ax=`` to draw into an existing Axes; multi-panel ones take ``fig=``
  (a ``Figure`` or ``SubFigure``, e.g. one a widget clears and redraws). Both return the root Figure.
* What is drawn is the data: heatmaps keep the full array (``ax.images[0].get_array()`` equals the
  input, masked entries included underneath the mask), only tick *labels* are thinned on long sequences.
* Heatmaps put ``layer`` (or the query position) on rows with index 0 at the top, like the array.
* Signed quantities use the diverging ``RdBu`` map centred on zero (red negative, blue positive).
* Token labels go through :func:`readable_token` and are drawn with mathtext off, so ``$`` stays ``$``;
  the widgets label tokens the same way, and make their figures with ``new_figure``/``new_subplots``.

Why one module above 600 lines: it is one job (every picture the lessons show), its functions share
the conventions above and a handful of private helpers, and a reader looks for a picture by name here.

References: logit lens (nostalgebraist, 2020); activation patching (Meng et al., 2022, "Locating and
Editing Factual Associations in GPT"); rotary embeddings (Su et al., 2021, "RoFormer"), drawn in the
half-split pairing ``(i, i + d_head/2)`` that Gemma uses.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure, FigureBase
from matplotlib.patches import Circle

__all__ = [
    "HTMLString",
    "attention_heads_grid",
    "attention_pattern",
    "colored_tokens_html",
    "logit_lens_heatmap",
    "patching_heatmap",
    "readable_token",
    "residual_norms",
    "rotary_illustration",
    "tensor_card",
    "top_k_bars",
]

#: At most this many tick labels per axis; longer sequences label every n-th position.
MAX_TICK_LABELS = 40

# Characters that are invisible or break a one-line label. SentencePiece's word marker '▁' is a
# space too, so raw pieces and decoded strings look the same.
_READABLE = {" ": "␣", "▁": "␣", "\n": "↵", "\t": "⇥", "\r": "\\r"}

# Grey for masked attention entries: distinct from the white that zero maps to in "Blues".
_MASKED_GREY = "0.78"


# ----------------------------------------------------------------------------------------------
# Small shared pieces
# ----------------------------------------------------------------------------------------------


def readable_token(s: str) -> str:
    """A token string made visible in one line: ' ' and '▁' as '␣', newline as '↵', tab as '⇥'.

    The empty string becomes '∅' so that an empty token still has a label.
    """
    if s == "":
        return "∅"
    return "".join(_READABLE.get(ch, ch) for ch in s)


class HTMLString(str):
    """A ``str`` of HTML that Jupyter renders as HTML when it is the value of a cell."""

    def _repr_html_(self) -> str:
        return str(self)


def _to_numpy(x: Any, name: str, ndim: int | tuple[int, ...] | None = None, axes: str = "") -> np.ndarray:
    """Torch tensor or array-like -> float64 numpy array, checking the number of axes.

    Torch is recognised by its methods rather than imported: ``detach`` drops autograd,
    ``float`` widens bfloat16 (which numpy cannot hold), ``cpu`` leaves the accelerator.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if hasattr(x, "float"):
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            raise ValueError(f"{name} must have axes [{axes}] ({' or '.join(map(str, allowed))}-D), "
                             f"got shape {tuple(arr.shape)}")
    return arr


def _root_figure(ax: Axes) -> Figure:
    # ax.figure is a SubFigure when the Axes lives in one; a SubFigure's .figure is the root.
    return ax.figure.figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure made by pyplot, then closed at once: the one figure factory of viz and the widgets.

    Made by pyplot so that it gets the session's canvas, and in Jupyter the display integration
    with it: a bare ``Figure()`` is shown as ``<Figure size ...>`` text until something has switched
    that integration on. Closed so that pyplot forgets it and a notebook does not show it a second
    time at the end of the cell; a closed figure can still be drawn on, displayed and saved.
    """
    with plt.ioff():
        fig = plt.figure(figsize=figsize, layout="constrained")
    plt.close(fig)
    return fig


def new_subplots(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1,
                 **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """``(fig, axes[nrows, ncols])`` on a ``new_figure``; ``kwargs`` go to ``Figure.subplots``."""
    fig = new_figure(figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return _root_figure(ax), ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def _clip(value: float, low: float, high: float) -> float:
    return float(min(max(value, low), high))


def _tick_positions(n: int, max_labels: int = MAX_TICK_LABELS) -> list[int]:
    """Every position when there are few, otherwise every n-th, so labels never overlap."""
    step = max(1, math.ceil(n / max_labels))
    return list(range(0, n, step))


def _set_token_ticks(ax: Axes, which: str, labels: Sequence[str], *, rotate: bool = False,
                     fontsize: float = 8) -> None:
    """Label the x or y axis with (readable) token strings, thinning them on long sequences."""
    ticks = _tick_positions(len(labels))
    text = [readable_token(labels[i]) for i in ticks]
    # parse_math=False: a token such as "$x$" must be shown literally, not as mathtext.
    kwargs = {"fontsize": fontsize, "parse_math": False}
    if which == "x":
        ax.set_xticks(ticks, text, rotation=90 if rotate else 0, **kwargs)
    else:
        ax.set_yticks(ticks, text, **kwargs)


def _index_labels(n: int, labels: Sequence[str] | None, what: str) -> list[str]:
    if labels is None:
        return [str(i) for i in range(n)]
    labels = [str(s) for s in labels]
    if len(labels) != n:
        raise ValueError(f"{what} has {len(labels)} entries but the data has {n} {what.split('_')[0]}s")
    return labels


def _check_tokens(tokens: Sequence[str] | None, n: int, data_name: str, axis: str) -> list[str] | None:
    if tokens is None:
        return None
    tokens = list(tokens)
    if len(tokens) != n:
        raise ValueError(f"{data_name} has {n} {axis} positions but {len(tokens)} tokens were given")
    return tokens


def _symmetric_limits(values: np.ndarray) -> tuple[float, float]:
    """(-m, m) with m the largest finite |value|, so zero sits at the middle of a diverging map."""
    finite = np.abs(values[np.isfinite(values)])
    m = float(finite.max()) if finite.size else 1.0
    m = m if m > 0 else 1.0
    return -m, m


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def _attention_mask(mask: Any, q_len: int, k_len: int) -> np.ndarray:
    """Boolean [q_pos, k_pos], True where the query may not look.

    With fewer queries than keys (a KV cache), the queries are the *last* q_len positions.
    """
    if mask is None:
        return np.zeros((q_len, k_len), dtype=bool)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask must be 'causal', None or a boolean array [q_pos, k_pos], got {mask!r}")
        offset = k_len - q_len
        q = np.arange(q_len)[:, None] + offset
        k = np.arange(k_len)[None, :]
        return k > q
    arr = _to_numpy(mask, "mask", 2, "q_pos, k_pos").astype(bool)
    if arr.shape != (q_len, k_len):
        raise ValueError(f"mask has shape {arr.shape} but the pattern has shape {(q_len, k_len)}")
    return arr


def _check_attention(pattern: np.ndarray, tokens: Sequence[str], name: str) -> tuple[list[str], list[str]]:
    q_len, k_len = pattern.shape[-2:]
    tokens = list(tokens)
    if len(tokens) != k_len:
        raise ValueError(f"{name} has {k_len} key positions (k_pos) but {len(tokens)} tokens were given")
    if q_len > k_len:
        raise ValueError(f"{name} has {q_len} query positions but only {k_len} key positions")
    return tokens[k_len - q_len:], tokens


def _draw_attention(ax: Axes, pattern: np.ndarray, mask: np.ndarray, vmax: float, **imshow_kw: Any):
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad=_MASKED_GREY)
    data = np.ma.masked_array(pattern, mask=mask | ~np.isfinite(pattern))
    return ax.imshow(data, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", **imshow_kw)


def _pattern_vmax(pattern: np.ndarray, mask: np.ndarray, vmax: float | None) -> float:
    if vmax is not None:
        return float(vmax)
    visible = pattern[~mask & np.isfinite(pattern)]
    top = float(visible.max()) if visible.size else 1.0
    return top if top > 0 else 1.0


def attention_pattern(
    pattern: Any,
    tokens: Sequence[str],
    *,
    title: str | None = None,
    mask: Any = "causal",
    vmax: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of one head's attention, ``pattern[q_pos, k_pos]``.

    Rows are queries (destination, the token doing the looking), columns are keys (source).
    ``tokens`` label the keys; with fewer queries than keys the queries are the last positions.
    ``mask="causal"`` greys out future keys; pass ``None`` for no mask or a boolean array
    ``[q_pos, k_pos]`` (True = masked, e.g. outside a sliding window). NaN/inf entries are also grey.
    The colour scale runs from 0 to ``vmax`` (default: the largest visible weight).
    """
    pattern = _to_numpy(pattern, "pattern", 2, "q_pos, k_pos")
    q_tokens, k_tokens = _check_attention(pattern, tokens, "pattern")
    q_len, k_len = pattern.shape
    masked = _attention_mask(mask, q_len, k_len)
    fig, ax = _new_axes(ax, (_clip(4.0 + 0.22 * k_len, 5.0, 11.0), _clip(3.0 + 0.22 * q_len, 3.0, 10.0)))

    im = _draw_attention(ax, pattern, masked, _pattern_vmax(pattern, masked, vmax))
    _set_token_ticks(ax, "x", k_tokens, rotate=True)
    _set_token_ticks(ax, "y", q_tokens)
    ax.set_xlabel("key (source) k_pos")
    ax.set_ylabel("query (destination) q_pos")
    if title is not None:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label="attention weight", shrink=0.8)
    return fig


#: Token labels of the all-heads grid, in points (at 100 dpi, 8 pt is 11 px).
TOKEN_LABEL_POINTS = 8


def attention_heads_grid(
    patterns: Any,
    tokens: Sequence[str],
    *,
    layer: int | None = None,
    mask: Any = "causal",
    ncols: int | None = None,
    vmax: float | None = None,
    fig: FigureBase | None = None,
) -> Figure:
    """One small heatmap per head from ``patterns[head, q_pos, k_pos]``, on one shared colour scale.

    A shared scale keeps heads comparable: a diffuse head looks pale next to a sharp one.
    Token labels are drawn on the outer panels only. ``mask`` and ``vmax`` as in :func:`attention_pattern`.
    """
    patterns = _to_numpy(patterns, "patterns", 3, "head, q_pos, k_pos")
    q_tokens, k_tokens = _check_attention(patterns, tokens, "patterns")
    n_head, q_len, k_len = patterns.shape
    masked = _attention_mask(mask, q_len, k_len)
    # Panels big enough for 8-point token labels, and at most ~10 inches of panels side by side:
    # a wider figure is shrunk to the notebook's width, and its labels with it (to ~5 px at 13 inches).
    panel = _clip(1.6 + 0.16 * k_len, 2.6, 4.5)
    if ncols is None:
        widest = max(1, int(10.0 // panel))
        ncols = math.ceil(n_head / math.ceil(n_head / widest))  # balanced rows: 2 x 2, not 3 + 1
    ncols = max(1, min(ncols, n_head))
    nrows = math.ceil(n_head / ncols)
    if fig is None:
        fig = new_figure((panel * ncols + 1.0, panel * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    top = _pattern_vmax(patterns, np.broadcast_to(masked, patterns.shape), vmax)

    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.set_axis_off()
            continue
        im = _draw_attention(ax, patterns[h], masked, top)
        ax.set_title(f"head {h}" if layer is None else f"L{layer} H{h}", fontsize=9)
        if h + ncols >= n_head:  # no panel below this one
            _set_token_ticks(ax, "x", k_tokens, rotate=True, fontsize=TOKEN_LABEL_POINTS)
        else:
            ax.set_xticks([])
        if h % ncols == 0:
            _set_token_ticks(ax, "y", q_tokens, fontsize=TOKEN_LABEL_POINTS)
        else:
            ax.set_yticks([])
    fig.suptitle("attention patterns" if layer is None else f"layer {layer} attention patterns")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="attention weight", shrink=0.6)
    return fig.figure


# ----------------------------------------------------------------------------------------------
# Logit lens and next-token predictions
# ----------------------------------------------------------------------------------------------


def logit_lens_heatmap(
    probs: Any,
    top_tokens: Sequence[Sequence[str]],
    tokens: Sequence[str],
    *,
    layer_labels: Sequence[str] | None = None,
    title: str | None = "logit lens",
    annotate: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Layer x position heatmap of ``probs[layer, pos]``, each cell annotated with ``top_tokens[layer][pos]``.

    Typically ``probs`` is the probability of the top token read off the residual stream after each
    layer, and ``tokens[pos]`` is the input at that position (the prediction is for ``pos + 1``).
    ``layer_labels`` name the rows (e.g. ``["embed", "0", "1", ...]``); default ``0..layer-1``.
    Annotations are ``ax.texts`` in row-major (layer, pos) order; ``annotate=False`` skips them.
    """
    probs = _to_numpy(probs, "probs", 2, "layer, pos")
    n_layer, n_pos = probs.shape
    top = [list(row) for row in top_tokens]
    if len(top) != n_layer:
        raise ValueError(f"probs has {n_layer} layers but top_tokens has {len(top)} rows")
    for layer, row in enumerate(top):
        if len(row) != n_pos:
            raise ValueError(f"probs has {n_pos} positions but top_tokens[{layer}] has {len(row)}")
    tokens = _check_tokens(tokens, n_pos, "probs", "pos")
    row_labels = _index_labels(n_layer, layer_labels, "layer_labels")

    fig, ax = _new_axes(ax, (_clip(2.5 + 0.85 * n_pos, 5.0, 18.0), _clip(1.5 + 0.38 * n_layer, 3.0, 12.0)))
    cmap = matplotlib.colormaps["Blues"]
    im = ax.imshow(probs, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    if annotate:
        fontsize = 7 if n_pos <= 20 else 5
        for layer in range(n_layer):
            for pos in range(n_pos):
                # White text on the dark end of the map, black on the light end.
                colour = "white" if probs[layer, pos] > 0.6 else "black"
                ax.text(pos, layer, readable_token(str(top[layer][pos])), ha="center", va="center",
                        fontsize=fontsize, color=colour, parse_math=False, clip_on=True)
    _set_token_ticks(ax, "x", tokens, rotate=True)
    ax.set_yticks(_tick_positions(n_layer), [row_labels[i] for i in _tick_positions(n_layer)], fontsize=8)
    ax.set_xlabel("pos (input token; prediction is for the next position)")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label="probability", shrink=0.8)
    return fig


def _top_k(probs: Any, labels: Any, k: int) -> tuple[np.ndarray, list[str]]:
    """The k largest values, descending, with their label strings."""
    if isinstance(probs, tuple) and len(probs) == 2 and not np.isscalar(probs[0]):
        values, second = probs  # (values, labels) or e.g. torch.topk's (values, indices)
        values = _to_numpy(values, "values", 1, "k")
        second = list(second.tolist() if hasattr(second, "tolist") else second)
        if len(second) != len(values):
            raise ValueError(f"got {len(values)} values but {len(second)} labels")
        ids = None if all(isinstance(s, str) for s in second) else [int(s) for s in second]
        names = second if ids is None else None
    else:
        values = _to_numpy(probs, "probs", 1, "vocab")
        ids, names = list(range(len(values))), None
    order = np.argsort(-values, kind="stable")[:k]
    if names is not None:
        return values[order], [str(names[i]) for i in order]
    chosen = [ids[i] for i in order]
    if labels is None:
        return values[order], [f"#{t}" for t in chosen]
    lookup: Callable[[int], Any] = labels if callable(labels) else labels.__getitem__
    return values[order], [str(lookup(t)) for t in chosen]


def top_k_bars(
    probs: Any,
    labels: Sequence[str] | Callable[[int], str] | None = None,
    k: int = 10,
    *,
    highlight: str | Iterable[str] | None = None,
    highlight_color: str = "C3",
    value_format: str = "{:.1%}",
    value_label: str = "probability",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Horizontal bars of the ``k`` most likely next tokens, largest at the top, values written beside.

    ``probs`` is either a full ``probs[vocab]`` (with ``labels`` a vocabulary list or an
    ``id -> str`` function; without labels the ids are shown as ``#id``), or a pair
    ``(values, labels)`` of strings, or ``(values, ids)`` such as ``torch.topk(probs, k)``.
    ``highlight`` names token string(s) whose bars are drawn in ``highlight_color``.
    Bars are ``ax.patches`` in rank order; their widths are the values. Probabilities (every value in
    [0, 1]) get an axis that ends at 1 at most; a value too long to write beside its bar is written
    inside it.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values, names = _top_k(probs, labels, k)
    marked = {highlight} if isinstance(highlight, str) else set(highlight or ())
    colours = [highlight_color if name in marked else "C0" for name in names]

    fig, ax = _new_axes(ax, (6.0, _clip(0.8 + 0.32 * len(values), 2.5, 9.0)))
    ypos = np.arange(len(values))
    ax.barh(ypos, values, color=colours)
    ax.set_yticks(ypos, [readable_token(n) for n in names], fontsize=9, parse_math=False)
    ax.invert_yaxis()
    low = min(0.0, float(values.min()) if len(values) else 0.0)
    high = float(values.max()) if len(values) else 1.0
    right = high * 1.25 if high > 0 else 1.0  # room for the numbers beside the bars
    if len(values) and low >= 0.0 and high <= 1.0:
        right = min(right, 1.0)  # a probability axis never goes past 1
    ax.set_xlim(low, right)
    for y, v in zip(ypos, values, strict=True):
        if v > 0.8 * right:  # no room beside the bar: write it inside, right-aligned
            ax.text(v, y, value_format.format(v) + " ", va="center", ha="right", fontsize=8, color="white")
        else:
            ax.text(v, y, " " + value_format.format(v), va="center", fontsize=8)
    ax.set_xlabel(value_label)
    ax.spines[["top", "right"]].set_visible(False)
    if title is not None:
        ax.set_title(title)
    return fig


# ----------------------------------------------------------------------------------------------
# Residual stream and patching
# ----------------------------------------------------------------------------------------------


def residual_norms(
    norms: Any,
    tokens: Sequence[str] | None = None,
    *,
    layer_labels: Sequence[str] | None = None,
    mean: bool = False,
    log: bool = False,
    title: str | None = "residual stream norm",
    ax: Axes | None = None,
) -> Figure:
    """Residual-stream norm by layer: ``norms[layer]`` as one line, or ``norms[layer, pos]`` as one
    line per position (``mean=True``: a single line, the mean over positions).

    ``layer`` may count the embedding too (``n_layers + 1`` entries); say so with
    ``layer_labels=["embed", "0", ...]``. Up to 12 positions get a legend of their tokens; more get a
    colour bar over ``pos``. ``log=True`` uses a log y axis, useful because Gemma's norms grow quickly.
    """
    norms = _to_numpy(norms, "norms", (1, 2), "layer] or [layer, pos")
    n_layer = norms.shape[0]
    xlabels = _index_labels(n_layer, layer_labels, "layer_labels")
    x = np.arange(n_layer)
    fig, ax = _new_axes(ax, (7.0, 4.0))

    if norms.ndim == 1 or mean:
        series = norms if norms.ndim == 1 else norms.mean(axis=1)
        label = None if norms.ndim == 1 else "mean over pos"
        ax.plot(x, series, marker="o", color="C0", label=label)
        if label:
            ax.legend(fontsize=8)
    else:
        n_pos = norms.shape[1]
        tokens = _check_tokens(tokens, n_pos, "norms", "pos")
        cmap = matplotlib.colormaps["viridis"]
        colour_norm = mcolors.Normalize(0, max(n_pos - 1, 1))
        for pos in range(n_pos):
            name = f"{pos}: {readable_token(tokens[pos])}" if tokens else f"pos {pos}"
            ax.plot(x, norms[:, pos], marker=".", color=cmap(colour_norm(pos)), label=name)
        if n_pos <= 12:
            legend = ax.legend(fontsize=7, title="pos", loc="upper left")
            for text in legend.get_texts():
                text.set_parse_math(False)
        else:
            fig.colorbar(ScalarMappable(colour_norm, cmap), ax=ax, label="pos")
    ticks = _tick_positions(n_layer)
    ax.set_xticks(ticks, [xlabels[i] for i in ticks], fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("‖residual‖ (L2 over d_model)")
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


_PATCHING_KINDS = ("layer x position", "layer x head")


def patching_heatmap(
    values: Any,
    tokens: Sequence[str] | None = None,
    *,
    kind: str = "layer x position",
    layer_labels: Sequence[str] | None = None,
    value_label: str = "patching effect",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Activation-patching results: ``values[layer, pos]`` (``kind="layer x position"``, columns
    labelled by ``tokens``) or ``values[layer, head]`` (``kind="layer x head"``).

    The colour map is diverging and symmetric around zero, so "no effect" is white whatever the range.
    """
    if kind not in _PATCHING_KINDS:
        raise ValueError(f"kind must be one of {_PATCHING_KINDS}, got {kind!r}")
    column = "pos" if kind == "layer x position" else "head"
    values = _to_numpy(values, "values", 2, f"layer, {column}")
    n_layer, n_col = values.shape
    if column == "pos":
        tokens = _check_tokens(tokens, n_col, "values", "pos")
        col_labels = tokens if tokens is not None else [str(i) for i in range(n_col)]
    else:
        if tokens is not None:
            raise ValueError('tokens only label positions; they do not apply to kind="layer x head"')
        col_labels = [str(h) for h in range(n_col)]
    row_labels = _index_labels(n_layer, layer_labels, "layer_labels")

    fig, ax = _new_axes(ax, (_clip(2.5 + 0.4 * n_col, 4.5, 14.0), _clip(1.5 + 0.3 * n_layer, 3.0, 10.0)))
    vmin, vmax = _symmetric_limits(values)
    im = ax.imshow(values, cmap="RdBu", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if column == "pos":
        _set_token_ticks(ax, "x", col_labels, rotate=True)
    else:
        ticks = _tick_positions(n_col)
        ax.set_xticks(ticks, [col_labels[i] for i in ticks], fontsize=8)
    yticks = _tick_positions(n_layer)
    ax.set_yticks(yticks, [row_labels[i] for i in yticks], fontsize=8)
    ax.set_xlabel(column)
    ax.set_ylabel("layer")
    ax.set_title(title if title is not None else f"activation patching ({kind})")
    fig.colorbar(im, ax=ax, label=value_label, shrink=0.8)
    return fig


# ----------------------------------------------------------------------------------------------
# Rotary embeddings
# ----------------------------------------------------------------------------------------------


def rotary_illustration(
    d_head: int = 256,
    positions: Iterable[float] = range(8),
    theta: float = 10_000.0,
    pairs: Sequence[int] | None = None,
    *,
    fig: FigureBase | None = None,
) -> Figure:
    """How RoPE turns a query/key: each pair of dimensions ``(i, i + d_head/2)`` is a 2-D vector
    rotated by ``pos * theta ** (-2 i / d_head)`` radians. One panel per pair, one arrow per position.

    Low ``i`` turns fast (sensitive to nearby offsets), high ``i`` barely moves (long range).
    Default pairs: the first two, the middle and the last. Gemma uses ``theta=10_000`` and, in
    Gemma 3's global layers, ``1_000_000``. The arrows are ``ax.lines`` in ``positions`` order, each
    from the origin to ``(cos angle, sin angle)``, i.e. the unit vector ``(1, 0)`` after rotation.
    """
    if d_head < 2 or d_head % 2:
        raise ValueError(f"d_head must be a positive even number, got {d_head}")
    half = d_head // 2
    if pairs is None:
        pairs = sorted({0, min(1, half - 1), half // 2, half - 1})
    pairs = list(pairs)
    bad = [i for i in pairs if not 0 <= i < half]
    if not pairs or bad:
        raise ValueError(f"pairs must be indices in [0, d_head/2 = {half}), got {pairs}")
    positions = [float(p) for p in positions]
    if not positions:
        raise ValueError("positions must not be empty")

    ncols = min(len(pairs), 4)
    nrows = math.ceil(len(pairs) / ncols)
    if fig is None:
        fig = new_figure((2.9 * ncols + 1.0, 3.1 * nrows + 0.5))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    pos_norm = mcolors.Normalize(min(positions), max(positions) if max(positions) > min(positions) else
                                 min(positions) + 1)

    for n, ax in enumerate(axes.flat):
        if n >= len(pairs):
            ax.set_axis_off()
            continue
        i = pairs[n]
        freq = theta ** (-2.0 * i / d_head)
        ax.add_patch(Circle((0.0, 0.0), 1.0, fill=False, color="0.75", linewidth=0.8))
        for p in positions:
            angle = p * freq
            ax.plot([0.0, math.cos(angle)], [0.0, math.sin(angle)], color=cmap(pos_norm(p)),
                    marker="o", markevery=[1], markersize=4, linewidth=1.5, label=f"pos {p:g}")
        ax.set_aspect("equal")
        ax.set_xlim(-1.2, 1.2)
        ax.set_ylim(-1.2, 1.2)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"dim {i}", fontsize=8)
        ax.set_ylabel(f"dim {i + half}", fontsize=8)
        # The wavelength in tokens is what a reader can relate to: after that many positions the pair
        # has turned a full circle.
        wavelength = 2 * math.pi / freq
        ax.set_title(f"pair ({i}, {i + half})\n{freq:.3g} rad/pos, full turn every {wavelength:.3g} pos",
                     fontsize=8)
    fig.suptitle(f"RoPE rotation by position (d_head={d_head}, theta={theta:g})")
    fig.colorbar(ScalarMappable(pos_norm, cmap), ax=axes.ravel().tolist(), label="pos", shrink=0.7)
    return fig.figure


# ----------------------------------------------------------------------------------------------
# Coloured text
# ----------------------------------------------------------------------------------------------


def _html_token(token: str) -> str:
    """Escaped token text for a ``white-space: pre-wrap`` span: spaces stay spaces (the background
    shows them), a newline shows as '↵' and then really breaks the line, tabs show as '⇥'."""
    escaped = html.escape(token, quote=True)
    return escaped.replace("\r", "").replace("\t", "⇥").replace("\n", "↵<br>") or "∅"


def colored_tokens_html(
    tokens: Sequence[str],
    values: Any,
    *,
    cmap: str = "RdBu",
    vmin: float | None = None,
    vmax: float | None = None,
    value_format: str = "{:.4g}",
) -> HTMLString:
    """The text, each token's background coloured by its value, with the value as a tooltip.

    Default limits are symmetric around zero (``±max|value|``) so that zero sits at the middle of a
    diverging map; for non-negative values with a sequential map pass ``vmin=0``. Token text is
    HTML-escaped. NaN values are shown on grey. Returns a ``str`` that Jupyter displays as HTML.
    """
    tokens = list(tokens)
    vals = _to_numpy(values, "values", 1, "pos")
    if len(tokens) != len(vals):
        raise ValueError(f"got {len(tokens)} tokens but {len(vals)} values")
    default_low, default_high = _symmetric_limits(vals)
    low = default_low if vmin is None else float(vmin)
    high = default_high if vmax is None else float(vmax)
    if high <= low:
        raise ValueError(f"vmax ({high}) must be greater than vmin ({low})")
    colour_map = matplotlib.colormaps[cmap]
    scale = mcolors.Normalize(low, high, clip=True)

    spans = []
    for pos, (token, v) in enumerate(zip(tokens, vals, strict=True)):
        if np.isfinite(v):
            r, g, b, _ = colour_map(scale(v))
        else:
            r, g, b = mcolors.to_rgb(_MASKED_GREY)
        # Perceived brightness decides black or white text, so dark backgrounds stay readable.
        text_colour = "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#ffffff"
        tooltip = html.escape(f"pos {pos}: {value_format.format(v)}", quote=True)
        spans.append(
            f'<span style="background-color:{mcolors.to_hex((r, g, b))};color:{text_colour};'
            f'padding:1px 0;border-radius:2px" title="{tooltip}">{_html_token(str(token))}</span>'
        )
    body = "".join(spans)
    return HTMLString(
        '<div style="font-family:monospace;white-space:pre-wrap;line-height:1.9">' + body + "</div>"
    )


# ----------------------------------------------------------------------------------------------
# Tensor card
# ----------------------------------------------------------------------------------------------


def _shape_string(shape: tuple[int, ...], axes: Sequence[str]) -> str:
    return "[" + ", ".join(f"{a}={n}" for a, n in zip(axes, shape, strict=True)) + "]"


def tensor_card(
    tensor: Any,
    name: str,
    axes: Sequence[str],
    *,
    show: tuple[str, str] | None = None,
    max_rows: int = 64,
    max_cols: int = 512,
    ax: Axes | None = None,
) -> Figure:
    """A one-glance summary of an activation or weight.

    Title: ``name`` and the shape in the axis vocabulary, e.g.
    ``blocks.0.attn.hook_q  [batch=1, pos=7, head=8, d_head=256]``. Body: a heatmap of one 2-D slice,
    by default the last two axes at index 0 of every other axis (``show=("pos", "d_head")`` picks
    others); the subtitle says which slice, and rows/columns beyond ``max_rows``/``max_cols`` are cut
    (also said). Below: mean, std, min, max and L2 norm of the *whole* tensor.
    """
    dtype = str(getattr(tensor, "dtype", ""))
    arr = _to_numpy(tensor, name)
    axes = tuple(axes)
    if len(axes) != arr.ndim:
        raise ValueError(f"{name} has {arr.ndim} axes (shape {tuple(arr.shape)}) but {len(axes)} axis names "
                         f"were given: {axes}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)})")
    header = f"{name}  {_shape_string(arr.shape, axes)}"

    if arr.ndim >= 2:
        show = tuple(show) if show is not None else axes[-2:]
        if len(show) != 2 or show[0] == show[1] or any(a not in axes for a in show):
            raise ValueError(f"show must name two different axes of {axes}, got {show}")
        kept = [axes.index(a) for a in show]
        index: list[Any] = [0] * arr.ndim
        for k in kept:
            index[k] = slice(None)
        data = arr[tuple(index)]
        if kept[0] > kept[1]:
            data = data.T
        fixed = [f"{a}=0" for a in axes if a not in show]
        row_axis, col_axis = show
    elif arr.ndim == 1:
        data, fixed, row_axis, col_axis = arr[None, :], [], "", axes[0]
    else:
        data, fixed, row_axis, col_axis = None, [], "", ""

    fig, ax = _new_axes(ax, (7.0, 4.8))
    if data is not None:
        n_rows, n_cols = data.shape
        data = data[:max_rows, :max_cols]
        where = f"slice {', '.join(fixed)}" if fixed else "whole tensor"
        cuts = []
        if n_rows > max_rows:
            cuts.append(f"first {max_rows} of {n_rows} {row_axis}")
        if n_cols > max_cols:
            cuts.append(f"first {max_cols} of {n_cols} {col_axis}")
        subtitle = "; ".join([where, *cuts]) + (f"  ({dtype})" if dtype else "")
        vmin, vmax = _symmetric_limits(data)
        im = ax.imshow(data, cmap="RdBu", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_xlabel(col_axis)
        ax.set_ylabel(row_axis)
        if row_axis == "":
            ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    else:
        subtitle = f"scalar  ({dtype})" if dtype else "scalar"
        ax.set_axis_off()
    ax.set_title(f"{header}\n{subtitle}", loc="left", fontsize=10, parse_math=False)

    stats = (f"mean {arr.mean():.4g}   std {arr.std():.4g}   min {arr.min():.4g}   max {arr.max():.4g}   "
             f"norm {np.linalg.norm(arr.ravel()):.4g}")
    ax.annotate(stats, xy=(0.0, 0.0), xycoords="axes fraction", xytext=(0, -34), textcoords="offset points",
                va="top", ha="left", fontsize=9, family="monospace")
    return fig


def altup_streams(stream_rms: Any, mixing: Any, corrections: Any, *, layer: int,
                  fig: Figure | None = None) -> Figure:
    """Gemma 3n's AltUp copies at one position: their size through the model, and one layer's mixing.

    stream_rms: ``[layer + 1, stream]`` root-mean-square of each copy entering layer 0 and leaving each layer.
    mixing: ``[stream, stream]`` the prediction's weights ``[out copy, in copy]`` on ``layer``.
    corrections: ``[stream]`` how much of the block's change each copy takes on ``layer`` (``1 + c``).
    """
    rms = _to_numpy(stream_rms, "stream_rms", 2, "[layer + 1, stream]")
    mix = _to_numpy(mixing, "mixing", 2, "[stream, stream]")
    corr = _to_numpy(corrections, "corrections", 1, "[stream]")
    if fig is None:
        fig = new_figure((11, 3.4))
    left, middle, right = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2.2, 1.2, 1.0]})
    for stream in range(rms.shape[1]):
        left.plot(range(rms.shape[0]), rms[:, stream], marker="o", ms=3,
                  label=f"copy {stream}" + (" (active)" if stream == 0 else ""))
    left.axvline(layer + 1, color="#999", lw=0.8, ls="--")
    left.set(xlabel="after layer (0 = embedding)", ylabel="rms", title="each copy's size")
    left.set_xticks(range(rms.shape[0]), ["emb"] + [str(i) for i in range(rms.shape[0] - 1)])
    left.legend(fontsize=7)
    low, high = _symmetric_limits(mix)
    image = middle.imshow(mix, cmap="RdBu", vmin=low, vmax=high)
    middle.set(xlabel="in copy", ylabel="out copy", title=f"layer {layer}: prediction mix")
    middle.set_xticks(range(mix.shape[1]))
    middle.set_yticks(range(mix.shape[0]))
    _root_figure(middle).colorbar(image, ax=middle, fraction=0.046)
    right.bar(range(len(corr)), corr, color="#4477aa")
    right.set(xlabel="copy", title="correction weight (1 + c)")
    right.set_xticks(range(len(corr)))
    return fig


def sparsity_cutoff(gate: Any, cutoff: float, *, sparsity: float, ax: Axes | None = None) -> Figure:
    """Gemma 3n's gaussian top-k on one token: the histogram of its gate values ``[d_mlp]`` and the cutoff
    ``mean + std * Phi^-1(sparsity)``; the neurons to its right are the ones kept."""
    values = _to_numpy(gate, "gate", 1, "[d_mlp]")
    fig, ax = _new_axes(ax, (6, 3))
    kept = values > cutoff
    ax.hist(values[~kept], bins=40, color="#bbbbbb", label=f"cut: {int((~kept).sum())}")
    ax.hist(values[kept], bins=20, color="#cc3311", label=f"kept: {int(kept.sum())}")
    ax.axvline(cutoff, color="black", lw=1)
    ax.set(xlabel="gate value (mlp.hook_pre)", ylabel="neurons",
           title=f"sparsity {sparsity:.0%}: kept {kept.mean():.1%} of {len(values)}")
    ax.legend(fontsize=8)
    return fig
