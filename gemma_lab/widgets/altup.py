"""AltUpExplorer: Gemma 3n's four copies of the residual stream, and which MLP neurons its sparsity keeps.

One cached forward pass per prompt (``run_with_cache``); a layer and a position slider pick what is
drawn by ``viz.altup_streams`` (each copy's size through the model, the layer's prediction mix and
correction weights) and ``viz.sparsity_cutoff`` (the gate values of that token against the cutoff).
"""

from __future__ import annotations

import ipywidgets as widgets
import torch

from gemma_lab import viz
from gemma_lab.widgets._common import DEFAULT_TEXT, message_html, run_prompt
from gemma_lab.widgets.explorers import _SLIDER, _PromptWidget


def _altup_names(name: str) -> bool:
    return (name.endswith(("hook_streams_pre", "hook_streams_post", "altup_predict.hook_coefs",
                           "altup_correct.hook_coefs", "mlp.hook_pre", "sparsify.hook_cutoff")))


class AltUpExplorer(_PromptWidget):
    """Pick a layer and a token: the AltUp copies, the mixing the layer applies, the neurons kept.

    After each redraw: ``stream_rms [layer + 1, stream]``, ``mixing [stream, stream]``,
    ``corrections [stream]`` at the chosen position, and ``kept [d_mlp]`` (bool) with ``cutoff``, or
    None on a dense layer. Gemma 3n models only.
    """

    def __init__(self, model=None, tokenizer=None, text: str = DEFAULT_TEXT, *, layer: int = 0) -> None:
        super().__init__(model, tokenizer, text)
        if not self.cfg.is_gemma3n:
            raise ValueError(f"AltUpExplorer shows Gemma 3n's AltUp streams; this model is Gemma {self.cfg.family} "
                             "without them (build one with GemmaConfig.from_preset('test-gemma3n'))")
        layer = self._int_setting("layer", layer, 0, self.cfg.n_layers - 1, 0)
        self.layer_slider = widgets.IntSlider(value=layer, min=0, max=self.cfg.n_layers - 1, description="layer",
                                              **_SLIDER)
        self.pos_slider = widgets.IntSlider(value=0, min=0, max=0, description="position", **_SLIDER)
        for slider in (self.layer_slider, self.pos_slider):
            slider.observe(self._on_control, names="value")
        self.token_label = widgets.HTML()
        self.cache = None
        self.stream_rms = self.mixing = self.corrections = self.kept = self.cutoff = None
        self.widget = self._root([self.text_box, widgets.HBox([self.layer_slider, self.pos_slider]),
                                  self.token_label, self.out])
        self.run(text)

    def run(self, text: str) -> None:
        if not self._encode(text):  # it shows the error
            return
        with torch.no_grad():
            _, self.cache = run_prompt(self.model, self.tokens, names_filter=_altup_names)
        last = self.tokens.shape[1] - 1
        self.pos_slider.unobserve(self._on_control, names="value")
        self.pos_slider.max, self.pos_slider.value = last, last
        self.pos_slider.observe(self._on_control, names="value")
        self.redraw()

    def _on_control(self, change) -> None:
        self.redraw()

    def redraw(self) -> None:
        if self.cache is None:
            return
        layer, pos, cache = self.layer_slider.value, self.pos_slider.value, self.cache
        streams = [cache["streams_pre", 0]] + [cache["streams_post", i] for i in range(self.cfg.n_layers)]
        self.stream_rms = torch.stack([s[0, pos].float().pow(2).mean(-1).sqrt() for s in streams])
        self.mixing = cache[f"blocks.{layer}.altup_predict.hook_coefs"][0, pos].float()
        self.corrections = cache[f"blocks.{layer}.altup_correct.hook_coefs"][0, pos].float()
        figures = [viz.altup_streams(self.stream_rms, self.mixing, self.corrections, layer=layer)]
        sparsity = self.cfg.sparsity_for(layer)
        cutoff_name = f"blocks.{layer}.mlp.sparsify.hook_cutoff"
        notes = [f"token {pos}: {self.str_tokens[pos]!r}"]
        if sparsity > 0:
            gate = cache["pre", layer][0, pos].float()
            self.cutoff = float(cache[cutoff_name][0, pos, 0])
            self.kept = gate > self.cutoff
            figures.append(viz.sparsity_cutoff(gate, self.cutoff, sparsity=sparsity))
            notes.append(f"layer {layer} keeps {int(self.kept.sum())} of {len(gate)} MLP neurons for this token")
        else:
            self.kept = self.cutoff = None
            notes.append(f"layer {layer} has a dense MLP (no activation sparsity)")
        self.token_label.value = "".join(message_html(n) for n in notes)
        self._show(figures)
