"""Solutions to the exercises of notebook 07 (generation, the KV cache and sampling).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then.
"""

import torch


def top_k_filter(logits, k):
    """Keep the k largest logits of each row; set the others to -inf."""
    k = min(k, logits.shape[-1])
    descending = torch.sort(logits, dim=-1, descending=True).values
    kth_largest = descending[..., k - 1 : k]  # [..., 1], broadcasts over vocab
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits, p):
    """Keep the smallest set of most likely tokens whose probabilities add up to at least p."""
    if p >= 1:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the more likely tokens
    remove_sorted = before >= p  # the total was already reached without this token
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))
