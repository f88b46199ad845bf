"""Exercises of lesson 06, the full forward pass (``notebooks/06_full_forward_pass.ipynb``).

Exercises: attention_layer, gemma_forward. Each has its reference (the
package's code, with the exercise's signature), its trial inputs, and its usual mistakes written out
as the wrong functions they describe.
"""

from __future__ import annotations

import torch
from einops import rearrange

from gemma_lab import model as gemma_model
from gemma_lab.config import GLOBAL, LOCAL, GemmaConfig
from gemma_lab.exercises._trials import _SCALE_HINT, _grouped, _randn, _randomise, _small_config
from gemma_lab.exercises.checking import choice, exercise, randint, trial_number
from gemma_lab.exercises.lesson02_embeddings_and_rmsnorm import embed, rms_norm
from gemma_lab.exercises.lesson03_rotary_embeddings import apply_rotary
from gemma_lab.exercises.lesson04_attention import attention_mask
from gemma_lab.exercises.lesson05_mlp_and_block import geglu

__all__ = [
    "attention_layer",
    "gemma_forward",
]

NOTEBOOK = "06_full_forward_pass"


def attention_layer(attn: gemma_model.Attention, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A whole attention sublayer (projections, q/k norm, RoPE, mask, attention, output projection):
    the package module ``attn`` called on ``x [batch, pos, d_model]`` at absolute ``positions``."""
    theta, scale = attn.cfg.rope_for_layer(attn.layer)
    cos, sin = gemma_model.rotary_cos_sin(positions, attn.cfg.d_head, theta, scale, x.dtype)
    return attn(x, cos, sin, positions, torch.ones_like(positions, dtype=torch.bool))


def _random_model_config(generator: torch.Generator, family: int, n_layers: int) -> GemmaConfig:
    if family == 1:
        layer_types = (GLOBAL,) * n_layers
    elif family == 2:
        layer_types = tuple(LOCAL if i % 2 == 0 else GLOBAL for i in range(n_layers))
    else:
        layer_types = tuple(GLOBAL if i == n_layers - 1 else LOCAL for i in range(n_layers))
    changes = dict(n_layers=n_layers, layer_types=layer_types)
    if family >= 2:
        changes.update(sliding_window=randint(generator, 2, 3))
    if family == 2:
        changes.update(attn_softcap=choice(generator, [5.0, 50.0]), final_softcap=choice(generator, [3.0, 30.0]))
    if family == 3:
        changes.update(rope_theta=1_000_000.0, rope_theta_local=10_000.0, rope_scale=choice(generator, [1.0, 8.0]))
    return _small_config(generator, family, **changes)


def _family(generator: torch.Generator) -> int:
    trial = trial_number(generator)
    return trial % 3 + 1 if trial < 3 else choice(generator, [1, 2, 3])


def _attention_layer_inputs(generator: torch.Generator) -> tuple:
    family = _family(generator)
    cfg = _random_model_config(generator, family, n_layers=2)
    layer = randint(generator, 0, 1) if trial_number(generator) >= 3 else 0
    attention = _randomise(gemma_model.Attention(cfg, layer), generator)
    batch, pos = randint(generator, 1, 2), randint(generator, 3, 8)
    x = _randn(generator, batch, pos, cfg.d_model)
    positions = torch.arange(pos)[None].repeat(batch, 1) + randint(generator, 0, 3)
    return attention, x, positions


def _attention_layer(attn, x, positions, *, local_rope=True, qk_norm=True, window=True, softcap=True,
                     scale=True) -> torch.Tensor:
    """The attention sublayer written out, with switches that reproduce common slips."""
    cfg = attn.cfg
    q = rearrange(x @ attn.q_proj.weight.T, "batch pos (head d_head) -> batch pos head d_head", head=cfg.n_heads)
    k = rearrange(x @ attn.k_proj.weight.T, "batch pos (kv_head d_head) -> batch pos kv_head d_head",
                  kv_head=cfg.n_kv_heads)
    v = rearrange(x @ attn.v_proj.weight.T, "batch pos (kv_head d_head) -> batch pos kv_head d_head",
                  kv_head=cfg.n_kv_heads)
    if qk_norm and attn.q_norm is not None:
        q, k = rms_norm(q, attn.q_norm.weight, cfg.norm_eps), rms_norm(k, attn.k_norm.weight, cfg.norm_eps)
    theta, rope_scale = cfg.rope_for_layer(attn.layer) if local_rope else (cfg.rope_theta, cfg.rope_scale)
    cos, sin = gemma_model.rotary_cos_sin(positions, cfg.d_head, theta, rope_scale, x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    allowed = attention_mask(positions, positions, attn.window if window else None)
    attn_scale = cfg.attn_scale if scale else cfg.d_head ** -0.5
    z = _grouped(q, k, v, allowed, attn_scale, cfg.attn_softcap if softcap else None)
    return rearrange(z, "batch pos head d_head -> batch pos (head d_head)") @ attn.o_proj.weight.T


def _attention_layer_global_rope(attn, x, positions):
    return _attention_layer(attn, x, positions, local_rope=False)


def _attention_layer_no_qk_norm(attn, x, positions):
    return _attention_layer(attn, x, positions, qk_norm=False)


def _attention_layer_no_window(attn, x, positions):
    return _attention_layer(attn, x, positions, window=False)


def _attention_layer_no_softcap(attn, x, positions):
    return _attention_layer(attn, x, positions, softcap=False)


def _attention_layer_head_dim_scale(attn, x, positions):
    return _attention_layer(attn, x, positions, scale=False)


_ROPE_HINT = ("Did you use each layer's own RoPE base? Gemma 3's sliding-window layers rotate with a different "
              "theta (and no position scaling): theta, scale = cfg.rope_for_layer(layer).")

exercise(
    "attention_layer",
    make_inputs=_attention_layer_inputs,
    reference=attention_layer,
    mistakes={
        _ROPE_HINT: _attention_layer_global_rope,
        "Did you apply q_norm and k_norm (Gemma 3) to queries and keys, per head and before RoPE?":
            _attention_layer_no_qk_norm,
        "Did you apply the sliding window on local layers? attn.window is the window (None on global layers).":
            _attention_layer_no_window,
        "Did you apply Gemma 2's attention softcap (cfg.attn_softcap) to the scores?": _attention_layer_no_softcap,
        _SCALE_HINT: _attention_layer_head_dim_scale,
    },
    notebook=NOTEBOOK,
)


def gemma_forward(model: gemma_model.Gemma, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]``: the package model itself."""
    return model(tokens)


def _gemma_forward_inputs(generator: torch.Generator) -> tuple:
    family = _family(generator)
    cfg = _random_model_config(generator, family, n_layers=randint(generator, 2, 3))
    model = _randomise(gemma_model.Gemma(cfg), generator).eval()
    tokens = torch.randint(0, cfg.vocab_size, (randint(generator, 1, 2), randint(generator, 1, 7)),
                           generator=generator)
    return model, tokens


def _gemma_forward(model, tokens, *, embed_scale=True, final_norm=True, final_softcap=True, local_rope=True,
                   sandwich=True) -> torch.Tensor:
    """The forward pass assembled from this module's pieces, with switches that reproduce common slips."""
    cfg = model.cfg
    weight = model.embed.weight
    resid = embed(tokens, weight) if embed_scale else weight[tokens]
    positions = torch.arange(tokens.shape[1])[None].expand(tokens.shape[0], -1)
    for block in model.blocks:
        attn_out = _attention_layer(block.attn, rms_norm(resid, block.ln1.weight, cfg.norm_eps), positions,
                                    local_rope=local_rope)
        if block.ln1_post is not None and sandwich:
            attn_out = rms_norm(attn_out, block.ln1_post.weight, cfg.norm_eps)
        resid = resid + attn_out
        mlp = block.mlp
        mlp_out = geglu(rms_norm(resid, block.ln2.weight, cfg.norm_eps), mlp.gate_proj.weight, mlp.up_proj.weight,
                        mlp.down_proj.weight)
        if block.ln2_post is not None and sandwich:
            mlp_out = rms_norm(mlp_out, block.ln2_post.weight, cfg.norm_eps)
        resid = resid + mlp_out
    if final_norm:
        resid = rms_norm(resid, model.ln_final.weight, cfg.norm_eps)
    logits = resid @ weight.T
    if cfg.final_softcap is not None and final_softcap:
        logits = cfg.final_softcap * torch.tanh(logits / cfg.final_softcap)
    return logits


def _gemma_forward_unscaled(model, tokens):
    return _gemma_forward(model, tokens, embed_scale=False)


def _gemma_forward_no_final_norm(model, tokens):
    return _gemma_forward(model, tokens, final_norm=False)


def _gemma_forward_no_final_softcap(model, tokens):
    return _gemma_forward(model, tokens, final_softcap=False)


def _gemma_forward_global_rope(model, tokens):
    return _gemma_forward(model, tokens, local_rope=False)


def _gemma_forward_no_post_norms(model, tokens):
    return _gemma_forward(model, tokens, sandwich=False)


exercise(
    "gemma_forward",
    make_inputs=_gemma_forward_inputs,
    reference=gemma_forward,
    mistakes={
        "Did you multiply the embeddings by sqrt(d_model) (rounded to the weight dtype)?": _gemma_forward_unscaled,
        "Did you apply the final RMSNorm (model.ln_final) before unembedding?": _gemma_forward_no_final_norm,
        "Did you apply Gemma 2's final logit softcap, cfg.final_softcap * tanh(logits / cfg.final_softcap)?":
            _gemma_forward_no_final_softcap,
        _ROPE_HINT: _gemma_forward_global_rope,
        "Did you apply the post-norms (block.ln1_post, block.ln2_post) of Gemma 2 and 3?":
            _gemma_forward_no_post_norms,
    },
    notebook=NOTEBOOK,
)
