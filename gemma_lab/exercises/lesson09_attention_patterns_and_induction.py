"""Exercises of lesson 09, attention patterns and induction heads (``notebooks/09_attention_patterns_and_induction.ipynb``).

Exercises: prev_token_score, induction_score, ov_copying_score, k_composition_scores, scores_by_offset. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises.checking import choice, exercise, randint

__all__ = [
    "scores_by_offset_inputs",
    "scores_by_offset_reference",
    "k_composition_scores_inputs",
    "k_composition_scores_reference",
    "ov_copying_score_inputs",
    "ov_copying_score_reference",
    "induction_score_inputs",
    "induction_score_reference",
    "prev_token_score_inputs",
    "prev_token_score_reference",
]

NOTEBOOK = "09_attention_patterns_and_induction"


def _random_pattern(generator: torch.Generator, q_len: int) -> torch.Tensor:
    """A causal attention pattern [batch, head, q_pos, k_pos]: rows sum to one, future keys are zero."""
    batch, heads = randint(generator, 1, 3), randint(generator, 1, 6)
    scores = torch.randn(batch, heads, q_len, q_len, generator=generator) * 3
    future = torch.ones(q_len, q_len, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def prev_token_score_inputs(generator: torch.Generator) -> tuple:
    return (_random_pattern(generator, randint(generator, 2, 20)),)


def prev_token_score_reference(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one before it, per head: ``[head]``.

    pattern: ``[batch, head, q_pos, k_pos]``. Queries 1 .. q_pos-1 (position 0 has no predecessor).
    """
    to_previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # [batch, head, q_pos - 1]
    return to_previous.mean(dim=(0, 2))


def _prev_token_includes_diagonal(pattern):
    return pattern.diagonal(dim1=-2, dim2=-1).mean(dim=(0, 2))


def _prev_token_next_position(pattern):
    return pattern.diagonal(offset=1, dim1=-2, dim2=-1).mean(dim=(0, 2))


exercise(
    "prev_token_score",
    make_inputs=prev_token_score_inputs,
    reference=prev_token_score_reference,
    mistakes={
        "That is attention to the token itself (the main diagonal): the previous token is one column "
        "to the left, pattern[..., q, q - 1].": _prev_token_includes_diagonal,
        "Rows are queries and columns keys: the previous token of query q is key q - 1, below the "
        "diagonal (offset=-1), not above it.": _prev_token_next_position,
    },
    notebook=NOTEBOOK,
)


def induction_score_inputs(generator: torch.Generator) -> tuple:
    seq_len = randint(generator, 2, 10)
    return _random_pattern(generator, 1 + 2 * seq_len), seq_len


def induction_score_reference(pattern: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean attention an induction head would pay, per head: ``[head]``.

    The sequence is ``<bos>, r_0 .. r_{n-1}, r_0 .. r_{n-1}`` (n = seq_len), so the token at position
    ``q`` in the second copy first appeared at ``q - n``, and the token that followed it is at
    ``q - n + 1``: that is where an induction head looks. Queries: every position of the second copy.
    """
    diagonal = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # entries [q, q - n + 1]
    second_copy = diagonal[..., -seq_len:]  # the queries q = n + 1 .. 2n
    return second_copy.mean(dim=(0, 2))


def _induction_duplicate_token(pattern, seq_len):
    return pattern.diagonal(offset=-seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(0, 2))


def _induction_all_queries(pattern, seq_len):
    return pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).mean(dim=(0, 2))


exercise(
    "induction_score",
    make_inputs=induction_score_inputs,
    reference=induction_score_reference,
    mistakes={
        "That is the duplicate-token score (attention to the earlier copy of the same token, q - n). "
        "An induction head looks one further: at the token that came *after* it, q - n + 1.":
            _induction_duplicate_token,
        "Average over the queries of the second copy only (the last seq_len positions): in the "
        "first copy there is nothing to repeat yet.": _induction_all_queries,
    },
    notebook=NOTEBOOK,
)


def _low_rank(generator: torch.Generator, heads: int, d: int, rank: int) -> torch.Tensor:
    """``[heads, d, d]`` products of two random factors: rank ``rank``, like a head's OV or QK matrix."""
    left = torch.randn(heads, d, rank, generator=generator)
    right = torch.randn(heads, rank, d, generator=generator)
    return left @ right


def k_composition_scores_inputs(generator: torch.Generator) -> tuple:
    d = randint(generator, 6, 16)
    rank = randint(generator, 2, d // 2)
    ov = _low_rank(generator, randint(generator, 1, 4), d, rank)
    qk = _low_rank(generator, randint(generator, 1, 4), d, rank)
    return ov, qk


def k_composition_scores_reference(ov: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
    """K-composition of every pair: ``[head_later, head_earlier]``.

    ov: ``[head_earlier, d_model, d_model]`` (an earlier layer's OV circuits), qk: ``[head_later,
    d_model, d_model]`` (a later layer's QK circuits). The later head's keys read the stream
    through ``qk.T`` (the score is ``x_q @ qk @ x_k.T``), so the score is
    ``composition_score(ov[e], qk[l].T)``.
    """
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    return interp.composition_score(ov[None], qk[:, None].transpose(-1, -2))


def _k_composition_as_q(ov, qk):
    from gemma_lab import interp

    return interp.composition_score(ov[None], qk[:, None])


def _k_composition_reversed(ov, qk):
    from gemma_lab import interp

    return interp.composition_score(qk[:, None].transpose(-1, -2), ov[None])


def _k_composition_unnormalised(ov, qk):
    return torch.linalg.matrix_norm(ov[None] @ qk[:, None].transpose(-1, -2))


exercise(
    "k_composition_scores",
    make_inputs=k_composition_scores_inputs,
    reference=k_composition_scores_reference,
    mistakes={
        "That is Q-composition: the query side reads x_q @ qk. The keys are read through the other side, "
        "x_k @ qk.T, so compose ov with qk.T (transpose the last two axes).": _k_composition_as_q,
        "Order matters: the earlier head writes first, so the product is ov @ qk.T, not qk.T @ ov.":
            _k_composition_reversed,
        "Divide by the two norms: |ov @ qk.T|_F / (|ov|_F |qk.T|_F), so that big weights do not look like "
        "strong composition.": _k_composition_unnormalised,
    },
    notebook=NOTEBOOK,
)


def ov_copying_score_inputs(generator: torch.Generator) -> tuple:
    n = randint(generator, 3, 30)
    full = torch.randn(n, n, generator=generator)
    boosted = torch.rand(n, generator=generator) < 0.5  # some rows copy (their diagonal wins), some do not
    full[boosted, boosted.nonzero()[:, 0]] += 4.0
    return (full,)


def ov_copying_score_reference(full_ov: torch.Tensor) -> torch.Tensor:
    """The fraction of source tokens (rows) whose largest output logit is the token itself: a 0-d tensor.

    full_ov: ``[vocab_in, vocab_out]`` with the same token list on both axes (row ``i``: the logits a
    head writes when it attends to token ``i``).
    """
    rows = torch.arange(full_ov.shape[0])
    return (full_ov.argmax(dim=-1) == rows).float().mean()


def _copying_over_columns(full_ov):
    return (full_ov.argmax(dim=0) == torch.arange(full_ov.shape[0])).float().mean()


def _copying_diagonal_mean(full_ov):
    return full_ov.diagonal().float().mean()


exercise(
    "ov_copying_score",
    make_inputs=ov_copying_score_inputs,
    reference=ov_copying_score_reference,
    mistakes={
        "Rows are the token attended to, columns the logits it produces: take the argmax along each row "
        "(dim=-1), not down each column.": _copying_over_columns,
        "The score counts rows whose *largest* entry is on the diagonal (argmax == row index); the mean of "
        "the diagonal's values says nothing about whether the token beats the others.": _copying_diagonal_mean,
    },
    notebook=NOTEBOOK,
)


def scores_by_offset_inputs(generator: torch.Generator) -> tuple:
    d_head = choice(generator, [4, 8, 16, 32])
    q = torch.randn(randint(generator, 1, 5), d_head, generator=generator)
    k = torch.randn(randint(generator, 1, 5), d_head, generator=generator)
    offsets = torch.randint(0, 200, (randint(generator, 2, 5),), generator=generator)
    offsets[0] = 1  # at least one small offset, where the fast pairs have not wrapped round
    return q, k, offsets, choice(generator, [10_000.0, 1_000_000.0]), choice(generator, [1.0, 8.0])


def scores_by_offset_reference(q: torch.Tensor, k: torch.Tensor, offsets: torch.Tensor, theta: float,
                               rope_scale: float = 1.0) -> torch.Tensor:
    """``[offset, n_q, n_k]``: the dot product of each query, rotated by RoPE as if it sat ``offset``
    positions after the key, with each key (left unrotated, as if at position 0).

    q: ``[n_q, d_head]`` and k: ``[n_k, d_head]``, normalised but not yet rotated. Since
    ``rot(q, p) . rot(k, p - offset) = rot(q, offset) . k``, this is the score at any pair of
    positions that far apart. Gemma's RoPE: dimension ``i`` pairs with ``i + d_head/2`` and turns by
    ``position / rope_scale * theta ** (-2i / d_head)``.
    """
    from gemma_lab.model import apply_rotary, rotary_cos_sin  # the model's own RoPE

    cos, sin = rotary_cos_sin(offsets[None], q.shape[-1], theta, rope_scale, q.dtype)  # [1, offset, d_head]
    rotated = apply_rotary(q[None, None].expand(1, len(offsets), -1, -1), cos, sin)[0]  # [offset, n_q, d_head]
    return rotated @ k.T


def _offset_key_rotated(q, k, offsets, theta, rope_scale=1.0):
    return scores_by_offset_reference(k, q, offsets, theta, rope_scale).transpose(-1, -2)


def _offset_interleaved_pairs(q, k, offsets, theta, rope_scale=1.0):
    d_head = q.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
    angles = offsets.float()[:, None] / rope_scale * inv_freq  # [offset, d_head/2]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    even, odd = q[..., 0::2], q[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
    return rotated @ k.T


def _offset_no_rope_scale(q, k, offsets, theta, rope_scale=1.0):
    return scores_by_offset_reference(q, k, offsets, theta, 1.0)


def _offset_half_exponent(q, k, offsets, theta, rope_scale=1.0):
    return scores_by_offset_reference(q, k, offsets, theta ** 0.5, rope_scale)  # theta ** (-i / d_head)


def _offset_not_rotated(q, k, offsets, theta, rope_scale=1.0):
    return (q @ k.T).expand(len(offsets), -1, -1)


exercise(
    "scores_by_offset",
    make_inputs=scores_by_offset_inputs,
    reference=scores_by_offset_reference,
    mistakes={
        "That is the score of a key *after* the query (offset -d): rotate the query by the offset and "
        "leave the key alone, since rot(q, p) . rot(k, p - d) = rot(q, d) . k.": _offset_key_rotated,
        "Gemma's RoPE pairs dimension i with i + d_head/2 (the two halves: rotate_half), not the "
        "neighbours 2i and 2i+1.": _offset_interleaved_pairs,
        "Divide the positions by rope_scale before taking angles (linear position interpolation, "
        "Gemma 3's global layers from 4B up).": _offset_no_rope_scale,
        "The frequency of pair i is theta ** (-2i / d_head), i = 0 .. d_head/2 - 1: with "
        "theta ** (-i / d_head) the angles turn too fast.": _offset_half_exponent,
        "The scores must change with the offset: rotate the query by its angle (cos and sin of "
        "offset * frequency) before the dot product.": _offset_not_rotated,
    },
    notebook=NOTEBOOK,
)
