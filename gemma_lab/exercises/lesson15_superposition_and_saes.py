"""Exercises of lesson 15, superposition and sparse autoencoders (``notebooks/15_superposition_and_saes.ipynb``).

Exercises: jumprelu_encode, l0_norm, fvu, run_with_feature_ablated. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemma_lab.exercises._trials import _small_model
from gemma_lab.exercises.checking import exercise, randint
from gemma_lab.model import Gemma

__all__ = [
    "fvu_inputs",
    "fvu_reference",
    "jumprelu_encode_inputs",
    "jumprelu_encode_reference",
    "l0_norm_inputs",
    "l0_norm_reference",
    "run_with_feature_ablated_inputs",
    "run_with_feature_ablated_reference",
]

NOTEBOOK = "15_superposition_and_saes"


def _jumprelu_sae(W_enc: torch.Tensor, b_enc: torch.Tensor, threshold: torch.Tensor):
    """The package's SAE holding these encoder parameters (the decoder is left at zero)."""
    from gemma_lab.sae import SAE, SAEConfig  # lazily: loading the exercises must not need the SAE layer

    d_in, d_sae = W_enc.shape
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu"))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.threshold.copy_(threshold)
    return sae


# ---- jumprelu_encode ------------------------------------------------------------------------


def jumprelu_encode_inputs(generator: torch.Generator) -> tuple:
    d_in, d_sae = randint(generator, 4, 24), randint(generator, 8, 48)
    leading = (randint(generator, 1, 3), randint(generator, 1, 6))[: randint(generator, 1, 2)]
    x = torch.randn((*leading, d_in), generator=generator)
    W_enc = torch.randn(d_in, d_sae, generator=generator) / d_in ** 0.5
    b_enc = torch.randn(d_sae, generator=generator) * 0.5
    # Thresholds are positive (as in Gemma Scope) and of the size of the pre-activations, so that
    # some features are above zero but below their threshold.
    threshold = torch.rand(d_sae, generator=generator) * 1.2 + 0.1
    return x, W_enc, b_enc, threshold


def jumprelu_encode_reference(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                              threshold: torch.Tensor) -> torch.Tensor:
    """``relu(pre) * (pre > threshold)`` with ``pre = x @ W_enc + b_enc``: ``[..., d_in] -> [..., d_sae]``."""
    return _jumprelu_sae(W_enc, b_enc, threshold).encode(x)


def _jumprelu_shifted(x, W_enc, b_enc, threshold):
    return F.relu(x @ W_enc + b_enc - threshold)


def _jumprelu_no_threshold(x, W_enc, b_enc, threshold):
    return F.relu(x @ W_enc + b_enc)


def _jumprelu_no_bias(x, W_enc, b_enc, threshold):
    pre = x @ W_enc
    return F.relu(pre) * (pre > threshold)


def _jumprelu_gate_is_the_output(x, W_enc, b_enc, threshold):
    pre = x @ W_enc + b_enc
    return (pre > threshold).to(pre.dtype)


exercise(
    "jumprelu_encode",
    make_inputs=jumprelu_encode_inputs,
    reference=jumprelu_encode_reference,
    mistakes={
        "A jump, not a shifted ramp: a feature above its threshold keeps its whole value, "
        "relu(pre) * (pre > threshold), rather than relu(pre - threshold).": _jumprelu_shifted,
        "The threshold is missing: relu(pre) lets every positive pre-activation through; JumpReLU also "
        "zeroes those below the feature's threshold.": _jumprelu_no_threshold,
        "Add b_enc to x @ W_enc before comparing with the threshold.": _jumprelu_no_bias,
        "(pre > threshold) says which features fire; their activation is the pre-activation itself, "
        "relu(pre) * (pre > threshold), not 1.": _jumprelu_gate_is_the_output,
    },
    notebook=NOTEBOOK,
)


# ---- l0_norm ---------------------------------------------------------------------------------


def l0_norm_inputs(generator: torch.Generator) -> tuple:
    leading = (randint(generator, 1, 3), randint(generator, 2, 9))
    d_sae = randint(generator, 16, 64)
    values = torch.rand((*leading, d_sae), generator=generator) * 3
    fires = torch.rand((*leading, d_sae), generator=generator) < torch.rand((), generator=generator) * 0.3 + 0.05
    return (values * fires,)


def l0_norm_reference(acts: torch.Tensor) -> torch.Tensor:
    """The mean number of features firing per token: ``[..., d_sae] -> []`` float32 (as ``training.evaluate``)."""
    return (acts > 0).float().sum(dim=-1).mean()


def _l0_fraction(acts):
    return (acts > 0).float().mean()


def _l0_is_l1(acts):
    return acts.float().sum(dim=-1).mean()


def _l0_total(acts):
    return (acts > 0).float().sum()


def _l0_per_feature(acts):
    return (acts > 0).float().sum(dim=0).mean()


exercise(
    "l0_norm",
    make_inputs=l0_norm_inputs,
    reference=l0_norm_reference,
    mistakes={
        "That is the fraction of features firing; L0 counts them: sum over the d_sae axis, then the "
        "mean over tokens.": _l0_fraction,
        "L0 counts the features that fire ((acts > 0)), whatever their size; summing the activations "
        "gives the L1 norm.": _l0_is_l1,
        "Average over tokens: L0 is per token, so it must not grow with the number of tokens.": _l0_total,
        "Count along the last axis (d_sae), the features of one token; axis 0 is the batch.": _l0_per_feature,
    },
    notebook=NOTEBOOK,
)


# ---- fvu -------------------------------------------------------------------------------------


def fvu_inputs(generator: torch.Generator) -> tuple:
    n, d = randint(generator, 4, 40), randint(generator, 3, 24)
    # An offset from zero, as real activations have: forgetting to subtract the mean then shows.
    target = torch.randn(n, d, generator=generator) + torch.randn(d, generator=generator) * 3
    recons = target + torch.randn(n, d, generator=generator) * (0.2 + torch.rand((), generator=generator))
    return recons, target


def fvu_reference(recons: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum |recons - target|^2 / sum |target - mean(target)|^2`` over ``[n, d]``: a 0-d tensor."""
    from gemma_lab.sae.training import fvu  # lazily, as above

    return fvu(recons, target)


def _fvu_no_mean(recons, target):
    return (recons - target).pow(2).sum() / target.pow(2).sum()


def _fvu_explained(recons, target):
    return 1 - fvu_reference(recons, target)


def _fvu_mean_over_features(recons, target):
    return (recons - target).pow(2).sum() / (target - target.mean(dim=-1, keepdim=True)).pow(2).sum()


def _fvu_per_token(recons, target):
    per_token = (recons - target).pow(2).sum(dim=-1) / (target - target.mean(dim=0)).pow(2).sum(dim=-1)
    return per_token.mean()


exercise(
    "fvu",
    make_inputs=fvu_inputs,
    reference=fvu_reference,
    mistakes={
        "Subtract the mean of the target (over tokens) in the denominator: the variance is measured "
        "around the mean, and an SAE gets the mean for free through b_dec.": _fvu_no_mean,
        "That is the fraction of variance explained; FVU is what is left: the squared error over the "
        "variance.": _fvu_explained,
        "The mean to subtract is the mean activation vector over tokens (dim=0), not each token's mean "
        "over its d entries.": _fvu_mean_over_features,
        "Sum the errors and the variance over all tokens first, then divide once; a mean of per-token "
        "ratios lets tokens near the mean dominate.": _fvu_per_token,
    },
    notebook=NOTEBOOK,
)


# ---- run_with_feature_ablated ----------------------------------------------------------------


def run_with_feature_ablated_inputs(generator: torch.Generator) -> tuple:
    from gemma_lab.sae import SAE, SAEConfig  # lazily, as above
    from gemma_lab.sae.features import feature_activations

    model = _small_model(generator)
    d_model, d_sae = model.cfg.d_model, randint(generator, 16, 48)
    layer = randint(generator, 0, model.cfg.n_layers - 1)
    sae = SAE(SAEConfig(d_in=d_model, d_sae=d_sae, architecture="relu", hook_name=f"blocks.{layer}.hook_resid_post"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_model, d_sae, generator=generator) / d_model ** 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.3 - 0.3)
        sae.W_dec.copy_(torch.randn(d_sae, d_model, generator=generator) / d_sae ** 0.5)
        sae.b_dec.copy_(torch.randn(d_model, generator=generator) * 0.1)
    tokens = torch.randint(0, model.cfg.vocab_size, (randint(generator, 1, 2), randint(generator, 3, 10)),
                           generator=generator)
    # A feature that fires on these tokens (the strongest in total), so that ablating it changes something.
    feature = int(feature_activations(model, sae, tokens).sum(dim=(0, 1)).argmax())
    return model, sae, tokens, feature


def run_with_feature_ablated_reference(model: Gemma, sae, tokens: torch.Tensor, feature: int) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` with ``feature`` set to 0 and everything else as in the plain model."""
    from gemma_lab.sae.features import ablate_features  # lazily, as above

    with ablate_features(model, sae, feature):
        return model(tokens)


def _zero_feature(feature):
    def hook(acts, hook):
        acts = acts.clone()
        acts[..., feature] = 0.0
        return acts

    return hook


def _ablated_without_error_term(model, sae, tokens, feature):
    sae.use_error_term = False
    return model.run_with_hooks(tokens, fwd_hooks=[(f"{sae.cfg.hook_name}.hook_sae_acts_post", _zero_feature(feature))],
                                saes=[sae])


def _subtract_unscaled_direction(model, sae, tokens, feature):
    def subtract(resid, hook):
        return resid - sae.W_dec[feature]

    return model.run_with_hooks(tokens, fwd_hooks=[(sae.cfg.hook_name, subtract)])


def _ablated_at_last_position(model, sae, tokens, feature):
    def zero_last(acts, hook):
        acts = acts.clone()
        acts[:, -1, feature] = 0.0
        return acts

    sae.use_error_term = True
    return model.run_with_hooks(tokens, fwd_hooks=[(f"{sae.cfg.hook_name}.hook_sae_acts_post", zero_last)], saes=[sae])


exercise(
    "run_with_feature_ablated",
    make_inputs=run_with_feature_ablated_inputs,
    reference=run_with_feature_ablated_reference,
    mistakes={
        "Turn on the error term (sae.use_error_term = True): without it the SAE's reconstruction replaces "
        "the activation, and its error changes the logits as well as the ablation does.":
            _ablated_without_error_term,
        "Subtract what the feature actually wrote: its activation times its decoder row, acts[..., f, None] * "
        "W_dec[f], which is 0 where it does not fire. Simplest: zero it at hook_sae_acts_post.":
            _subtract_unscaled_direction,
        "Ablate the feature at every position (acts[..., feature] = 0), not only the last one.":
            _ablated_at_last_position,
    },
    notebook=NOTEBOOK,
    trials=4,
)
