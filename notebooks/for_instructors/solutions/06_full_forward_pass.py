"""Solutions to the exercises of notebook 06 (the full forward pass).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell,
so a solution uses only what the notebook has imported by then: here also the pieces of lessons
02-05 (embed, rms_norm, rotary_cos_sin, apply_rotary, attention_mask, grouped_attention, geglu).
"""

import torch
from einops import rearrange

from gemma_lab.exercises.lesson02_embeddings_and_rmsnorm import embed, rms_norm
from gemma_lab.exercises.lesson03_rotary_embeddings import apply_rotary, rotary_cos_sin
from gemma_lab.exercises.lesson04_attention import attention_mask, grouped_attention
from gemma_lab.exercises.lesson05_mlp_and_block import geglu


def attention_layer(attn, x, positions):
    """The attention sublayer of `attn` (a gemma_lab Attention) on x [batch, pos, d_model]."""
    cfg = attn.cfg
    q = rearrange(x @ attn.q_proj.weight.T, "batch pos (head d_head) -> batch pos head d_head", head=cfg.n_heads)
    k = rearrange(x @ attn.k_proj.weight.T, "batch pos (kv_head d_head) -> batch pos kv_head d_head",
                  kv_head=cfg.n_kv_heads)
    v = rearrange(x @ attn.v_proj.weight.T, "batch pos (kv_head d_head) -> batch pos kv_head d_head",
                  kv_head=cfg.n_kv_heads)
    if cfg.qk_norm:  # Gemma 3
        q = rms_norm(q, attn.q_norm.weight, cfg.norm_eps)
        k = rms_norm(k, attn.k_norm.weight, cfg.norm_eps)
    theta, scale = cfg.rope_for_layer(attn.layer)
    cos, sin = rotary_cos_sin(positions / scale, cfg.d_head, theta)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    allowed = attention_mask(positions, positions, attn.window)
    z = grouped_attention(q, k, v, allowed, cfg.query_pre_attn_scalar or cfg.d_head, cfg.attn_softcap)
    return rearrange(z, "batch pos head d_head -> batch pos (head d_head)") @ attn.o_proj.weight.T


def gemma_forward(model, tokens):
    """Logits [batch, pos, vocab] of a gemma_lab Gemma on tokens [batch, pos]."""
    cfg = model.cfg
    resid = embed(tokens, model.embed.weight)
    positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    for block in model.blocks:
        attn_out = attention_layer(block.attn, rms_norm(resid, block.ln1.weight, cfg.norm_eps), positions)
        if cfg.sandwich_norms:  # Gemma 2 and 3
            attn_out = rms_norm(attn_out, block.ln1_post.weight, cfg.norm_eps)
        resid = resid + attn_out
        mlp = block.mlp
        mlp_in = rms_norm(resid, block.ln2.weight, cfg.norm_eps)
        mlp_out = geglu(mlp_in, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        if cfg.sandwich_norms:
            mlp_out = rms_norm(mlp_out, block.ln2_post.weight, cfg.norm_eps)
        resid = resid + mlp_out
    logits = rms_norm(resid, model.ln_final.weight, cfg.norm_eps) @ model.embed.weight.T
    if cfg.final_softcap is not None:  # Gemma 2
        logits = cfg.final_softcap * torch.tanh(logits / cfg.final_softcap)
    return logits
