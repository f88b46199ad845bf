"""Exercises of lesson 05, the GeGLU MLP and the transformer block (``notebooks/05_mlp_and_block.ipynb``).

Exercises: geglu, transformer_block. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma_lab import model as gemma_model
from gemma_lab.config import GemmaConfig
from gemma_lab.exercises._trials import _dtype, _randn, _randomise, _small_config
from gemma_lab.exercises.checking import choice, exercise, randint

__all__ = [
    "geglu",
    "transformer_block",
]

NOTEBOOK = "05_mlp_and_block"


def geglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """``down(gelu_tanh(gate(x)) * up(x))`` with ``nn.Linear`` weights, by ``gemma_lab.model.MLP``."""
    d_mlp, d_model = w_gate.shape
    cfg = GemmaConfig(family=1, vocab_size=1, d_model=d_model, n_layers=1, n_heads=1, n_kv_heads=1, d_head=2,
                      d_mlp=d_mlp)
    mlp = gemma_model.MLP(cfg).to(w_gate.dtype)
    for linear, weight in ((mlp.gate_proj, w_gate), (mlp.up_proj, w_up), (mlp.down_proj, w_down)):
        linear.weight.data.copy_(weight)
    return mlp(x)


def _geglu_inputs(generator: torch.Generator) -> tuple:
    dtype = _dtype(generator)
    d_model, d_mlp = choice(generator, [8, 16, 24]), choice(generator, [12, 32, 48])
    batch, pos = randint(generator, 1, 3), randint(generator, 1, 5)
    x = _randn(generator, batch, pos, d_model, dtype=dtype)
    scale = d_model ** -0.5 * 2
    return (x, _randn(generator, d_mlp, d_model, scale=scale, dtype=dtype),
            _randn(generator, d_mlp, d_model, scale=scale, dtype=dtype),
            _randn(generator, d_model, d_mlp, scale=d_mlp ** -0.5, dtype=dtype))


def _geglu_exact(x, w_gate, w_up, w_down):
    return (F.gelu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def _geglu_gelu_on_up(x, w_gate, w_up, w_down):
    return ((x @ w_gate.T) * F.gelu(x @ w_up.T, approximate="tanh")) @ w_down.T


def _geglu_no_gelu(x, w_gate, w_up, w_down):
    return ((x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def _geglu_added(x, w_gate, w_up, w_down):
    return (F.gelu(x @ w_gate.T, approximate="tanh") + (x @ w_up.T)) @ w_down.T


exercise(
    "geglu",
    make_inputs=_geglu_inputs,
    reference=geglu,
    mistakes={
        "Did you use exact GELU instead of the tanh approximation? Gemma uses F.gelu(gate, approximate='tanh').":
            _geglu_exact,
        "Did you apply GELU to the gate branch? gelu(x @ w_gate.T) * (x @ w_up.T): the up branch stays linear.":
            _geglu_gelu_on_up,
        "Did you forget the GELU on the gate branch?": _geglu_no_gelu,
        "Did you multiply the two branches? GeGLU gates: gelu(gate) * up, not gelu(gate) + up.": _geglu_added,
    },
    notebook=NOTEBOOK,
)


class _AttentionAt(nn.Module):
    """A package ``Attention`` with its positions fixed, called as ``attn(x)`` like any sublayer."""

    def __init__(self, attention: gemma_model.Attention, positions: torch.Tensor) -> None:
        super().__init__()
        self.attention = attention
        self.positions = positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.attention.cfg
        cos, sin = gemma_model.rotary_cos_sin(self.positions, cfg.d_head, cfg.rope_theta, 1.0, x.dtype)
        return self.attention(x, cos, sin, self.positions, torch.ones_like(self.positions, dtype=torch.bool))


class _Sublayer(nn.Module):
    """Lets a one-argument sublayer stand in for ``Block.attn`` (which is called with rotary arguments too)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, *rotary_and_positions, **cache_arguments) -> torch.Tensor:
        return self.inner(x)


def transformer_block(resid: torch.Tensor, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm,
                      post_mlp_norm) -> torch.Tensor:
    """One Gemma 2/3 block with the given sublayers, run by ``gemma_lab.model.Block`` itself."""
    d_model = resid.shape[-1]
    cfg = GemmaConfig(family=2, vocab_size=1, d_model=d_model, n_layers=1, n_heads=1, n_kv_heads=1, d_head=2,
                      d_mlp=1, sandwich_norms=True)
    block = gemma_model.Block(cfg, 0)
    block.ln1, block.attn, block.ln1_post = pre_attn_norm, _Sublayer(attn), post_attn_norm
    block.ln2, block.mlp, block.ln2_post = pre_mlp_norm, mlp, post_mlp_norm
    positions = torch.zeros(resid.shape[:2], dtype=torch.long)
    return block(resid, None, None, positions, None)


def _transformer_block_inputs(generator: torch.Generator) -> tuple:
    cfg = _small_config(generator, choice(generator, [2, 3]))
    batch, pos = randint(generator, 1, 2), randint(generator, 1, 6)
    attention = _randomise(gemma_model.Attention(cfg, 0), generator)
    attn = _AttentionAt(attention, torch.arange(pos)[None].repeat(batch, 1))
    mlp = _randomise(gemma_model.MLP(cfg), generator)
    norms = [_randomise(gemma_model.RMSNorm(cfg.d_model, cfg.norm_eps), generator) for _ in range(4)]
    resid = _randn(generator, batch, pos, cfg.d_model, scale=3.0)
    return (resid, attn, mlp, *norms)


def _block_post_norm_on_stream(resid, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm):
    resid = post_attn_norm(resid + attn(pre_attn_norm(resid)))
    return post_mlp_norm(resid + mlp(pre_mlp_norm(resid)))


def _block_no_residual(resid, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm):
    resid = post_attn_norm(attn(pre_attn_norm(resid)))
    return post_mlp_norm(mlp(pre_mlp_norm(resid)))


def _block_gemma1(resid, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm):
    resid = resid + attn(pre_attn_norm(resid))
    return resid + mlp(pre_mlp_norm(resid))


def _block_parallel(resid, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm):
    return resid + post_attn_norm(attn(pre_attn_norm(resid))) + post_mlp_norm(mlp(pre_mlp_norm(resid)))


exercise(
    "transformer_block",
    make_inputs=_transformer_block_inputs,
    reference=transformer_block,
    mistakes={
        "Did you normalise the sublayer's output rather than the residual stream? The post-norm applies to "
        "attn(...) before it is added: resid + post_attn_norm(attn(pre_attn_norm(resid))).":
            _block_post_norm_on_stream,
        "Did you forget the residual connection? Each sublayer's output is added to the stream: resid = resid + ...":
            _block_no_residual,
        "Did you leave out the post-norms? Gemma 2 and 3 normalise each sublayer's output before adding it "
        "(the 'sandwich'); only Gemma 1 does without.": _block_gemma1,
        "Did you feed the MLP the stream from before attention? The MLP reads the stream after attention's "
        "output has been added.": _block_parallel,
    },
    notebook=NOTEBOOK,
)
