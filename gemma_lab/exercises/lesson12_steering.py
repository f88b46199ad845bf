"""Exercises of lesson 12, steering (``notebooks/12_steering.ipynb``).

Exercises: steering_vector, steered_generate. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _random_float, _small_model
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number

__all__ = [
    "steered_generate_inputs",
    "steered_generate_reference",
    "steering_vector_inputs",
    "steering_vector_reference",
]

NOTEBOOK = "12_steering"


def steering_vector_inputs(generator: torch.Generator) -> tuple:
    d_model = randint(generator, 4, 32)
    acts_a = _random_float(generator, (randint(generator, 1, 6), d_model)) + 1.0
    acts_b = _random_float(generator, (randint(generator, 1, 6), d_model)).to(acts_a.dtype)
    return acts_a, acts_b


def steering_vector_reference(acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
    """``mean(acts_a) - mean(acts_b)`` over prompts: ``[n_a, d_model], [n_b, d_model] -> [d_model]``."""
    return acts_a.mean(dim=0) - acts_b.mean(dim=0)


def _steering_reversed(acts_a, acts_b):
    return acts_b.mean(dim=0) - acts_a.mean(dim=0)


def _steering_normalised(acts_a, acts_b):
    direction = acts_a.mean(dim=0) - acts_b.mean(dim=0)
    return direction / direction.norm()


def _steering_summed(acts_a, acts_b):
    return acts_a.sum(dim=0) - acts_b.sum(dim=0)


exercise(
    "steering_vector",
    make_inputs=steering_vector_inputs,
    reference=steering_vector_reference,
    mistakes={
        "The direction points from B to A: mean(acts_a) - mean(acts_b).": _steering_reversed,
        "Keep the length: the difference of means already has the size of a real change in the "
        "residual stream, which is what makes a coefficient of 1 meaningful.": _steering_normalised,
        "A sum grows with the number of prompts, and the two sets need not be the same size: take "
        "the mean of each.": _steering_summed,
    },
    notebook=NOTEBOOK,
)


# ---- steered_generate: the steering hook, written out -----------------------------------------------


def steered_generate_inputs(generator: torch.Generator) -> tuple:
    """A small random Gemma (bfloat16 on trial 1), a prompt starting with ``<bos>``, a direction as large
    as the residual stream itself (so a slip changes the greedy tokens), and where steering starts:
    at position 1, in the middle of the prompt, or only once generation has begun."""
    trial = trial_number(generator)
    model = _small_model(generator)
    if trial == 1:
        model = model.to(torch.bfloat16)
    n_prompt = randint(generator, 4, 7)
    prompt_ids = [2] + torch.randint(3, model.cfg.vocab_size, (n_prompt - 1,), generator=generator).tolist()
    layer = randint(generator, 0, model.cfg.n_layers - 1)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([prompt_ids]), names_filter=f"blocks.{layer}.hook_resid_pre")
    rms = cache[f"blocks.{layer}.hook_resid_pre"].float().pow(2).mean().sqrt()
    # float32 even when the model is bfloat16 (the hook must convert), with values bfloat16 holds exactly,
    # so that converting before or after multiplying by a small integer coefficient rounds the same way.
    direction = (torch.randn(model.cfg.d_model, generator=generator) * rms).to(torch.bfloat16).float()
    coeff = float(choice(generator, [-3.0, -2.0, 2.0, 3.0]))
    start = (1, randint(generator, 2, n_prompt - 1), n_prompt + 1)[trial % 3]
    return model, prompt_ids, direction, layer, coeff, start, randint(generator, 5, 7)


def _steered_generate_with(model, prompt_ids, direction, layer, coeff, start, max_new_tokens, hook_fn) -> list[int]:
    from gemma_lab.generation import generate  # lazily: loading the exercises must not need generation

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook_fn)]):
        return generate(model, prompt_ids, max_new_tokens=max_new_tokens, stop=[]).token_ids


def steered_generate_reference(model, prompt_ids, direction, layer, coeff, start, max_new_tokens) -> list[int]:
    """Greedy new ids (``stop=[]``) while ``coeff * direction`` is added to ``blocks.{layer}.hook_resid_pre``
    at every absolute position ``>= start``: ``interp.steering_hook`` at ``range(start, max_seq_len)``."""
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    hook_fn = interp.steering_hook(direction, coeff, positions=range(start, model.cfg.max_seq_len))
    return _steered_generate_with(model, prompt_ids, direction, layer, coeff, start, max_new_tokens, hook_fn)


def _steer_where(keep):
    """A mistaken steered_generate whose hook steers where ``keep(positions, start)`` is True."""
    def steered(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
        def add_direction(resid, hook):
            chosen = keep(hook.positions, start)[..., None]
            return resid + chosen * (coeff * direction).to(resid.dtype)

        return _steered_generate_with(model, prompt_ids, direction, layer, coeff, start, max_new_tokens,
                                      add_direction)
    return steered


_steer_bos_too = _steer_where(lambda positions, start: torch.ones_like(positions, dtype=torch.bool))
_steer_after_start = _steer_where(lambda positions, start: positions > start)
_steer_from_start = _steer_where(lambda positions, start: positions >= start)


def _steer_subtracting(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
    return _steer_from_start(model, prompt_ids, -direction, layer, coeff, start, max_new_tokens)


def _steer_direction_in_place(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
    def add_direction(resid, hook):
        direction.mul_(coeff)  # the same tensor every forward pass: it grows coeff-fold each time
        chosen = (hook.positions >= start)[..., None]
        return resid + chosen * direction.to(resid.dtype)

    return _steered_generate_with(model, prompt_ids, direction, layer, coeff, start, max_new_tokens, add_direction)


def _steer_by_index(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
    def add_direction(resid, hook):
        resid = resid.clone()
        resid[:, start:] += (coeff * direction).to(resid.dtype)  # index in *this pass*, not the position
        return resid

    return _steered_generate_with(model, prompt_ids, direction, layer, coeff, start, max_new_tokens, add_direction)


exercise(
    "steered_generate",
    make_inputs=steered_generate_inputs,
    reference=steered_generate_reference,
    mistakes={
        "<bos> was steered too (or `start` ignored): steer only where hook.positions >= start. <bos> is the "
        "attention sink of lesson 09, so shifting it changes what every head parked there reads.": _steer_bos_too,
        "Off by one: steering starts *at* position `start` (hook.positions >= start), not after it.":
            _steer_after_start,
        "Wrong sign: steering *adds* coeff * direction (a negative coeff is how you steer the other way).":
            _steer_subtracting,
        "The direction grew during generation: an in-place edit (direction *= coeff, direction.mul_) changes the "
        "one tensor every forward pass reuses, and generate runs the model once per new token, so the shift "
        "is multiplied by coeff again each time. Compute a new tensor: shift = coeff * direction.":
            _steer_direction_in_place,
        "The generated tokens were not steered: with a KV cache each generation step's forward pass sees only "
        "the new position, so resid[:, start:] indexes *this pass's* positions. Compare hook.positions "
        "(absolute positions, [batch, pos]) with start instead.": _steer_by_index,
    },
    notebook=NOTEBOOK,
    trials=6,
)
