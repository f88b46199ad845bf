"""Exercises of lesson 10, the logit lens (``notebooks/10_logit_lens.ipynb``).

Exercises: logit_lens_for_position. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _small_model
from gemma_lab.exercises.checking import exercise, randint
from gemma_lab.model import Gemma

__all__ = [
    "logit_lens_for_position_reference",
    "logit_lens_inputs",
]

NOTEBOOK = "10_logit_lens"


def logit_lens_inputs(generator: torch.Generator) -> tuple:
    model = _small_model(generator)
    n_pos = randint(generator, 2, 8)
    tokens = torch.randint(0, model.cfg.vocab_size, (1, n_pos), generator=generator)
    _, cache = model.run_with_cache(tokens, names_filter=_is_residual)
    stack = [cache["hook_embed"][0]] + [cache["resid_post", layer][0] for layer in range(model.cfg.n_layers)]
    return model, torch.stack(stack), randint(generator, 0, n_pos - 1)


def _is_residual(name: str) -> bool:
    return name == "hook_embed" or name.endswith("hook_resid_post")


def logit_lens_for_position_reference(model: Gemma, resid_stack: torch.Tensor, pos: int) -> torch.Tensor:
    """Next-token probabilities read off the residual stream at ``pos`` after each layer: ``[layer, vocab]``.

    resid_stack: ``[layer, pos, d_model]``, the embedding then the stream after each block. Each row
    goes through what the model does after its last block: the final RMSNorm, the tied unembedding,
    Gemma 2's final softcap, then a softmax.
    """
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    return torch.softmax(interp.unembed(model, resid_stack[:, pos, :]).float(), dim=-1)


def _lens_without_norm(model, resid_stack, pos):
    logits = resid_stack[:, pos, :] @ model.embed.weight.T
    if model.cfg.final_softcap is not None:
        logits = model.cfg.final_softcap * torch.tanh(logits / model.cfg.final_softcap)
    return torch.softmax(logits.float(), dim=-1)


def _lens_without_softcap(model, resid_stack, pos):
    return torch.softmax((model.ln_final(resid_stack[:, pos, :]) @ model.embed.weight.T).float(), dim=-1)


def _lens_softmax_over_layers(model, resid_stack, pos):
    logits = model.ln_final(resid_stack[:, pos, :]) @ model.embed.weight.T
    if model.cfg.final_softcap is not None:
        logits = model.cfg.final_softcap * torch.tanh(logits / model.cfg.final_softcap)
    return torch.softmax(logits.float(), dim=0)


exercise(
    "logit_lens_for_position",
    make_inputs=logit_lens_inputs,
    reference=logit_lens_for_position_reference,
    mistakes={
        "Did you skip the final norm? The unembedding was trained on model.ln_final's output, not on "
        "the raw residual stream.": _lens_without_norm,
        "Gemma 2 caps its logits (cfg.final_softcap: cap * tanh(logits / cap)) before the softmax; "
        "apply it when it is not None.": _lens_without_softcap,
        "The softmax goes over the vocab axis (dim=-1), not over layers.": _lens_softmax_over_layers,
    },
    notebook=NOTEBOOK,
)
