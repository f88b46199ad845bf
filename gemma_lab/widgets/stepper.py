"""InferenceStepper: one forward pass of Gemma, walked stage by stage, with the model's own numbers.

    text -> tokens -> embedding rows -> x sqrt(d_model)
         -> per layer: norm, q, k, v, (qk-norm), RoPE, scores, mask, softmax, z, attn_out, residual add,
                       norm, gate, up, GeGLU, mlp_out, residual add
         -> final norm -> logits -> probabilities (temperature, top-k, top-p) -> the chosen token
         -> "Append token": one more pass over that token alone, reading and growing the KV cache.

Every number shown is read from the pass itself: the prompt runs once through ``run_with_cache``
(every hook point), and each stage shows a slice of one cached activation, never a recomputation.
``stepper.shown_tensor`` is exactly the tensor the picture draws and ``stepper.shown_hook`` the hook it
came from, so a test can check ``torch.equal(stepper.shown_tensor, cache[stepper.shown_hook][index])``.
The probabilities come from ``sampling.logits_to_probs`` / ``filter_report`` and the choice from
``sampling.sample``, the functions generation itself uses; the decode pass runs the model with a
``KVCache``, as generation does.

Pictures come from ``gemma_lab.viz``; this module only picks the slice and wires the controls.
"""

from __future__ import annotations

import html
from contextlib import contextmanager
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from gemma_lab import generation, sampling, viz
from gemma_lab.kv_cache import KVCache
from gemma_lab.widgets._common import (
    DEFAULT_TEXT,
    MAX_SEED,
    ModelWidget,
    encode,
    full_width,
    hook_axes,
    message_html,
    run_prompt,
    shape_string,
    str_tokens,
    table_html,
    token_label,
)

#: How many tokens "Append token" may add to one prompt (the KV cache is allocated for them).
MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Stage:
    """One step of the walk: its name (``stepper.current_stage``), its label, whether it is per layer."""

    name: str
    title: str
    per_layer: bool = False


_BEFORE_LAYERS = (
    Stage("text", "text"),
    Stage("tokens", "tokens and ids"),
    Stage("embedding", "embedding rows"),
    Stage("embed_scale", "× sqrt(d_model)"),
)
_ATTENTION = (
    Stage("pre_attn_norm", "pre-attention RMSNorm", True),
    Stage("q", "queries (q)", True),
    Stage("k", "keys (k)", True),
    Stage("v", "values (v)", True),
)
_QK_NORM = (Stage("qk_norm", "query/key RMSNorm", True),)
_AFTER_QKV = (
    Stage("rotary", "rotary rotation (RoPE)", True),
    Stage("scores", "scores q·k", True),
    Stage("mask", "causal / window mask", True),
    Stage("pattern", "softmax pattern", True),
    Stage("z", "weighted values (z)", True),
    Stage("attn_out", "output projection", True),
    Stage("resid_mid", "residual add", True),
    Stage("pre_mlp_norm", "pre-MLP RMSNorm", True),
    Stage("gate", "gate projection", True),
    Stage("up", "up projection", True),
    Stage("geglu", "GeGLU neurons", True),
    Stage("mlp_out", "down projection", True),
    Stage("resid_post", "residual add", True),
)
_AFTER_LAYERS = (
    Stage("final_norm", "final RMSNorm"),
    Stage("logits", "logits"),
    Stage("probs", "probabilities"),
    Stage("next_token", "chosen token"),
    Stage("kv_cache", "KV cache"),
)

# Per-layer stages that read one hook: stage -> hook name after "blocks.{layer}.".
_LAYER_HOOKS = {
    "pre_attn_norm": "ln1.hook_normalized",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "qk_norm": "attn.q_norm.hook_normalized",
    "rotary": "attn.hook_rot_q",
    "scores": "attn.hook_attn_scores_pre_softcap",
    "mask": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "z": "attn.hook_z",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "pre_mlp_norm": "ln2.hook_normalized",
    "gate": "mlp.hook_pre",
    "up": "mlp.hook_pre_linear",
    "geglu": "mlp.hook_post",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
}
_BY_QUERY_HEAD = {"q", "qk_norm", "rotary", "z"}  # [batch, pos, head, d_head]: slice [0, :, head]
_BY_KV_HEAD = {"k", "v"}  # [batch, pos, kv_head, d_head]: slice [0, :, kv_head]
_SQUARE = {"scores", "mask", "pattern"}  # [batch, head, q_pos, k_pos]: slice [0, head]

# One sentence per layer stage: what happened and why (filled in by InferenceStepper._layer_sentence).
LAYER_SENTENCES = {
    "pre_attn_norm": "RMSNorm divides each position's vector by its root-mean-square and multiplies by "
                     "(1 + w), so attention reads vectors of a controlled size whatever the stream's scale.",
    "q": "The query projection gives each position {cfg.n_heads} queries of d_head={cfg.d_head}, one per "
         "head: what that position is looking for.",
    "k": "The key projection gives {cfg.n_kv_heads} key vector(s) per position, what each position offers to "
         "be found by ({cfg.attention_kind}: {cfg.group_size} query head(s) share each key head, so head "
         "{head} reads kv_head {kv_head}).",
    "v": "The value projection gives what each position hands over when attended to; like keys, one per "
         "kv_head (head {head} reads kv_head {kv_head}).",
    "qk_norm": "Gemma 3 RMS-normalises every query and key head over d_head before rotating it, which keeps "
               "attention scores in a stable range (it replaced Gemma 2's softcap).",
    "rotary": "RoPE turns each pair of dimensions (i, i + d_head/2) by position × theta^(-2i/d_head) with "
              "theta={theta:g}{rope_scale}, so a query·key product depends on how far apart two tokens are, "
              "not where they are.",
    "scores": "Every query is dotted with every key and scaled by {cfg.attn_scale:.4g}{softcap}: row q_pos "
              "says how well that position's query matches each key.",
    "mask": "Keys a query may not see are set to the lowest float so that softmax gives them weight 0: "
            "future positions (causal){window}.",
    "pattern": "Softmax over k_pos turns each row into weights that sum to 1: how much each query position "
               "takes from each key position.",
    "z": "Each head averages the value vectors with its pattern's weights: z[pos, head] is what position pos "
         "reads through that head.",
    "attn_out": "The output projection maps all heads' z (head × d_head = {heads_width}) back to "
                "d_model={cfg.d_model}{post_norm}: this is what attention adds to the residual stream.",
    "resid_mid": "Residual add: the stream after attention is the stream before it plus attn_out; nothing is "
                 "overwritten, each layer only adds.",
    "pre_mlp_norm": "A second RMSNorm rescales the stream for the MLP, for the same reason as before "
                    "attention.",
    "gate": "The gate projection (d_model → d_mlp={cfg.d_mlp}) decides, per position, how strongly each "
            "neuron fires.",
    "up": "The up projection computes, in parallel, the value each neuron carries if its gate opens.",
    "geglu": "GeGLU: gelu_tanh(gate) × up. The GELU-gated products are the MLP's neurons; most stay near 0 "
             "and a few fire.",
    "mlp_out": "The down projection (d_mlp → d_model){post_norm} writes the neurons back into the residual "
               "stream's space: what the MLP adds.",
    "resid_post": "Residual add: the stream leaving layer {layer} is resid_mid plus mlp_out{next_layer}.",
}


@dataclass
class StageView:
    """What one stage shows: the exact tensor drawn, where it came from, the pictures and one sentence."""

    sentence: str
    tensor: torch.Tensor | None = None  # exactly what the picture draws
    hook: str | None = None  # the hook point it was read from (None: not an activation)
    index: str = ""  # how tensor was sliced out of the cached activation, e.g. "[0, :, 2]"
    shape: str = ""  # the whole activation's shape in the axis vocabulary
    figures: list[Figure] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)


class InferenceStepper(ModelWidget):
    """Walk one forward pass stage by stage: Next/Back, a clickable stage list, layer/head/pos selectors.

    ``model``/``tokenizer``: any loaded Gemma and its tokenizer; neither means the lesson model (the
    bundled tiny Gemma unless ``$GEMMA_LAB_MODEL`` says otherwise). Controls are attributes
    (``text_box``, ``stage_list``, ``next_button``, ``back_button``, ``layer_slider``, ``head_slider``,
    ``pos_slider``, ``temperature_slider``, ``top_k_slider``, ``top_p_slider``, ``seed_box``,
    ``append_button``); so is what is shown (``current_stage``, ``shown_tensor``, ``shown_hook``,
    ``figures``) and the pass behind it (``tokens``, ``pass_tokens``, ``cache``, ``logits``, ``kv_cache``).
    Display it as the value of a cell (or ``stepper.widget``).
    """

    def __init__(self, model=None, tokenizer=None, text: str = DEFAULT_TEXT, *, layer: int = 0,
                 head: int = 0, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0) -> None:
        super().__init__(model, tokenizer)
        cfg = self.cfg
        layer_stages = _ATTENTION + (_QK_NORM if cfg.qk_norm else ()) + _AFTER_QKV
        self.stage_table: tuple[Stage, ...] = _BEFORE_LAYERS + layer_stages + _AFTER_LAYERS
        self.stages: list[str] = [stage.name for stage in self.stage_table]
        self._layer_stage_names = [stage.name for stage in layer_stages]

        self.tokens: torch.Tensor | None = None  # [batch=1, pos] every token so far
        self.pass_tokens: torch.Tensor | None = None  # [batch=1, pos] the tokens of the pass shown
        self.pass_positions: torch.Tensor | None = None  # [pos] their absolute positions
        self.cache = None  # ActivationCache of the pass shown
        self.logits: torch.Tensor | None = None  # [batch, pos, vocab] of the pass shown
        self.kv_cache: KVCache | None = None  # built by the first "Append token"
        self.prompt_length = 0
        self.generated: list[int] = []
        self.chosen_token: int | None = None
        self.view: StageView | None = None
        self.error: str | None = None
        self.shown_mask: torch.Tensor | None = None  # [q_pos, k_pos] True where masked (mask stage)
        self._holding = False

        layer = self._int_setting("layer", layer, 0, cfg.n_layers - 1, 0)
        head = self._int_setting("head", head, 0, cfg.n_heads - 1, 0)
        temperature = self._float_setting("temperature", temperature, 0.0, 2.0, 1.0)
        top_k = self._int_setting("top_k", top_k, 1, 50, None) if top_k is not None else None
        top_p = self._float_setting("top_p", top_p, 0.05, 1.0, None) if top_p is not None else None
        seed = self._int_setting("seed", seed, 0, MAX_SEED, 0)
        layout = widgets.Layout(width="330px")
        self.text_box = widgets.Text(value=text, description="text", continuous_update=False,
                                     layout=full_width())
        self._syncing_text = False  # True while append_token writes the grown text into text_box
        self.stage_list = widgets.Select(options=self._stage_options(layer), value="text", rows=18,
                                         layout=widgets.Layout(width="250px"))
        self.back_button = widgets.Button(description="◀ Back", layout=widgets.Layout(width="120px"))
        self.next_button = widgets.Button(description="Next ▶", button_style="primary",
                                          layout=widgets.Layout(width="120px"))
        self.layer_slider = widgets.IntSlider(value=layer, min=0, max=cfg.n_layers - 1, description="layer",
                                              continuous_update=False, layout=layout)
        self.head_slider = widgets.IntSlider(value=head, min=0, max=cfg.n_heads - 1, description="head",
                                             continuous_update=False, layout=layout)
        self.pos_slider = widgets.IntSlider(value=0, min=0, max=0, description="pos", continuous_update=False,
                                            layout=layout)
        wide = {"continuous_update": False, "layout": layout, "style": {"description_width": "95px"}}
        self.temperature_slider = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                                      description="temperature", **wide)
        self.top_k_slider = widgets.IntSlider(value=top_k or 0, min=0, max=50, description="top-k (0=off)",
                                              **wide)
        self.top_p_slider = widgets.FloatSlider(value=1.0 if top_p is None else top_p, min=0.05, max=1.0,
                                                step=0.05, description="top-p (1=off)", **wide)
        self.seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="160px"))
        self.append_button = widgets.Button(description="Append token", button_style="success",
                                            tooltip="feed the chosen token back in, through the KV cache")
        self.caption = widgets.HTML()
        self.kv_status = widgets.HTML()

        self.next_button.on_click(self._on_next)
        self.back_button.on_click(self._on_back)
        self.append_button.on_click(self._on_append)
        self.text_box.observe(self._on_text, names="value")
        self.layer_slider.observe(self._on_layer, names="value")  # before the redraw: the list names the layer
        for control in (self.stage_list, self.layer_slider, self.head_slider, self.pos_slider):
            control.observe(self._on_control, names="value")
        for control in (self.temperature_slider, self.top_k_slider, self.top_p_slider, self.seed_box):
            control.observe(self._on_sampling, names="value")

        selectors = widgets.VBox([self.layer_slider, self.head_slider, self.pos_slider])
        sampling_box = widgets.VBox([self.temperature_slider, self.top_k_slider, self.top_p_slider,
                                     widgets.HBox([self.seed_box, self.append_button])])
        left = widgets.VBox([self.stage_list, widgets.HBox([self.back_button, self.next_button])],
                            layout=widgets.Layout(flex="0 0 auto", min_width="260px"))
        right = widgets.VBox([self.caption, self.out], layout=widgets.Layout(flex="1 1 auto"))
        self.widget = self._root([
            self.text_box,
            widgets.HBox([selectors, sampling_box]),
            widgets.HBox([left, right]),
            self.kv_status,
        ])
        self.run(text)

    # ------------------------------------------------------------------------------------------
    # Public actions (what the buttons call)
    # ------------------------------------------------------------------------------------------

    @property
    def current_stage(self) -> str:
        return self.stage_list.value

    @property
    def shown_tensor(self) -> torch.Tensor | None:
        """Exactly the tensor the current picture draws (None for the text stage)."""
        return self.view.tensor if self.view is not None else None

    @property
    def shown_hook(self) -> str | None:
        """The hook point ``shown_tensor`` was read from (None when it is not a cached activation)."""
        return self.view.hook if self.view is not None else None

    def run(self, text: str) -> None:
        """Run ``text`` as a new prompt (one forward pass, every activation cached) and redraw."""
        self.kv_cache, self.generated, self.error = None, [], None
        try:
            tokens = encode(self.tokenizer, text, self.model.device)
        except ValueError as error:  # shown in the caption until a usable text is entered
            self.error = str(error)
            self.cache = self.logits = self.chosen_token = None
            self._redraw()
            return
        self.tokens = tokens
        self.prompt_length = tokens.shape[1]
        self._set_pass(tokens, torch.arange(tokens.shape[1]), *run_prompt(self.model, tokens))

    def go(self, stage: str, *, layer: int | None = None, head: int | None = None,
           pos: int | None = None) -> None:
        """Show ``stage`` (a name in ``stages``), optionally at another layer, head or position."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(self.stages)}")
        with self._hold():
            if layer is not None:
                self.layer_slider.value = layer
            if head is not None:
                self.head_slider.value = head
            if pos is not None:
                self.pos_slider.value = pos
            self.stage_list.value = stage

    def next(self) -> None:
        """One stage on; past a layer's last stage comes the next layer's first."""
        index, layer = self.stages.index(self.current_stage), self.layer_slider.value
        if self.current_stage == self._layer_stage_names[-1] and layer < self.cfg.n_layers - 1:
            self.go(self._layer_stage_names[0], layer=layer + 1)
        elif index < len(self.stages) - 1:
            self.go(self.stages[index + 1])

    def back(self) -> None:
        """One stage back; before a layer's first stage comes the previous layer's last."""
        index, layer = self.stages.index(self.current_stage), self.layer_slider.value
        if self.current_stage == self._layer_stage_names[0] and layer > 0:
            self.go(self._layer_stage_names[-1], layer=layer - 1)
        elif index > 0:
            self.go(self.stages[index - 1])

    def append_token(self) -> None:
        """Feed the chosen token back in: a pass over that one token, reading and growing the KV cache."""
        if self.chosen_token is None:
            return
        if len(self.generated) >= MAX_NEW_TOKENS or self.tokens.shape[1] >= self.cfg.max_seq_len:
            self.error = f"at most {MAX_NEW_TOKENS} tokens can be appended to one prompt"
            self._redraw()
            return
        if self.kv_cache is None:  # prefill: the prompt's keys and values, stored once
            max_len = min(self.cfg.max_seq_len, self.prompt_length + MAX_NEW_TOKENS)
            _, self.kv_cache = generation.prefill(self.model, self.tokens, max_len=max_len)
        new = torch.tensor([[self.chosen_token]], dtype=torch.long, device=self.model.device)
        position = self.tokens.shape[1]
        self.tokens = torch.cat([self.tokens, new], dim=1)
        self.generated.append(self.chosen_token)
        # generation.decode_step's forward pass (one token, positions continued from the cache),
        # with every activation cached so that the stages can show it.
        logits, cache = run_prompt(self.model, new, kv_cache=self.kv_cache)
        self._show_text_so_far()
        with self._hold():
            self._set_pass(new, torch.tensor([position]), logits, cache)
            self.stage_list.value = "kv_cache"

    def cache_lengths(self) -> list[int]:
        """Keys/values each layer holds now (sliding-window layers at most the window); [] before any."""
        if self.kv_cache is None:
            return []
        return [self.kv_cache.layer_kv(layer).keys.shape[2] for layer in range(self.cfg.n_layers)]

    # ------------------------------------------------------------------------------------------
    # Callbacks
    # ------------------------------------------------------------------------------------------

    def _on_next(self, button) -> None:
        self.next()

    def _on_back(self, button) -> None:
        self.back()

    def _on_append(self, button) -> None:
        self.append_token()

    def _on_text(self, change) -> None:
        if not self._syncing_text:
            self.run(change["new"])

    def _on_layer(self, change) -> None:
        self._relabel_stages()

    def _show_text_so_far(self) -> None:
        """Write prompt + appended tokens into the text box, without rerunning it as a new prompt."""
        self._syncing_text = True
        try:
            self.text_box.value = self.tokenizer.decode(self.tokens[0].tolist())
        finally:
            self._syncing_text = False

    def _relabel_stages(self) -> None:
        """Per-layer stages name the layer shown (a new options list resets the selection: keep it)."""
        outer, self._holding = self._holding, True
        try:
            stage = self.stage_list.value
            self.stage_list.options = self._stage_options(self.layer_slider.value)
            self.stage_list.value = stage
        finally:
            self._holding = outer

    def _on_control(self, change) -> None:
        if not self._holding:
            self._redraw()

    def _on_sampling(self, change) -> None:
        if not self._holding:
            self._choose()
            self._redraw()

    @contextmanager
    def _hold(self):
        """Change several controls with one redraw at the end."""
        outer = self._holding
        self._holding = True
        try:
            yield
        finally:
            self._holding = outer
        if not outer:
            self._redraw()

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------

    def _stage_options(self, layer: int) -> list[tuple[str, str]]:
        options = []
        for number, stage in enumerate(self.stage_table, start=1):
            prefix = f"  layer {layer} · " if stage.per_layer else ""
            options.append((f"{number:2d}. {prefix}{stage.title}", stage.name))
        return options

    def _set_pass(self, tokens: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor, cache) -> None:
        self.pass_tokens, self.pass_positions, self.logits, self.cache = tokens, positions, logits, cache
        self.all_str_tokens = str_tokens(self.tokenizer, self.tokens[0])
        with self._hold():
            self.pos_slider.max = max(tokens.shape[1] - 1, 0)
            self.pos_slider.value = tokens.shape[1] - 1
            self._choose()

    def _sampling_kwargs(self) -> dict:
        top_k = self.top_k_slider.value
        top_p = self.top_p_slider.value
        return {"temperature": float(self.temperature_slider.value), "top_k": top_k if top_k > 0 else None,
                "top_p": float(top_p) if top_p < 1.0 else None}

    def _step_seed(self) -> int:
        """The seed of this step: the box's, plus one per appended token (a typed seed out of range wraps
        around rather than stopping the walk-through with a traceback)."""
        return (int(self.seed_box.value) + len(self.generated)) % (MAX_SEED + 1)

    def _choose(self) -> None:
        """The next token after the last position, drawn as generation draws it."""
        if self.logits is None:
            return
        generator = sampling.make_generator(self._step_seed())
        chosen = sampling.sample(self.logits[0, -1], generator=generator, **self._sampling_kwargs())
        self.chosen_token = int(chosen)
        self._chosen_tensor = chosen

    # ------------------------------------------------------------------------------------------
    # Drawing
    # ------------------------------------------------------------------------------------------

    def _redraw(self) -> None:
        if self._holding:
            return
        if self.error is not None and self.cache is None:
            self.view = StageView(sentence="")
            self.caption.value = message_html(self.error, "error")
            # A message, not an empty redraw: clear_output(wait=True) with nothing after it keeps the old picture.
            self._show(html_parts=[message_html("Nothing to show for this text: change it above.", "note")])
            return
        stage = self.current_stage
        self.view = self._layer_view(stage) if stage in _LAYER_HOOKS else getattr(self, f"_view_{stage}")()
        self.caption.value = self._caption_html(stage)
        self.kv_status.value = self._kv_status_html()
        self.append_button.disabled = len(self.generated) >= MAX_NEW_TOKENS
        self.back_button.disabled = self.stages.index(stage) == 0
        self.next_button.disabled = stage == self.stages[-1]
        self._show(self.view.figures, self.view.html_parts)

    def _caption_html(self, stage: str) -> str:
        view = self.view
        title = self.stage_table[self.stages.index(stage)].title
        where = f" · layer {self.layer_slider.value}" if stage in _LAYER_HOOKS else ""
        parts = [f"<b>{html.escape(title)}</b>{where}"]
        if view.hook is not None:
            parts.append(f"<code>{html.escape(view.hook)}</code> {html.escape(view.shape)}"
                         + (f" · shown: <code>{html.escape(view.index)}</code>" if view.index else ""))
        elif view.index or view.shape:
            parts.append(f"<code>{html.escape(view.index)}</code> {html.escape(view.shape)}")
        parts.append(html.escape(view.sentence))
        if self.generated:
            parts.append(f"<i>decode step {len(self.generated)}: this pass ran on the one new token "
                         f"{html.escape(repr(self.all_str_tokens[-1]))} at position "
                         f"{int(self.pass_positions[-1])}, with the KV cache.</i>")
        if self.error:
            parts.append(message_html(self.error, "error"))
            self.error = None
        return "<br>".join(parts)

    def _kv_status_html(self) -> str:
        if self.kv_cache is None:
            return ("<small>KV cache: empty until the first <b>Append token</b> (prefill stores the prompt's "
                    "keys and values).</small>")
        lengths = ", ".join(f"L{layer} {n}" + ("ʷ" if self.cfg.is_local(layer) else "")
                            for layer, n in enumerate(self.cache_lengths()))
        return f"<small>KV cache length per layer (ʷ sliding window): {html.escape(lengths)}</small>"

    # Pieces shared by several stages ----------------------------------------------------------

    def _key_tokens(self, layer: int, n_keys: int) -> list[str]:
        """Labels of the keys a query of this pass saw on ``layer``, oldest first."""
        if self.kv_cache is None or not self.generated:
            return self.all_str_tokens[:n_keys]
        positions = self.kv_cache.layer_kv(layer).positions[0].tolist()
        if len(positions) != n_keys:  # a cache layout this widget does not know: label by index
            return [str(i) for i in range(n_keys)]
        return [self.all_str_tokens[p] for p in positions]

    def _masked(self, layer: int, head: int) -> torch.Tensor:
        """``[q_pos, k_pos]`` True where the mask removed the key: the model set those scores to the
        dtype's lowest value (see ``model.Attention._explicit_attention``)."""
        scores = self.cache[f"blocks.{layer}.attn.hook_attn_scores"][0, head]
        return scores == torch.finfo(scores.dtype).min

    def _label(self, token_id: int) -> str:
        return token_label(self.tokenizer, token_id)

    def _card(self, tensor: torch.Tensor, name: str, axes: tuple[str, ...]) -> Figure:
        return viz.tensor_card(tensor, name, axes)

    def _residual_norms(self, upto: str, layer: int) -> Figure:
        """Norm of the residual stream at every point up to this one, per position."""
        rows, labels = [self.cache["hook_embed"][0]], ["embed"]
        for current in range(layer + 1):
            for point in ("resid_mid", "resid_post"):
                if current == layer and point == "resid_post" and upto == "resid_mid":
                    break
                rows.append(self.cache[f"blocks.{current}.hook_{point}"][0])
                labels.append(f"{current} {point[6:]}")
        norms = torch.stack([row.float().norm(dim=-1) for row in rows])  # [point, pos]
        tokens = [self.all_str_tokens[int(p)] for p in self.pass_positions]
        return viz.residual_norms(norms, tokens, layer_labels=labels, title="‖residual stream‖ so far")

    def _sampling_text(self) -> str:
        kwargs = self._sampling_kwargs()
        return ", ".join(f"{k}={'off' if v is None else format(v, 'g')}" for k, v in kwargs.items())

    # Stages before the layers -------------------------------------------------------------------

    def _view_text(self) -> StageView:
        prompt = self.tokenizer.decode(self.tokens[0, : self.prompt_length])
        text = f"<pre style='white-space:pre-wrap;font-size:14px'>{html.escape(prompt)}"
        if self.generated:
            text += f"<b style='color:#1a7f37'>{html.escape(self.tokenizer.decode(self.generated))}</b>"
        return StageView(
            sentence="The prompt as text: the model never sees characters, only the token ids the tokenizer "
                     "makes from them" + (" (appended tokens in green)." if self.generated else "."),
            html_parts=[text + "</pre>"],
        )

    def _view_tokens(self) -> StageView:
        ids = self.pass_tokens
        pieces = [self.all_str_tokens[int(p)] for p in self.pass_positions]
        rows = [(int(p), viz.readable_token(s), int(i))
                for p, s, i in zip(self.pass_positions, pieces, ids[0], strict=True)]
        coloured = viz.colored_tokens_html(self.all_str_tokens, torch.arange(len(self.all_str_tokens)) % 2,
                                           cmap="Pastel1", vmin=0, vmax=8)
        return StageView(
            sentence=f"The tokenizer cut the text into {self.prompt_length} pieces (starting with <bos>) "
                     f"from a vocabulary of {self.cfg.vocab_size}; to the model each piece is just an "
                     "integer id, a row number of the embedding matrix.",
            tensor=ids, shape=shape_string(ids, ("batch", "pos")),
            html_parts=[coloured, table_html(("pos", "token", "id"), rows)],
        )

    def _view_embedding(self) -> StageView:
        weight = self.model.embed.weight
        rows = weight.detach()[self.pass_tokens[0]]  # the model's own parameter rows, indexed by id
        return StageView(
            sentence=f"Each id selects its row of the embedding matrix [vocab={weight.shape[0]}, "
                     f"d_model={weight.shape[1]}]: one learned vector per token, the same wherever it "
                     "occurs.",
            tensor=rows, hook=None, index="embed.weight[ids]", shape=shape_string(rows, ("pos", "d_model")),
            figures=[self._card(rows, "embed.weight[ids]", ("pos", "d_model"))],
        )

    def _view_embed_scale(self) -> StageView:
        embed = self.cache["hook_embed"]
        scale = torch.tensor(self.cfg.embed_scale, dtype=torch.float32).to(self.model.dtype).item()
        dtype = str(self.model.dtype).replace("torch.", "")
        return StageView(
            sentence=f"The rows are multiplied by sqrt(d_model) = sqrt({self.cfg.d_model}) = {scale:g} "
                     f"(rounded to {dtype}): the table is shared with the unembedding and its entries are "
                     "small, so the scale gives the residual stream its size.",
            tensor=embed[0], hook="hook_embed", index="[0]",
            shape=shape_string(embed, hook_axes("hook_embed")),
            figures=[self._card(embed[0], "hook_embed[0]", ("pos", "d_model"))],
        )

    # The layers -------------------------------------------------------------------------------

    def _layer_view(self, stage: str) -> StageView:
        cfg, layer, head = self.cfg, self.layer_slider.value, self.head_slider.value
        hook = f"blocks.{layer}.{_LAYER_HOOKS[stage]}"
        full = self.cache[hook]
        axes = hook_axes(hook)
        kv_head = head // cfg.group_size
        if stage in _BY_QUERY_HEAD:
            tensor, index, kept = full[0, :, head], f"[0, :, {head}]", ("pos", "d_head")
        elif stage in _BY_KV_HEAD:
            tensor, index, kept = full[0, :, kv_head], f"[0, :, {kv_head}]", ("pos", "d_head")
        elif stage in _SQUARE:
            tensor, index, kept = full[0, head], f"[0, {head}]", ("q_pos", "k_pos")
        else:
            tensor, index, kept = full[0], "[0]", ("pos", axes[-1])
        view = StageView(sentence=self._layer_sentence(stage, layer, head, kv_head), tensor=tensor, hook=hook,
                         index=index, shape=shape_string(full, axes))
        name = f"{hook}{index}"
        if stage in _SQUARE:
            keys = self._key_tokens(layer, tensor.shape[-1])
            masked = self._masked(layer, head)
            if stage == "scores":
                view.figures = [self._card(tensor, name, kept)]
            elif stage == "mask":
                allowed = (~masked).float()
                self.shown_mask = masked
                title = f"L{layer}: allowed keys (blue) and masked (grey)"
                view.figures = [viz.attention_pattern(allowed, keys, mask=masked.numpy(), vmax=1.0,
                                                      title=title)]
            else:
                view.figures = [viz.attention_pattern(tensor, keys, mask=masked.numpy(),
                                                      title=f"L{layer} H{head} attention pattern")]
        elif stage == "rotary":
            theta, scale = cfg.rope_for_layer(layer)
            positions = [int(p) / scale for p in self.pass_positions]
            view.figures = [self._card(tensor, name, kept),
                            viz.rotary_illustration(cfg.d_head, positions[-12:], theta=theta)]
        elif stage in ("resid_mid", "resid_post"):
            view.figures = [self._card(tensor, name, kept), self._residual_norms(stage, layer)]
        else:
            view.figures = [self._card(tensor, name, kept)]
        return view

    def _layer_sentence(self, stage: str, layer: int, head: int, kv_head: int) -> str:
        cfg = self.cfg
        theta, scale = cfg.rope_for_layer(layer)
        window = cfg.sliding_window if cfg.is_local(layer) else None
        context = dict(
            cfg=cfg, layer=layer, head=head, kv_head=kv_head, theta=theta,
            heads_width=cfg.n_heads * cfg.d_head,
            post_norm=" and a post-norm (Gemma 2/3's sandwich norm)" if cfg.sandwich_norms else "",
            rope_scale=f" and positions divided by {scale:g}" if scale != 1 else "",
            softcap=f", then soft-capped to ±{cfg.attn_softcap:g}" if cfg.attn_softcap else "",
            window=(f" and, on this sliding-window layer, positions {window} or more back" if window
                    else "; this is a global layer, so every earlier position stays visible"),
            next_layer=(f", and it is layer {layer + 1}'s input" if layer + 1 < cfg.n_layers
                        else ", the last layer's output"),
        )
        return LAYER_SENTENCES[stage].format(**context)

    # Stages after the layers ----------------------------------------------------------------------

    def _pos_description(self, pos: int) -> str:
        token = self.all_str_tokens[int(self.pass_positions[pos])]
        return f"position {int(self.pass_positions[pos])} ({viz.readable_token(token)!r})"

    def _view_final_norm(self) -> StageView:
        full = self.cache["ln_final.hook_normalized"]
        return StageView(
            sentence="After the last layer a final RMSNorm rescales the stream, so the read-out sees vectors "
                     "of the size it was trained on.",
            tensor=full[0], hook="ln_final.hook_normalized", index="[0]",
            shape=shape_string(full, hook_axes("ln_final.hook_normalized")),
            figures=[self._card(full[0], "ln_final.hook_normalized[0]", ("pos", "d_model"))],
        )

    def _view_logits(self) -> StageView:
        pos = self.pos_slider.value
        full = self.cache["hook_logits"]
        logits = full[0, pos]
        softcap = (f", soft-capped to ±{self.cfg.final_softcap:g}" if self.cfg.final_softcap else "")
        return StageView(
            sentence="Unembedding: the final vector is dotted with every row of the shared embedding matrix, "
                     f"one score per vocabulary entry{softcap}; shown for {self._pos_description(pos)}, "
                     "which predicts the token after it.",
            tensor=logits, hook="hook_logits", index=f"[0, {pos}]",
            shape=shape_string(full, hook_axes("hook_logits")),
            figures=[viz.top_k_bars(logits, self._label, k=10, value_label="logit", value_format="{:.2f}",
                                    title=f"largest logits after {self._pos_description(pos)}")],
        )

    def _view_probs(self) -> StageView:
        pos = self.pos_slider.value
        logits = self.cache["hook_logits"][0, pos]
        kwargs = self._sampling_kwargs()
        report = sampling.filter_report(logits, **kwargs)
        probs = sampling.logits_to_probs(logits, **kwargs)
        removed = {name: int(mask.sum()) for name, mask in report.removed.items() if mask.any()}
        removed_text = ", ".join(f"{name} removed {n}" for name, n in removed.items()) or "none removed"
        kept = int((probs > 0).sum())
        last = "" if pos == self.pass_tokens.shape[1] - 1 else " (not the last position: not used)"
        return StageView(
            sentence=f"sampling.logits_to_probs with {self._sampling_text()}: softmax of the filtered logits "
                     f"at {self._pos_description(pos)}{last}; {removed_text}, {kept} tokens keep probability "
                     "> 0.",
            tensor=probs, hook=None, index=f"logits_to_probs(hook_logits[0, {pos}])",
            shape=shape_string(probs, ("vocab",)),
            figures=[viz.top_k_bars(probs, self._label, k=10,
                                    title=f"next-token probabilities ({self._sampling_text()})")],
        )

    def _view_next_token(self) -> StageView:
        logits = self.cache["hook_logits"][0, -1]
        kwargs = self._sampling_kwargs()
        probs = sampling.logits_to_probs(logits, **kwargs)
        label = self._label(self.chosen_token)
        how = ("the most likely token (temperature 0 is greedy)" if kwargs["temperature"] == 0
               else f"drawn with sampling.sample, seed {self._step_seed()}")
        return StageView(
            sentence=f"The next token is {label!r} (id {self.chosen_token}, probability "
                     f"{float(probs[self.chosen_token]):.1%}), {how}; 'Append token' feeds it back in.",
            tensor=self._chosen_tensor, hook=None, index="sampling.sample(hook_logits[0, -1])", shape="[]",
            figures=[viz.top_k_bars(probs, self._label, k=10, highlight=label,
                                    title=f"chosen: {label}")],
        )

    def _view_kv_cache(self) -> StageView:
        cfg, layer = self.cfg, self.layer_slider.value
        kv_head = self.head_slider.value // cfg.group_size
        rows = [(n, "sliding window" if cfg.is_local(n) else "global",
                 length, cfg.sliding_window if cfg.is_local(n) else "-")
                for n, length in enumerate(self.cache_lengths())]
        if self.kv_cache is None:
            keys = self.cache[f"blocks.{layer}.attn.hook_rot_k"]
            return StageView(
                sentence="Generation keeps every layer's keys (after RoPE) and values, so that the next "
                         "token needs a pass over itself only; these are the keys this pass would store "
                         "(press 'Append token').",
                tensor=keys[0, :, kv_head], hook=f"blocks.{layer}.attn.hook_rot_k",
                index=f"[0, :, {kv_head}]", shape=shape_string(keys, hook_axes("attn.hook_rot_k")),
                figures=[self._card(keys[0, :, kv_head], f"blocks.{layer}.attn.hook_rot_k[0, :, {kv_head}]",
                                    ("pos", "d_head"))],
            )
        stored = self.kv_cache.layer_kv(layer)
        keys = stored.keys[0, kv_head]
        if cfg.is_local(layer) and keys.shape[0] == cfg.sliding_window:
            growth = (f"this sliding-window layer is full at {cfg.sliding_window} keys, so the newest "
                      "replaced the oldest")
        else:
            growth = f"this layer grew by one row to {keys.shape[0]} keys"
        return StageView(
            sentence=f"Each pass adds its key and value to every layer's cache: {growth} (the last row is "
                     "this pass's key, after RoPE). Earlier tokens are never recomputed.",
            tensor=keys, hook=None, index=f"kv_cache.layer_kv({layer}).keys[0, {kv_head}]",
            shape=shape_string(stored.keys, ("batch", "kv_head", "k_pos", "d_head")),
            figures=[self._card(keys, f"KV cache layer {layer} keys, kv_head {kv_head}",
                                ("k_pos", "d_head"))],
            html_parts=[table_html(("layer", "attention", "cached tokens", "window"), rows)],
        )

