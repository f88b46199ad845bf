"""Exercises of lesson 11, activation patching on indirect-object identification (``notebooks/11_activation_patching_ioi.ipynb``).

Exercises: logit_difference, patch_residual, patch_heads, path_patch_queries. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises._trials import _random_float, _small_model
from gemma_lab.exercises.checking import exercise, randint

__all__ = [
    "patch_heads_inputs",
    "patch_heads_reference",
    "path_patch_queries_inputs",
    "path_patch_queries_reference",
    "logit_difference_inputs",
    "logit_difference_reference",
    "patch_residual_inputs",
    "patch_residual_reference",
]

NOTEBOOK = "11_activation_patching_ioi"


def logit_difference_inputs(generator: torch.Generator) -> tuple:
    batch, n_pos, vocab = randint(generator, 1, 4), randint(generator, 2, 9), randint(generator, 8, 40)
    logits = _random_float(generator, (batch, n_pos, vocab))
    io_ids = torch.randint(0, vocab, (batch,), generator=generator)
    s_ids = (io_ids + torch.randint(1, vocab, (batch,), generator=generator)) % vocab  # never the IO token
    return logits, io_ids, s_ids


def logit_difference_reference(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``logit(IO) - logit(S)`` at the last position: a 0-d float32 tensor."""
    last = logits[:, -1, :].float()  # [batch, vocab]
    rows = torch.arange(last.shape[0])
    return (last[rows, io_ids] - last[rows, s_ids]).mean()


def _logit_difference_first_position(logits, io_ids, s_ids):
    first = logits[:, 0, :].float()
    rows = torch.arange(first.shape[0])
    return (first[rows, io_ids] - first[rows, s_ids]).mean()


def _logit_difference_swapped(logits, io_ids, s_ids):
    return -logit_difference_reference(logits, io_ids, s_ids)


def _logit_difference_summed(logits, io_ids, s_ids):
    return logit_difference_reference(logits, io_ids, s_ids) * logits.shape[0]


exercise(
    "logit_difference",
    make_inputs=logit_difference_inputs,
    reference=logit_difference_reference,
    mistakes={
        "The prediction for the answer is made at the last position (logits[:, -1]), not the first.":
            _logit_difference_first_position,
        "The sign: logit(IO) - logit(S), so that a model that gets IOI right scores positive.":
            _logit_difference_swapped,
        "Average over the batch (.mean()) rather than summing, so the number does not grow with the "
        "number of prompts.": _logit_difference_summed,
    },
    notebook=NOTEBOOK,
)


def patch_residual_inputs(generator: torch.Generator) -> tuple:
    batch, n_pos, d_model = randint(generator, 1, 3), randint(generator, 2, 10), randint(generator, 4, 32)
    corrupted = _random_float(generator, (batch, n_pos, d_model))
    clean = _random_float(generator, (batch, n_pos, d_model)).to(corrupted.dtype)
    return corrupted, clean, randint(generator, 0, n_pos - 1)


def patch_residual_reference(corrupted: torch.Tensor, clean: torch.Tensor, pos: int) -> torch.Tensor:
    """The corrupted run's residual stream ``[batch, pos, d_model]`` with position ``pos`` taken from the clean run."""
    patched = corrupted.clone()
    patched[:, pos, :] = clean[:, pos, :]
    return patched


def _patch_from_pos_on(corrupted, clean, pos):
    patched = corrupted.clone()
    patched[:, pos:, :] = clean[:, pos:, :]
    return patched


def _patch_wrong_direction(corrupted, clean, pos):
    patched = clean.clone()
    patched[:, pos, :] = corrupted[:, pos, :]
    return patched


exercise(
    "patch_residual",
    make_inputs=patch_residual_inputs,
    reference=patch_residual_reference,
    mistakes={
        "Patch one position only (patched[:, pos]); a slice pos: patches every later position too.":
            _patch_from_pos_on,
        "Direction: we run the corrupted prompt and restore one clean activation, so start from "
        "`corrupted` and copy in clean[:, pos].": _patch_wrong_direction,
    },
    notebook=NOTEBOOK,
)


class _LogitDifference:
    """A metric ``logits -> 0-d tensor``: mean over the batch of logit(a) - logit(b) at the last position."""

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return (last[:, self.a] - last[:, self.b]).mean()

    def __repr__(self) -> str:
        return f"metric: logit[{self.a}] - logit[{self.b}] at the last position"


def patch_heads_inputs(generator: torch.Generator) -> tuple:
    model = _small_model(generator)
    shape = (randint(generator, 1, 2), randint(generator, 5, 8))  # more positions than heads
    clean = torch.randint(3, model.cfg.vocab_size, shape, generator=generator)
    corrupted = clean.clone()
    corrupted[:, randint(generator, 0, shape[1] - 1)] = torch.randint(3, model.cfg.vocab_size, (shape[0],),
                                                                      generator=generator)
    _, clean_cache = model.run_with_cache(clean, names_filter=lambda name: name.endswith("attn.hook_z"))
    a, b = torch.randperm(model.cfg.vocab_size, generator=generator)[:2].tolist()
    return model, corrupted, clean_cache, _LogitDifference(a, b)


def patch_heads_reference(model, corrupted_tokens, clean_cache, metric) -> torch.Tensor:
    """``[layer, head]`` float32: the metric of the corrupted run with one head's ``z`` (every position)
    taken from the clean run, the package's ``interp.patch_by_head``."""
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    with torch.no_grad():
        return interp.patch_by_head(model, corrupted_tokens, clean_cache, metric, activation="z", progress=False)


def _patch_heads_with(model, corrupted_tokens, clean_cache, metric, index):
    cfg = model.cfg
    results = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        clean = clean_cache[f"blocks.{layer}.attn.hook_z"]
        for head in range(cfg.n_heads):
            def patch(z, hook):
                z = z.clone()
                z[index(head)] = clean[index(head)]
                return z

            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])
            results[layer, head] = float(metric(logits))
    return results


def _patch_heads_pos_axis(model, corrupted_tokens, clean_cache, metric):
    return _patch_heads_with(model, corrupted_tokens, clean_cache, metric,
                             lambda head: (slice(None), head))


def _patch_heads_whole_layer(model, corrupted_tokens, clean_cache, metric):
    return _patch_heads_with(model, corrupted_tokens, clean_cache, metric, lambda head: (slice(None),))


exercise(
    "patch_heads",
    make_inputs=patch_heads_inputs,
    reference=patch_heads_reference,
    mistakes={
        "z is [batch, pos, head, d_head]: z[:, head] picks a *position*. One head is z[:, :, head].":
            _patch_heads_pos_axis,
        "Every cell of a layer is the same: did you copy the whole z (all heads) instead of one head's slice "
        "z[:, :, head]?": _patch_heads_whole_layer,
    },
    notebook=NOTEBOOK,
    trials=2,  # each trial is n_layers x n_heads forward passes, twice: two Gemma generations suffice
)


def path_patch_queries_inputs(generator: torch.Generator) -> tuple:
    model = _small_model(generator)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    shape = (randint(generator, 1, 2), randint(generator, 5, 8))
    clean = torch.randint(3, model.cfg.vocab_size, shape, generator=generator)
    corrupted = clean.clone()
    corrupted[:, randint(generator, 0, shape[1] - 2)] = torch.randint(3, model.cfg.vocab_size, (shape[0],),
                                                                      generator=generator)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=lambda name: name.endswith("attn.hook_z"))
    gap = 2 if n_layers > 2 else 1  # a layer of heads in between where there is room, so freezing matters
    sender = (randint(generator, 0, n_layers - 1 - gap), randint(generator, 0, n_heads - 1))
    receiver = (randint(generator, sender[0] + gap, n_layers - 1), randint(generator, 0, n_heads - 1))
    a, b = torch.randperm(model.cfg.vocab_size, generator=generator)[:2].tolist()
    return model, clean, clean_cache, corrupted_cache, _LogitDifference(a, b), sender, receiver


def path_patch_queries_reference(model, clean_tokens, clean_cache, corrupted_cache, metric, sender,
                                 receiver) -> float:
    """Noising path patching from ``sender`` into ``receiver``'s queries, every other head frozen at its
    clean ``z``, MLPs recomputed: the package's ``interp.path_patch`` (with the caches given)."""
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    return interp._path_patch(model, clean_tokens, clean_cache, corrupted_cache, metric, [sender], [receiver],
                              receiver_input="q", freeze="heads")


def _path_patch_queries_with(model, clean_tokens, clean_cache, corrupted_cache, metric, sender, receiver, *,
                             freeze=True, whole_layer=False, metric_of_first_run=False):
    (sender_layer, sender_head), (receiver_layer, receiver_head) = sender, receiver
    received = {}

    def freeze_heads(z, hook):
        layer = int(hook.name.split(".")[1])
        z = clean_cache[hook.name].clone() if freeze else z.clone()
        if layer == sender_layer:
            z[:, :, sender_head] = corrupted_cache[hook.name][:, :, sender_head]
        return z

    def record(q, hook):
        received["q"] = q.clone()

    q_name = f"blocks.{receiver_layer}.attn.hook_q"
    with torch.no_grad():
        first = model.run_with_hooks(clean_tokens, fwd_hooks=[(lambda name: name.endswith("attn.hook_z"), freeze_heads),
                                                             (q_name, record)])
        if metric_of_first_run:
            return float(metric(first))

        def receive(q, hook):
            if whole_layer:
                return received["q"]
            q = q.clone()
            q[:, :, receiver_head] = received["q"][:, :, receiver_head]
            return q

        return float(metric(model.run_with_hooks(clean_tokens, fwd_hooks=[(q_name, receive)])))


def _path_patch_queries_unfrozen(*args):
    return _path_patch_queries_with(*args, freeze=False)


def _path_patch_queries_whole_layer(*args):
    return _path_patch_queries_with(*args, whole_layer=True)


def _path_patch_queries_first_run(*args):
    return _path_patch_queries_with(*args, metric_of_first_run=True)


def _same_metric(got, expected) -> bool:
    try:
        got = float(got)
    except (TypeError, ValueError):
        return False
    return abs(got - expected) <= 1e-4 * (1 + abs(expected))


exercise(
    "path_patch_queries",
    make_inputs=path_patch_queries_inputs,
    reference=path_patch_queries_reference,
    mistakes={
        "Freeze the other heads: in the first run every head's z must be its *clean* z (clean_cache) except "
        "the sender's, not the z that run computes; otherwise the paths through other heads count too.":
            _path_patch_queries_unfrozen,
        "Replace only the receiver's queries, q[:, :, head]; you replaced the queries of every head in its layer.":
            _path_patch_queries_whole_layer,
        "The first run only records what the receiver would read; the metric comes from the second run, where "
        "nothing but the receiver's queries changes.": _path_patch_queries_first_run,
    },
    compare=_same_metric,
    notebook=NOTEBOOK,
    trials=3,  # one small model of each generation
)
