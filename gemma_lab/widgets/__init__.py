"""Widgets: look inside Gemma interactively, in JupyterLab or as a Voila dashboard.

    from gemma_lab.widgets import InferenceStepper
    InferenceStepper()                      # the bundled tiny Gemma; or InferenceStepper(model, tokenizer)

* ``InferenceStepper``: one forward pass, stage by stage, from text to the chosen token and the KV cache.
* ``AttentionExplorer``: a layer's heads; pick a token to see what it attends to and what attends to it.
* ``LogitLensExplorer``: the prediction read off the residual stream after every layer, per position.
* ``SamplingPlayground``: temperature, top-k, top-p and min-p reshaping the next-token distribution.
* ``TokenizerExplorer``: pieces, ids, byte fallbacks, special tokens and the chat template.
* ``PatchingExplorer``: activation patching between a clean and a corrupted prompt.
* ``FeatureExplorer``: one sparse-autoencoder feature: where it fires, what it writes, ablated live.
* ``RouterExplorer``: a Gemma 4 mixture-of-experts layer's router: the experts each token is sent to.

Each widget runs the model once per prompt and redraws from that cache; its controls and what it
last drew are attributes (see docs/widgets.md), which is also how the tests drive them.
Role: the top of the package. Widgets wire controls to ``gemma_lab.viz`` pictures of numbers read
through hooks; nothing below this layer imports it.
"""

from gemma_lab.widgets.explorers import (
    AttentionExplorer,
    LogitLensExplorer,
    PatchingExplorer,
    SamplingPlayground,
    TokenizerExplorer,
)
from gemma_lab.widgets.features import FeatureExplorer
from gemma_lab.widgets.moe import RouterExplorer
from gemma_lab.widgets.stepper import InferenceStepper

__all__ = [
    "AttentionExplorer",
    "FeatureExplorer",
    "InferenceStepper",
    "LogitLensExplorer",
    "PatchingExplorer",
    "RouterExplorer",
    "SamplingPlayground",
    "TokenizerExplorer",
]
