"""Exercises of lesson 08, hooks and caching (``notebooks/08_hooks_and_caching.ipynb``).

Exercises: run_with_head_ablated. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _small_model
from gemma_lab.exercises.checking import exercise, randint
from gemma_lab.model import Gemma

__all__ = [
    "run_with_head_ablated_inputs",
    "run_with_head_ablated_reference",
]

NOTEBOOK = "08_hooks_and_caching"


def run_with_head_ablated_inputs(generator: torch.Generator) -> tuple:
    model = _small_model(generator)
    tokens = torch.randint(0, model.cfg.vocab_size, (randint(generator, 1, 2), randint(generator, 3, 12)),
                           generator=generator)
    return model, tokens, randint(generator, 0, model.cfg.n_layers - 1), randint(generator, 0, model.cfg.n_heads - 1)


def run_with_head_ablated_reference(model: Gemma, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Logits with one head's output ``z`` set to zero: the package's own zero-ablation."""
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    with interp.ablate_heads(model, [(layer, head)]):
        return model(tokens)


def _ablate_position_instead(model, tokens, layer, head):
    def zero(z, hook):
        z = z.clone()
        z[:, head] = 0.0  # axis 1 of z is pos, not head
        return z

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])


def _ablate_query_instead(model, tokens, layer, head):
    def zero(q, hook):
        q = q.clone()
        q[:, :, head] = 0.0
        return q

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_q", zero)])


def _ablate_every_layer(model, tokens, layer, head):
    def zero(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    every_z = [(f"blocks.{i}.attn.hook_z", zero) for i in range(model.cfg.n_layers)]
    return model.run_with_hooks(tokens, fwd_hooks=every_z)


exercise(
    "run_with_head_ablated",
    make_inputs=run_with_head_ablated_inputs,
    reference=run_with_head_ablated_reference,
    mistakes={
        "z has axes [batch, pos, head, d_head]: did you index the pos axis (z[:, head]) instead of "
        "the head axis (z[:, :, head])?": _ablate_position_instead,
        "Zeroing the query does not silence a head (softmax of all-zero scores is uniform attention, "
        "not nothing): hook blocks.{layer}.attn.hook_z, the head's output.": _ablate_query_instead,
        "Did your hook run in every layer? Attach it to the one name f'blocks.{layer}.attn.hook_z'.":
            _ablate_every_layer,
    },
    notebook=NOTEBOOK,
    trials=4,
)
