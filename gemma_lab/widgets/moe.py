"""RouterExplorer: which experts a Gemma 4 mixture-of-experts layer sends each token to.

The router of a Gemma 4 MoE layer (26B-A4B, or the small random ``test-gemma4``) turns the residual
stream into one logit per expert, a softmax over them, keeps the top ``n_experts_active`` and
renormalises their probabilities, then multiplies each by its expert's learned scale. The picture
is tokens x experts: colour = the routing weight a token gives an expert (0 where the expert was
not chosen) or, switched, the softmax probability of every expert; chosen experts are outlined.

Every number is read from the router's hook points in one ``run_with_cache`` per prompt
(``moe.router.hook_probs``, ``hook_chosen``, ``hook_weights``); nothing is recomputed here.
Role: the widget layer (imports the model side and viz; nothing below imports this).
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle

from gemma_lab import viz
from gemma_lab.widgets._common import DEFAULT_TEXT, run_prompt, table_html
from gemma_lab.widgets.explorers import _PromptWidget

#: What the heatmap's colour can show.
SHOW_WEIGHTS, SHOW_PROBS = "routing weights", "router probabilities"

_ROUTER_HOOKS = ("moe.router.hook_probs", "moe.router.hook_chosen", "moe.router.hook_weights")


class RouterExplorer(_PromptWidget):
    """Router choices per token on one mixture-of-experts layer, as a tokens x experts heatmap.

    Controls: ``text_box``, ``layer_select`` (every layer has experts in Gemma 4's MoE model),
    ``show`` (``"routing weights"`` or ``"router probabilities"``). Shown, for the chosen layer:
    ``chosen`` ``[pos, top_k]`` (expert ids, most probable first), ``weights`` ``[pos, top_k]`` (their
    routing weights), ``probs`` ``[pos, expert]`` (the softmax), ``grid`` ``[pos, expert]`` (what the
    heatmap draws: the weights placed at the chosen experts and 0 elsewhere, or ``probs``),
    ``load`` ``[expert]`` (how many tokens chose each expert).

    Needs a model with experts (``cfg.n_experts > 0``); a model without them is refused with a
    ValueError naming what to use instead.
    """

    def __init__(self, model=None, tokenizer=None, text: str = DEFAULT_TEXT, *, layer: int = 0,
                 show: str = SHOW_WEIGHTS) -> None:
        super().__init__(model, tokenizer, text)
        cfg = self.cfg
        if not cfg.n_experts:
            raise ValueError(f"RouterExplorer needs a mixture-of-experts model (cfg.n_experts > 0); "
                             f"{cfg.name or 'this model'} (Gemma {cfg.family}) has none. Use Gemma 4 "
                             "26B-A4B, or Gemma(PRESETS['test-gemma4']) with random weights")
        layer = self._int_setting("layer", layer, 0, cfg.n_layers - 1, 0)
        show = self._setting("show", show, show in (SHOW_WEIGHTS, SHOW_PROBS), SHOW_WEIGHTS,
                             f"{SHOW_WEIGHTS!r} or {SHOW_PROBS!r}")
        self.layer_select = widgets.Dropdown(options=list(range(cfg.n_layers)), value=layer, description="layer",
                                             layout=widgets.Layout(width="180px"))
        self.show = widgets.ToggleButtons(options=[SHOW_WEIGHTS, SHOW_PROBS], value=show)
        for control in (self.layer_select, self.show):
            control.observe(self._on_control, names="value")
        self.details = widgets.HTML()
        self.cache = None
        self.chosen = self.weights = self.probs = self.grid = self.load = None
        self.widget = self._root([self.text_box, widgets.HBox([self.layer_select, self.show]), self.out,
                                  self.details])
        self.run(text)

    def run(self, text: str) -> None:
        """Run a new prompt once (the router's hook points cached) and redraw."""
        if not self._encode(text):
            return
        _, self.cache = run_prompt(self.model, self.tokens, names_filter=lambda name: name.endswith(_ROUTER_HOOKS))
        self.redraw()

    def _on_control(self, change) -> None:
        if self.cache is not None and self.error is None:
            self.redraw()

    def redraw(self) -> None:
        layer, cfg = self.layer_select.value, self.cfg
        prefix = f"blocks.{layer}.moe.router."
        self.probs = self.cache[prefix + "hook_probs"][0]  # [pos, expert]
        self.chosen = self.cache[prefix + "hook_chosen"][0]  # [pos, top_k]
        self.weights = self.cache[prefix + "hook_weights"][0]  # [pos, top_k]
        if self.show.value == SHOW_WEIGHTS:
            self.grid = torch.zeros_like(self.probs).scatter(-1, self.chosen, self.weights.to(self.probs.dtype))
        else:
            self.grid = self.probs
        self.load = torch.bincount(self.chosen.flatten(), minlength=cfg.n_experts)
        self._show([self._figure(layer)])
        self.details.value = self._details_html()

    def _figure(self, layer: int):
        n_pos, n_experts = self.grid.shape
        fig, axes = viz.new_subplots((min(16.0, 2.5 + 0.28 * n_experts), max(2.6, 0.28 * n_pos + 1.4)))
        ax = axes[0, 0]
        grid = self.grid.float().numpy()
        image = ax.imshow(grid, cmap="Purples", vmin=0, vmax=max(float(grid.max()), 1e-9), aspect="auto",
                          interpolation="nearest")
        for pos, experts in enumerate(self.chosen.tolist()):
            for rank, expert in enumerate(experts):
                ax.add_patch(Rectangle((expert - 0.5, pos - 0.5), 1, 1, fill=False, edgecolor="C1" if rank else "C3",
                                       linewidth=1.6))
        ax.set_yticks(range(n_pos), [viz.readable_token(t) for t in self.str_tokens], fontsize=8)
        step = max(1, int(np.ceil(n_experts / 32)))
        ax.set_xticks(range(0, n_experts, step))
        ax.set_xlabel(f"expert (outlined: the {self.cfg.n_experts_active} chosen; red = most probable)")
        ax.set_title(f"layer {layer}: {self.show.value} per token", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
        return fig

    def _details_html(self) -> str:
        rows = []
        for pos, token in enumerate(self.str_tokens):
            picks = ", ".join(f"{expert} ({weight:.3f})" for expert, weight in
                              zip(self.chosen[pos].tolist(), self.weights[pos].tolist()))
            rows.append((pos, viz.readable_token(token), picks))
        busiest = int(self.load.argmax())
        unused = int((self.load == 0).sum())
        return (f"<b>expert load:</b> busiest expert {busiest} ({int(self.load[busiest])} of "
                f"{len(self.str_tokens)} tokens); {unused} of {self.cfg.n_experts} experts chose no token here."
                + table_html(["pos", "token", "chosen experts (weight)"], rows)
                + f"<div style='color:#555'>{html.escape('weights: renormalised top-k probabilities x per_expert_scale')}</div>")
