"""Solutions to the exercises of notebook 12 (steering).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch

from gemma_lab.generation import generate


def steering_vector(acts_a, acts_b):
    """[n_a, d_model], [n_b, d_model] -> [d_model]: mean(acts_a) - mean(acts_b) over prompts."""
    return acts_a.mean(dim=0) - acts_b.mean(dim=0)


def steered_generate(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
    """Greedy new token ids (a list) while coeff * direction is added to blocks.{layer}.hook_resid_pre
    at every absolute position >= start (start >= 1 leaves <bos> alone)."""

    def add_direction(resid, hook):
        # resid: [batch, pos, d_model]; hook.positions: [batch, pos] absolute positions, also while
        # generating with the KV cache (then pos is 1: the new token only).
        shift = coeff * direction.to(resid.device, resid.dtype)  # a new tensor: direction stays as it was
        steered = (hook.positions >= start)[..., None]  # [batch, pos, 1]
        return torch.where(steered, resid + shift, resid)  # a new tensor; resid itself is not edited

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", add_direction)]):
        return generate(model, prompt_ids, max_new_tokens=max_new_tokens, stop=[]).token_ids
