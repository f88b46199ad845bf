"""Exercises of lesson 09, attention patterns and induction heads (``notebooks/09_attention_patterns_and_induction.ipynb``).

Exercises: prev_token_score, induction_score. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch

from gemma_lab.exercises.checking import exercise, randint

__all__ = [
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
