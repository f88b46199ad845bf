"""Sparse autoencoders and transcoders: Gemma Scope 1 and 2, SAELens files, and the tiny SAEs trained here.

    from gemma_lab.sae import load_sae
    sae = load_sae("tiny")                                  # or a Gemma Scope / SAELens folder
    logits, cache = model.run_with_cache(tokens, saes=[sae])
    cache[f"{sae.cfg.hook_name}.hook_sae_acts_post"]         # [batch, pos, d_sae] feature activations

    with model.hooks(saes=[sae]):                           # spliced in for the block, also for generate()
        ...

* ``autoencoder``: ``SAE``, ``Transcoder``, ``SAEConfig`` (JumpReLU, ReLU, TopK; the error term).
* ``loading``: ``load_sae`` and the hook-point mapping of Gemma Scope 2's config.json.
* ``training``: training an SAE or a transcoder on a model's activations (TopK with AuxK).
* ``features``: reading features: top-activating contexts, logit effects, ablation, steering.

Role: the interpretability layer (beside loading, generation and interp): it imports the hook layer
and the bundled-file locations; the model is passed in. Never plotting or widgets. The bundled tiny
SAEs are made by ``gemma_lab/tiny/sae.py``.
"""

from gemma_lab.sae.autoencoder import ARCHITECTURES, SAE, SAEConfig, SAEConfigError, Transcoder, make_sae
from gemma_lab.sae.loading import HF_HOOK_POINTS, check_fits, load_sae

__all__ = [
    "ARCHITECTURES",
    "HF_HOOK_POINTS",
    "SAE",
    "SAEConfig",
    "SAEConfigError",
    "Transcoder",
    "check_fits",
    "load_sae",
    "make_sae",
]
