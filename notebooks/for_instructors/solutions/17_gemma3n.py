"""Solutions to the exercises of notebook 17 (Gemma 3n: AltUp, LAuReL, activation sparsity).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch
from einops import einsum


def gaussian_topk(gate, sparsity):
    """Keep what lies above mean + std * Phi^-1(sparsity) over d_mlp, shifted down by that cutoff."""
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(sparsity, dtype=torch.float32)).to(gate.dtype)
    cutoff = gate.mean(dim=-1, keepdim=True) + gate.std(dim=-1, keepdim=True, unbiased=False) * z
    return torch.relu(gate - cutoff)


def altup_predict(streams, coefs):
    """streams [batch, pos, stream, d_model], coefs [batch, pos, out, in] -> every copy predicted."""
    mixed = einsum(streams, coefs, "batch pos inp d_model, batch pos out inp -> batch pos out d_model")
    return streams + mixed
