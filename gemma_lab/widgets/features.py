"""FeatureExplorer: one sparse-autoencoder feature at a time, on a prompt and on reference texts.

Pick a feature (or a token of the prompt, then one of the features firing there) and see where it
fires in the prompt, the reference texts where it fires most, the tokens its decoder direction
promotes and suppresses through the unembedding, and, live, what the model predicts next with the
feature ablated (the SAE spliced in with its error term, so nothing else changes).

The numbers come from ``gemma_lab.sae.features``; this module only wires controls to them and
writes HTML. Role: the widget layer (imports the model side; nothing below imports this).
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import torch

from gemma_lab.sae import SAE, load_sae
from gemma_lab.sae import features as sae_features
from gemma_lab.widgets._common import (
    DEFAULT_TEXT,
    ModelWidget,
    encode,
    full_width,
    message_html,
    str_tokens,
    table_html,
    token_label,
)

#: Texts the explorer searches for a feature's top contexts when none are given: one of each kind
#: of document the tiny Gemma was trained on (names and IOI, colours, capitals, repeats, counting).
DEFAULT_REFERENCE_TEXTS = (
    "When Mary and John went to the store, John gave a drink to Mary.",
    "When Tom and Anna went to the park, Anna gave a ball to Tom.",
    "The sky is blue. The grass is green. A banana is yellow. Snow is white.",
    "The capital of France is Paris. The capital of Japan is Tokyo. The capital of Italy is Rome.",
    "k d w p | k d w p",
    "red fish blue bird | red fish blue bird",
    "1 2 3 4 5 6 7 8 9",
    "Monday Tuesday Wednesday Thursday Friday",
    "A dog says woof. A cat says meow. A cow says moo.",
    "Sarah met David at the school. Later, David gave a book to Sarah.",
)


def _highlight_html(tokens: list[str], values: torch.Tensor, centre: int | None = None) -> str:
    """Tokens with a background whose strength is the feature's activation (relative to the largest)."""
    top = float(values.max()) if len(values) and float(values.max()) > 0 else 1.0
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values.tolist())):
        alpha = max(0.0, value) / top
        border = "border-bottom:2px solid #b00020;" if i == centre else ""
        title = f"{value:.3f}"
        spans.append(f'<span title="{title}" style="background:rgba(255,140,0,{alpha:.2f});{border}'
                     f'font-family:monospace;padding:1px 2px;margin:0 1px">{html.escape(token)}</span>')
    return "<div style='line-height:1.9'>" + "".join(spans) + "</div>"


class FeatureExplorer(ModelWidget):
    """Where one SAE feature fires, what it writes, and what the model does without it.

    Controls: ``text_box`` (the prompt), ``feature_box`` (the feature), ``token_picker`` (a prompt
    token; ``token_features`` lists the features firing there, strongest first, and
    ``use_top_feature`` picks the strongest), ``ablate`` (checkbox: predict with the feature
    ablated). Shown: ``prompt_acts`` ``[pos]`` (the feature on the prompt), ``contexts`` (the top
    reference contexts, a ``FeatureContexts``), ``logit_effects`` (a ``LogitEffects``), and
    ``next_token_probs`` / ``ablated_probs`` ``[vocab]`` at the prompt's last position.
    """

    def __init__(self, model=None, tokenizer=None, sae: SAE | None = None, text: str = DEFAULT_TEXT, *,
                 feature: int = 0, reference_texts=DEFAULT_REFERENCE_TEXTS, k: int = 8) -> None:
        super().__init__(model, tokenizer)
        if sae is None:
            if model is not None:
                raise ValueError("pass the SAE that goes with this model (sae=load_sae(...)); "
                                 "only the bundled tiny Gemma has a default")
            sae = load_sae("tiny", model=self.model)
        self.sae = sae
        self.k = k
        self.reference_rows = [self.tokenizer.encode(t) for t in reference_texts]
        self.reference_acts = sae_features.feature_acts_of_rows(self.model, sae, self.reference_rows)
        self.text_box = widgets.Text(value=text, description="text", continuous_update=False,
                                     layout=full_width())
        self.feature_box = widgets.BoundedIntText(value=feature, min=0, max=sae.cfg.d_sae - 1,
                                                  description="feature")
        self.token_picker = widgets.Dropdown(options=[("", 0)], description="token")
        self.use_top_feature = widgets.Button(description="strongest feature here")
        self.ablate = widgets.Checkbox(value=False, description="ablate the feature")
        self.details = widgets.HTML()
        self.text_box.observe(self._on_text, names="value")
        self.feature_box.observe(self._on_control, names="value")
        self.token_picker.observe(self._on_control, names="value")
        self.ablate.observe(self._on_control, names="value")
        self.use_top_feature.on_click(self._on_top_feature)
        self.error: str | None = None
        self.widget = self._root([
            self.text_box,
            widgets.HBox([self.feature_box, self.token_picker, self.use_top_feature, self.ablate]),
            self.details, self.out,
        ])
        self.run(text)

    @property
    def feature(self) -> int:
        return self.feature_box.value

    def run(self, text: str) -> None:
        """Encode a new prompt, compute every feature on it once, and redraw."""
        try:
            self.tokens = encode(self.tokenizer, text, self.model.device)
        except ValueError as error:
            self.error = str(error)
            self._show(html_parts=[message_html(self.error, "error")])
            return
        self.error = None
        self.str_tokens = str_tokens(self.tokenizer, self.tokens[0])
        self.all_acts = sae_features.feature_activations(self.model, self.sae, self.tokens)[0]  # [pos, d_sae]
        with torch.no_grad():
            self.next_token_probs = torch.softmax(self.model(self.tokens)[0, -1].float(), dim=-1)
        self.token_picker.unobserve(self._on_control, names="value")
        self.token_picker.options = [(f"{i}: {token_label(self.tokenizer, int(t))}", i)
                                     for i, t in enumerate(self.tokens[0].tolist())]
        self.token_picker.value = len(self.str_tokens) - 1
        self.token_picker.observe(self._on_control, names="value")
        self.redraw()

    def _on_text(self, change) -> None:
        self.run(change["new"])

    def _on_control(self, change) -> None:
        if self.error is None:
            self.redraw()

    def _on_top_feature(self, button) -> None:
        if self.error is None and self.token_features:
            self.feature_box.value = self.token_features[0][0]

    @property
    def token_features(self) -> list[tuple[int, float]]:
        """``(feature, activation)`` of the features firing at the picked token, strongest first."""
        acts = self.all_acts[self.token_picker.value]
        fired = (acts > 0).nonzero()[:, 0]
        order = acts[fired].argsort(descending=True)
        return [(int(f), float(acts[f])) for f in fired[order]]

    def redraw(self) -> None:
        feature = self.feature
        self.prompt_acts = self.all_acts[:, feature]
        self.contexts = sae_features.contexts_from_acts(self.reference_rows, self.reference_acts, feature,
                                                        k=self.k, before=8, after=2)
        self.logit_effects = sae_features.feature_logit_effects(self.model, self.sae, feature, k=self.k)
        self.ablated_probs = None
        if self.ablate.value:
            with torch.no_grad(), sae_features.ablate_features(self.model, self.sae, feature):
                self.ablated_probs = torch.softmax(self.model(self.tokens)[0, -1].float(), dim=-1)
        self._show(html_parts=self._html_parts())

    def _html_parts(self) -> list[str]:
        feature, label = self.feature, self._label
        parts = [f"<b>feature {feature}</b> of {html.escape(repr(self.sae))}: fires on "
                 f"{int((self.prompt_acts > 0).sum())} of {len(self.str_tokens)} prompt tokens",
                 _highlight_html(self.str_tokens, self.prompt_acts)]
        here = self.token_features[:self.k]
        parts.append("<b>features firing at the picked token</b> " + (
            ", ".join(f"{f} ({a:.2f})" for f, a in here) if here else "(none)"))
        parts.append("<b>top reference contexts</b>")
        for context, acts, centre, value in zip(self.contexts.contexts, self.contexts.context_acts,
                                                self.contexts.centre, self.contexts.values.tolist()):
            if value <= 0:
                break
            parts.append(_highlight_html(self.tokenizer.to_str_tokens(context, add_bos=False), acts, centre))
        effects = self.logit_effects
        rows = [(label(int(u)), f"{float(v):+.3f}", label(int(d)), f"{float(w):+.3f}")
                for u, v, d, w in zip(effects.top_tokens, effects.top_values, effects.bottom_tokens,
                                      effects.bottom_values)]
        parts.append("<b>direct logit effect</b> (decoder row through the final norm's gain and the unembedding)")
        parts.append(table_html(["promotes", "", "suppresses", ""], rows))
        top = self.next_token_probs.topk(self.k)
        header = ["next token", "p"] + (["p, feature ablated"] if self.ablated_probs is not None else [])
        rows = []
        for token, p in zip(top.indices.tolist(), top.values.tolist()):
            row = [label(token), f"{p:.3f}"]
            if self.ablated_probs is not None:
                row.append(f"{float(self.ablated_probs[token]):.3f}")
            rows.append(row)
        parts.append(table_html(header, rows))
        return parts

    def _label(self, token_id: int) -> str:
        return token_label(self.tokenizer, token_id)
