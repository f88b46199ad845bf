"""Explorers: one question each about a prompt, answered from one cached forward pass.

    AttentionExplorer   where does each head look? pick a token: what it attends to, what attends to it
    LogitLensExplorer   what would the model predict if it stopped after layer l? (layer x position grid)
    SamplingPlayground  how do temperature, top-k, top-p and min-p reshape the next-token distribution?
    TokenizerExplorer   how does text become ids: pieces, byte fallbacks, special tokens, chat template
    PatchingExplorer    which activations carry the difference between a clean and a corrupted prompt?

Each runs the model when its prompt changes and redraws from what it stored when a control moves.
The numbers come from hooks (``run_with_cache``), ``gemma_lab.interp`` (logit lens, patching) and
``gemma_lab.sampling``; the pictures from ``gemma_lab.viz``.
"""

from __future__ import annotations

import html
import re

import ipywidgets as widgets
import torch
from matplotlib.patches import Rectangle

from gemma_lab import interp, sampling, viz
from gemma_lab.widgets._common import (
    DEFAULT_TEXT,
    MAX_SEED,
    MAX_TOKENIZER_CHARS,
    ModelWidget,
    WidgetBase,
    encode,
    full_width,
    message_html,
    run_prompt,
    str_tokens,
    table_html,
    token_label,
)

_SLIDER = {"continuous_update": False, "layout": widgets.Layout(width="320px"),
           "style": {"description_width": "90px"}}


class _PromptWidget(ModelWidget):
    """A widget about one prompt: a text box, the prompt's tokens and one cached forward pass."""

    def __init__(self, model, tokenizer, text: str) -> None:
        super().__init__(model, tokenizer)
        self.text_box = widgets.Text(value=text, description="text", continuous_update=False,
                                     layout=full_width())
        self.text_box.observe(self._on_text, names="value")
        self.error: str | None = None
        self.tokens: torch.Tensor | None = None

    def _on_text(self, change) -> None:
        self.run(change["new"])

    def _encode(self, text: str) -> bool:
        """Set ``tokens`` and ``str_tokens`` from ``text``; False (and ``error``) when it cannot be used."""
        try:
            self.tokens = encode(self.tokenizer, text, self.model.device)
        except ValueError as error:
            self.error = str(error)
            self._show(html_parts=[message_html(self.error, "error")])
            return False
        self.error = None
        self.str_tokens = str_tokens(self.tokenizer, self.tokens[0])
        return True

    def _label(self, token_id: int) -> str:
        return token_label(self.tokenizer, token_id)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def _distinct_labels(tokens: list[str]) -> list[str]:
    """Readable token labels, made distinct with zero-width spaces.

    ipywidgets' ToggleButtons front end finds the button to highlight by its label, so a repeated
    token (" John" twice) would light up its first occurrence; the invisible suffix prevents that.
    """
    seen: dict[str, int] = {}
    labels = []
    for token in tokens:
        label = viz.readable_token(token)
        labels.append(label + "\u200b" * seen.get(label, 0))
        seen[label] = seen.get(label, 0) + 1
    return labels


class AttentionExplorer(_PromptWidget):
    """One layer's attention: a head's pattern (or all heads), and for a chosen token its row and column.

    Controls: ``text_box``, ``layer_slider``, ``head_slider``, ``all_heads`` (checkbox),
    ``token_picker`` (one toggle button per token). Shown: ``pattern`` ``[q_pos, k_pos]`` (the head
    drawn), ``shown_row`` (what the chosen token attends to, ``pattern[pos, :]``) and ``shown_column``
    (how much each later token attends to it, ``pattern[:, pos]``), all read from ``hook_pattern``.
    """

    def __init__(self, model=None, tokenizer=None, text: str = DEFAULT_TEXT, *, layer: int = 0,
                 head: int = 0) -> None:
        super().__init__(model, tokenizer, text)
        cfg = self.cfg
        layer = self._int_setting("layer", layer, 0, cfg.n_layers - 1, 0)
        head = self._int_setting("head", head, 0, cfg.n_heads - 1, 0)
        self.layer_slider = widgets.IntSlider(value=layer, min=0, max=cfg.n_layers - 1, description="layer",
                                              **_SLIDER)
        self.head_slider = widgets.IntSlider(value=head, min=0, max=cfg.n_heads - 1, description="head",
                                             **_SLIDER)
        self.all_heads = widgets.Checkbox(value=False, description="all heads of the layer")
        self.token_picker = widgets.ToggleButtons(options=[("", 0)], style={"button_width": "auto"})
        self.cache = None
        self.pattern = self.shown_row = self.shown_column = None
        for control in (self.layer_slider, self.head_slider, self.all_heads, self.token_picker):
            control.observe(self._on_control, names="value")
        self.details = widgets.HTML()
        self.widget = self._root([
            self.text_box,
            widgets.HBox([self.layer_slider, self.head_slider, self.all_heads]),
            widgets.HTML("<b>pick a token:</b>"), self.token_picker,
            self.details, self.out,
        ])
        self._holding = False
        self.run(text)

    @property
    def selected_pos(self) -> int:
        return self.token_picker.value

    def run(self, text: str) -> None:
        """Run a new prompt once (every activation cached) and redraw."""
        if not self._encode(text):
            return
        _, self.cache = run_prompt(self.model, self.tokens)
        self._holding = True
        try:
            positions = range(len(self.str_tokens))
            self.token_picker.options = list(zip(_distinct_labels(self.str_tokens), positions))
            self.token_picker.tooltips = [f"pos {pos}" for pos in positions]
            self.token_picker.value = len(self.str_tokens) - 1
        finally:
            self._holding = False
        self.redraw()

    def _on_control(self, change) -> None:
        if not self._holding:
            self.redraw()

    def redraw(self) -> None:
        layer, head, pos = self.layer_slider.value, self.head_slider.value, self.selected_pos
        patterns = self.cache["pattern", layer][0]  # [head, q_pos, k_pos]
        scores = self.cache["attn_scores", layer][0]
        masked = (scores == torch.finfo(scores.dtype).min)  # what the model's mask removed
        self.pattern = patterns[head]
        self.shown_row = self.pattern[pos, :]
        self.shown_column = self.pattern[:, pos]
        token = viz.readable_token(self.str_tokens[pos])
        if self.all_heads.value:  # the mask depends on positions only: the same for every head
            figure = viz.attention_heads_grid(patterns, self.str_tokens, layer=layer, mask=masked[0].numpy())
        else:
            figure = viz.attention_pattern(self.pattern, self.str_tokens, mask=masked[head].numpy(),
                                           title=f"layer {layer} head {head}")
            figure.axes[0].add_patch(Rectangle((-0.5, pos - 0.5), len(self.str_tokens), 1, fill=False,
                                               edgecolor="C3", linewidth=1.5))
        row = viz.colored_tokens_html(self.str_tokens, self.shown_row, cmap="Blues", vmin=0, vmax=1)
        column = viz.colored_tokens_html(self.str_tokens, self.shown_column, cmap="Oranges", vmin=0, vmax=1)
        self.details.value = (
            f"<b>{html.escape(token)}</b> (pos {pos}) <b>attends to</b> (row {pos} of layer {layer} head "
            f"{head}; hover for weights):{row}<b>is attended to by</b> (column {pos}: later tokens only, the "
            f"mask is causal):{column}"
        )
        self._show([figure])


# ---------------------------------------------------------------------------------------------
# Logit lens
# ---------------------------------------------------------------------------------------------


class LogitLensExplorer(_PromptWidget):
    """The residual stream after every layer, read through the final norm and the unembedding.

    The numbers are ``interp.logit_lens``. The grid is layer x position: colour = probability of the
    top token (or of the tracked token), text = the top token. Choose a cell with ``row_select``
    (``"embed"``, ``"0"``, ...) and ``pos_slider`` to see its top-k. Shown: ``lens`` (the
    ``interp.LogitLens``), ``grid`` ``[layer, pos]`` (the heatmap's values), ``cell_top_ids`` /
    ``cell_top_probs`` (the bars).
    """

    def __init__(self, model=None, tokenizer=None, text: str = DEFAULT_TEXT, *, k: int = 10,
                 track: str = "") -> None:
        super().__init__(model, tokenizer, text)
        self.k = self._int_setting("k", k, 1, min(100, self.cfg.vocab_size), min(10, self.cfg.vocab_size))
        labels = ["embed"] + [str(layer) for layer in range(self.cfg.n_layers)]
        self.row_select = widgets.Dropdown(options=labels, value=labels[-1], description="layer",
                                           layout=widgets.Layout(width="200px"))
        self.pos_slider = widgets.IntSlider(value=0, min=0, max=0, description="pos", **_SLIDER)
        self.track_box = widgets.Text(value=track, description="track token", continuous_update=False,
                                      placeholder="e.g. ' Mary' (one token)",
                                      style={"description_width": "90px"})
        self.lens = None
        self.grid = self.cell_top_ids = self.cell_top_probs = None
        self.row_select.observe(self._on_control, names="value")
        self.pos_slider.observe(self._on_control, names="value")
        self.track_box.observe(self._on_track, names="value")
        self.note = widgets.HTML()
        self.widget = self._root([
            self.text_box, widgets.HBox([self.row_select, self.pos_slider, self.track_box]), self.note,
            self.out,
        ])
        self._holding = False
        self.run(text)

    @property
    def tracked_id(self) -> int | None:
        """The id of the tracked token, or None (nothing typed, or not exactly one token)."""
        text = self.track_box.value
        if not text:
            return None
        ids = self.tokenizer.encode(text, add_bos=False)
        return ids[0] if len(ids) == 1 else None

    def run(self, text: str) -> None:
        if not self._encode(text):
            return
        self._compute()
        self._holding = True
        try:
            self.pos_slider.max = self.tokens.shape[1] - 1
            self.pos_slider.value = self.tokens.shape[1] - 1
        finally:
            self._holding = False
        self.redraw()

    def _compute(self) -> None:
        tracked = self.tracked_id
        targets = None if tracked is None else torch.full((self.tokens.shape[1],), tracked)
        self.lens = interp.logit_lens(self.model, self.tokens, k=self.k, targets=targets)

    def _on_track(self, change) -> None:
        self._compute()
        self.redraw()

    def _on_control(self, change) -> None:
        if not self._holding:
            self.redraw()

    def redraw(self) -> None:
        lens, tracked = self.lens, self.tracked_id
        row, pos = lens.labels.index(self.row_select.value), self.pos_slider.value
        top_ids = lens.top_tokens[..., 0]
        names = [[self._label(t) for t in layer_row.tolist()] for layer_row in top_ids]
        self.grid = lens.top_probs[..., 0] if tracked is None else lens.target_probs
        what = "top token" if tracked is None else f"{self._label(tracked)!r}"
        heatmap = viz.logit_lens_heatmap(self.grid, names, self.str_tokens, layer_labels=lens.labels,
                                         title=f"logit lens: probability of the {what} (text: the top token)")
        heatmap.axes[0].add_patch(Rectangle((pos - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="C3",
                                            linewidth=2))
        self.cell_top_ids, self.cell_top_probs = lens.top_tokens[row, pos], lens.top_probs[row, pos]
        labels = [self._label(t) for t in self.cell_top_ids.tolist()]
        bars = viz.top_k_bars((self.cell_top_probs, labels), k=self.k,
                              highlight=self._label(tracked) if tracked is not None else None,
                              title=f"after layer {lens.labels[row]}, at pos {pos} "
                                    f"({viz.readable_token(self.str_tokens[pos])})")
        problem = ""
        if self.track_box.value and tracked is None:
            problem = message_html(f"{self.track_box.value!r} is not a single token; tracking the top token",
                                   "error")
        self.note.value = problem + (
            "<small>Row <i>embed</i> is the embedding alone; the last row is exactly the model's output. "
            "Each prediction is for the token after its position.</small>")
        self._show([heatmap, bars])


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


#: The playground's opening prompt: one the tiny model is unsure about (its top token has about
#: 0.74 of the probability), so that every control visibly reshapes the distribution.
SAMPLING_TEXT = "Paris is the capital of"
REMOVED_COLOUR, SAMPLED_COLOUR = "0.6", "C2"


class SamplingPlayground(_PromptWidget):
    """The next-token distribution after the prompt, reshaped by the sampling filters, and sampled.

    Controls: ``temperature_slider``, ``top_k_slider`` (0 = off), ``top_p_slider`` (1 = off),
    ``min_p_slider`` (0 = off), ``seed_box``, ``sample_button``. Shown: ``logits`` (the model's,
    last position), ``probs`` (``sampling.logits_to_probs`` with the controls' values, full vocab),
    ``report`` (``sampling.filter_report``), ``removed`` (filter -> removed token ids), ``samples``.
    """

    def __init__(self, model=None, tokenizer=None, text: str = SAMPLING_TEXT, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                 seed: int = 0, bars: int = 12) -> None:
        super().__init__(model, tokenizer, text)
        self.bars = self._int_setting("bars", bars, 1, 100, 12)
        temperature = self._float_setting("temperature", temperature, 0.0, 3.0, 1.0)
        top_k = self._int_setting("top_k", top_k, 1, 100, None) if top_k is not None else None
        top_p = self._float_setting("top_p", top_p, 0.01, 1.0, None) if top_p is not None else None
        min_p = self._float_setting("min_p", min_p, 0.0, 1.0, None) if min_p is not None else None
        seed = self._int_setting("seed", seed, 0, MAX_SEED, 0)
        self.temperature_slider = widgets.FloatSlider(value=temperature, min=0.0, max=3.0, step=0.05,
                                                      description="temperature", **_SLIDER)
        self.top_k_slider = widgets.IntSlider(value=top_k or 0, min=0, max=100, description="top-k (0=off)",
                                              **_SLIDER)
        self.top_p_slider = widgets.FloatSlider(value=1.0 if top_p is None else top_p, min=0.01, max=1.0,
                                                step=0.01, description="top-p (1=off)", **_SLIDER)
        self.min_p_slider = widgets.FloatSlider(value=min_p or 0.0, min=0.0, max=1.0, step=0.01,
                                                description="min-p (0=off)", **_SLIDER)
        self.seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="170px"))
        self.sample_button = widgets.Button(description="Sample", button_style="primary",
                                            tooltip="draw one token with this seed, then go to the next seed")
        self.summary = widgets.HTML()
        self.samples: list[int] = []
        self.logits = self.probs = self.report = None
        self.removed: dict[str, list[int]] = {}
        for control in (self.temperature_slider, self.top_k_slider, self.top_p_slider, self.min_p_slider):
            control.observe(self._on_control, names="value")
        self.sample_button.on_click(self._on_sample)
        self.widget = self._root([
            self.text_box,
            widgets.HBox([widgets.VBox([self.temperature_slider, self.top_k_slider]),
                          widgets.VBox([self.top_p_slider, self.min_p_slider]),
                          widgets.VBox([self.seed_box, self.sample_button])]),
            self.summary, self.out,
        ])
        self.run(text)

    def run(self, text: str) -> None:
        if not self._encode(text):
            return
        with torch.inference_mode():  # a plain forward pass: the logits generation samples from
            self.logits = self.model(self.tokens)[0, -1]
        self.samples = []
        self.redraw()

    def sampling_kwargs(self) -> dict:
        """The controls as ``sampling`` keyword arguments (a switched-off filter is None)."""
        top_k, top_p, min_p = self.top_k_slider.value, self.top_p_slider.value, self.min_p_slider.value
        return {"temperature": float(self.temperature_slider.value), "top_k": top_k or None,
                "top_p": float(top_p) if top_p < 1.0 else None, "min_p": float(min_p) if min_p > 0 else None}

    def sample(self) -> int:
        """Draw one token with the current seed (as ``sampling.sample`` does in generation), then seed + 1."""
        seed = int(self.seed_box.value)
        if not 0 <= seed <= MAX_SEED:
            self.summary.value = message_html(f"seed {seed} is outside 0 to {MAX_SEED}; pick another", "error")
            return -1
        generator = sampling.make_generator(seed)
        token = int(sampling.sample(self.logits, generator=generator, **self.sampling_kwargs()))
        self.samples.append(token)
        self.seed_box.value += 1
        self.redraw()
        return token

    def _on_sample(self, button) -> None:
        self.sample()

    def _on_control(self, change) -> None:
        self.redraw()

    def setting_text(self) -> str:
        """The controls as one line, each number as the slider shows it (0.9, not 0.9000000000000001)."""
        return ", ".join(f"{name}={'off' if value is None else format(value, 'g')}"
                         for name, value in self.sampling_kwargs().items())

    def redraw(self) -> None:
        kwargs = self.sampling_kwargs()
        self.report = sampling.filter_report(self.logits, **kwargs)
        self.probs = sampling.logits_to_probs(self.logits, **kwargs)
        self.removed = {name: mask.nonzero()[:, 0].tolist() for name, mask in self.report.removed.items()}
        original = sampling.logits_to_probs(self.logits)  # temperature 1, no filter: the model's own
        removed_any = set().union(*map(set, self.removed.values()))
        n = min(self.bars, self.logits.shape[-1])
        kept = int((self.probs > 0).sum())
        top = original.topk(n).indices.tolist()
        fig, axes = viz.new_subplots((12, max(3.0, 0.3 * n + 1.2)), 1, 2)
        left, right = axes[0]
        # One colour, one meaning: grey = removed by a filter (left), green = the last sample (right).
        viz.top_k_bars(original, self._label, k=n, ax=left, highlight_color=REMOVED_COLOUR,
                       title="the model's distribution\n(T=1, no filter; grey: removed by the filters)",
                       highlight=[self._label(t) for t in top if t in removed_any])
        # Only tokens that kept a probability: bars of zero (removed tokens, unused special ids) say nothing.
        viz.top_k_bars(self.probs, self._label, k=max(1, min(n, kept)), ax=right, highlight_color=SAMPLED_COLOUR,
                       title=f"after the filters\n({self.setting_text()}; green: last sample)",
                       highlight=[self._label(t) for t in self.samples[-1:]])
        lines = [f"<b>{kept}</b> of {self.logits.shape[-1]} tokens keep a probability above 0."]
        for name in sampling.FILTER_ORDER:
            ids = self.removed.get(name, [])
            if ids:
                by_prob = sorted(ids, key=lambda t: -float(original[t]))[:8]
                names = ", ".join(repr(self._label(t)) for t in by_prob)
                more = " …" if len(ids) > 8 else ""
                lines.append(f"{html.escape(name)} removed {len(ids)}: most likely of them "
                             f"{html.escape(names)}{more}")
        if self.samples:
            drawn = ", ".join(repr(self._label(t)) for t in self.samples[-10:])
            lines.append(f"samples so far (newest last): {html.escape(drawn)}")
        self.summary.value = "<br>".join(lines)
        self._show([fig])


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPECIAL_PIECE = re.compile(r"<[^<>\s]+>")


class TokenizerExplorer(WidgetBase):
    """Type text, see how the tokenizer cuts it: pieces, ids, byte fallbacks, special tokens, chat template.

    Needs only a tokenizer (default: the lesson model's). Controls: ``text_area``, ``add_bos``,
    ``chat_checkbox``. Shown: ``ids`` (exactly ``tokenizer.encode``), ``pieces`` (vocabulary entries),
    ``kinds`` ("special", "byte" or "text" per token), ``chat_text`` and ``chat_ids``.
    """

    def __init__(self, tokenizer=None, text: str = "Gemma's tokenizer: 2024 → naïve café <eos> 🦙",
                 *, add_bos: bool = True) -> None:
        if tokenizer is None:
            from gemma_lab.notebook import lesson_model_path
            from gemma_lab.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(lesson_model_path())
        super().__init__()
        self.tokenizer = tokenizer
        self.text_area = widgets.Textarea(value=text, description="text", continuous_update=False,
                                          layout=widgets.Layout(width="auto", height="70px", align_self="stretch"))
        self.add_bos = widgets.Checkbox(value=add_bos, description="add <bos>")
        self.chat_checkbox = widgets.Checkbox(value=True, description="show as a chat turn")
        for control in (self.text_area, self.add_bos, self.chat_checkbox):
            control.observe(self._on_control, names="value")
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.kinds: list[str] = []
        self.chat_text = ""
        self.chat_ids: list[int] = []
        self.widget = self._root([self.text_area, widgets.HBox([self.add_bos, self.chat_checkbox]), self.out])
        self.redraw()

    def _on_control(self, change) -> None:
        self.redraw()

    def kind(self, token_id: int) -> str:
        piece = self.tokenizer.id_to_piece(token_id)
        if _BYTE_PIECE.fullmatch(piece):
            return "byte"
        special = {self.tokenizer.pad_id, self.tokenizer.eos_id, self.tokenizer.bos_id, self.tokenizer.unk_id,
                   self.tokenizer.start_of_turn_id, self.tokenizer.end_of_turn_id}
        return "special" if token_id in special or _SPECIAL_PIECE.fullmatch(piece) else "text"

    def _tokens_html(self, ids: list[int]) -> str:
        shown = str_tokens(self.tokenizer, ids)
        kinds = [self.kind(i) for i in ids]
        values = torch.tensor([{"text": float(n % 2), "byte": 3.0, "special": 5.0}[k]
                               for n, k in enumerate(kinds)])
        return viz.colored_tokens_html(shown, values, cmap="Pastel1", vmin=0, vmax=8)

    def redraw(self) -> None:
        tokenizer, text = self.tokenizer, self.text_area.value
        cut = ""
        if len(text) > MAX_TOKENIZER_CHARS:  # a 100k-row table would take many seconds to build and draw
            cut = message_html(f"the text has {len(text):,} characters; only the first {MAX_TOKENIZER_CHARS:,} "
                               f"are tokenized here", "error")
            text = text[:MAX_TOKENIZER_CHARS]
        try:
            self.ids = tokenizer.encode(text, add_bos=self.add_bos.value)
        except ValueError as error:  # e.g. a lone surrogate pasted in
            self.ids, self.pieces, self.kinds = [], [], []
            self._show(html_parts=[message_html(str(error), "error")])
            return
        self.pieces = [tokenizer.id_to_piece(i) for i in self.ids]
        self.kinds = [self.kind(i) for i in self.ids]
        counts = {k: self.kinds.count(k) for k in ("text", "byte", "special")}
        parts = [cut] if cut else []
        parts += [
            f"<b>{len(self.ids)} tokens</b> ({counts['text']} text, {counts['byte']} byte fallback, "
            f"{counts['special']} special; {len(text.encode('utf-8'))} UTF-8 bytes). Colours: alternating "
            "text tokens, <span style='background:#decbe4'>byte fallback</span>, "
            "<span style='background:#ffffcc'>special</span>.",
            self._tokens_html(self.ids),
            table_html(("pos", "id", "piece", "kind"),
                       ((n, i, p, k) for n, (i, p, k) in enumerate(zip(self.ids, self.pieces, self.kinds)))),
            f"decode(ids) gives back: <code>{html.escape(tokenizer.decode(self.ids))}</code>",
        ]
        self.chat_text, self.chat_ids = "", []
        if self.chat_checkbox.value:
            messages = [{"role": "user", "content": text}]
            try:
                self.chat_text = tokenizer.apply_chat_template(messages)
                self.chat_ids = tokenizer.apply_chat_template(messages, tokenize=True)
            except ValueError as error:
                parts.append(message_html(f"chat template: {error}", "error"))
            else:
                heading = (f"<b>as a chat turn</b> ({tokenizer.chat_format} template, "
                           f"{len(self.chat_ids)} tokens):")
                chat = f"<pre style='background:#f6f8fa;padding:4px'>{html.escape(self.chat_text)}</pre>"
                parts += [heading + chat,
                          self._tokens_html(self.chat_ids)]
        self._show(html_parts=parts)


# ---------------------------------------------------------------------------------------------
# Activation patching
# ---------------------------------------------------------------------------------------------


class PatchingExplorer(ModelWidget):
    """Activation patching: run the corrupted prompt with one clean activation copied in, and measure.

    The metric is the logit difference ``logit(answer) - logit(wrong)`` at the last position. Results
    are ``interp.patch_by_layer_pos`` (``[layer, pos]``, for ``activation_select``) and
    ``interp.patch_by_head`` (``z``, ``[layer, head]``), drawn as the change from the corrupted run
    (or, with ``normalize``, as the fraction of the clean-corrupted gap restored). Patching runs on
    ``run_button`` (many forward passes). Shown: ``by_pos``/``by_head`` (metric values),
    ``shown_by_pos``/``shown_by_head`` (what the heatmaps draw), ``clean_metric``, ``corrupted_metric``.
    """

    def __init__(self, model=None, tokenizer=None, clean: str = DEFAULT_TEXT,
                 corrupted: str = "When Mary and John went to the store, Mary gave a drink to",
                 answer: str = " Mary", wrong: str = " John", *, activation: str = "resid_pre") -> None:
        super().__init__(model, tokenizer)
        text = {"continuous_update": False, "style": {"description_width": "90px"}}
        self.clean_box = widgets.Text(value=clean, description="clean", layout=full_width(), **text)
        self.corrupted_box = widgets.Text(value=corrupted, description="corrupted", layout=full_width(), **text)
        short = {"continuous_update": False, "layout": widgets.Layout(width="270px"),
                 "style": {"description_width": "105px"}}
        self.answer_box = widgets.Text(value=answer, description="answer", **short)
        self.wrong_box = widgets.Text(value=wrong, description="wrong answer", **short)
        self.activation_select = widgets.Dropdown(options=["resid_pre", "resid_mid", "resid_post", "attn_out",
                                                           "mlp_out"], value=activation, description="patch",
                                                  layout=widgets.Layout(width="220px"))
        self.normalize = widgets.Checkbox(value=False, description="as fraction of the gap")
        self.run_button = widgets.Button(description="Run patching", button_style="primary")
        self.summary = widgets.HTML()
        self.run_button.on_click(self._on_run)
        self.normalize.observe(self._on_normalize, names="value")
        self.by_pos = self.by_head = self.shown_by_pos = self.shown_by_head = None
        self.clean_metric = self.corrupted_metric = None
        self.error: str | None = None
        self.widget = self._root([
            self.clean_box, self.corrupted_box,
            widgets.HBox([self.answer_box, self.wrong_box]),
            widgets.HBox([self.activation_select, self.normalize, self.run_button]),
            self.summary, self.out,
        ])
        self.run()

    def _one_token(self, text: str, what: str) -> int:
        ids = self.tokenizer.encode(text, add_bos=False)
        if len(ids) != 1:
            raise ValueError(f"the {what} {text!r} is {len(ids)} tokens; it must be exactly one "
                             "(mind the leading space)")
        return ids[0]

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit difference ``logit(answer) - logit(wrong)`` at the last position (mean over the batch)."""
        last = logits[:, -1].float()
        return (last[:, self.answer_id] - last[:, self.wrong_id]).mean()

    def run(self) -> None:
        """Patch every (layer, position) and every (layer, head); then redraw."""
        try:
            self.answer_id = self._one_token(self.answer_box.value, "answer")
            self.wrong_id = self._one_token(self.wrong_box.value, "wrong answer")
            clean = encode(self.tokenizer, self.clean_box.value, self.model.device)
            corrupted = encode(self.tokenizer, self.corrupted_box.value, self.model.device)
            if clean.shape != corrupted.shape:
                raise ValueError(f"clean and corrupted prompts must have the same number of tokens "
                                 f"(got {clean.shape[1]} and {corrupted.shape[1]}); patching copies position "
                                 "by position")
        except ValueError as error:
            # Forget the last results and replace their heatmaps by the message: an empty redraw
            # (clear_output(wait=True) with nothing after it) would leave the old pictures on screen.
            self.error = str(error)
            self.by_pos = self.by_head = self.shown_by_pos = self.shown_by_head = None
            self.clean_metric = self.corrupted_metric = None
            self.summary.value = message_html(self.error, "error")
            self._show(html_parts=[message_html("No patching results for these inputs: fix them above and "
                                                "press Run patching.", "note")])
            return
        self.error = None
        self.clean_tokens, self.corrupted_tokens = clean, corrupted
        clean_logits, clean_cache = run_prompt(self.model, clean)
        corrupted_logits, _ = run_prompt(self.model, corrupted, names_filter="hook_logits")
        self.clean_metric = float(self.metric(clean_logits))
        self.corrupted_metric = float(self.metric(corrupted_logits))
        activation = self.activation_select.value
        self.patched_activation = activation
        self.by_pos = interp.patch_by_layer_pos(self.model, corrupted, clean_cache, self.metric,
                                                activation=activation, progress=False)
        self.by_head = interp.patch_by_head(self.model, corrupted, clean_cache, self.metric, activation="z",
                                            progress=False)
        self.redraw()

    def _on_run(self, button) -> None:
        self.run()

    def _on_normalize(self, change) -> None:
        if self.by_pos is not None and self.error is None:
            self.redraw()

    def redraw(self) -> None:
        gap = self.clean_metric - self.corrupted_metric
        if self.normalize.value and abs(gap) > 1e-6:
            self.shown_by_pos = (self.by_pos - self.corrupted_metric) / gap
            self.shown_by_head = (self.by_head - self.corrupted_metric) / gap
            label = "fraction of the clean−corrupted gap restored"
        else:
            self.shown_by_pos = self.by_pos - self.corrupted_metric
            self.shown_by_head = self.by_head - self.corrupted_metric
            label = "change in logit difference"
        clean_tokens = str_tokens(self.tokenizer, self.clean_tokens[0])
        corrupted_tokens = str_tokens(self.tokenizer, self.corrupted_tokens[0])
        columns = [c if c == k else f"{c}→{k}" for c, k in zip(clean_tokens, corrupted_tokens)]
        by_pos = viz.patching_heatmap(self.shown_by_pos, columns, value_label=label,
                                      title=f"patching {self.patched_activation} (clean→corrupted run)")
        by_head = viz.patching_heatmap(self.shown_by_head, kind="layer x head", value_label=label,
                                       title="patching each head's output z")
        answer = html.escape(token_label(self.tokenizer, self.answer_id))
        wrong = html.escape(token_label(self.tokenizer, self.wrong_id))
        note = "" if abs(gap) > 1e-6 or not self.normalize.value else " (no gap to normalise by)"
        self.summary.value = (
            f"metric: logit({answer}) − logit({wrong}) at the last position · clean run "
            f"<b>{self.clean_metric:.3f}</b> · corrupted run <b>{self.corrupted_metric:.3f}</b>{note}. "
            "Each cell: the corrupted run with that one activation taken from the clean run."
        )
        self._show([by_pos, by_head])
