"""Random-weight checkpoints written by transformers itself: the format users download.

Norm weights are perturbed away from zero (Gemma stores gains as offsets from 1, so zeros would
hide a missing "+1"), and weights are scaled so logits are well spread.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

HF_CLASSES = {
    1: (transformers.GemmaConfig, transformers.GemmaForCausalLM),
    2: (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    3: (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    4: (transformers.Gemma4TextConfig, transformers.Gemma4ForCausalLM),
    "3n": (transformers.Gemma3nTextConfig, transformers.Gemma3nForCausalLM),
}

SMALL = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512)


# Gemma 4: wider global heads (32), sliding window 8, one global layer in three so that KV sharing has
# a source of each kind.
GEMMA4_SMALL = dict(SMALL, num_hidden_layers=6, global_head_dim=32, sliding_window=8,
                    layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                    hidden_size_per_layer_input=0)

# Gemma 4 layouts on top of GEMMA4_SMALL (tests/test_gemma4.py runs all of them; the notebook tests run
# lesson 16 on the mixture of experts): K=V global layers with one kv head, and the mixture of experts
# (4 experts, 2 per token, with K=V and the final softcap).
GEMMA4_K_EQ_V = dict(attention_k_eq_v=True, num_global_key_value_heads=1)
GEMMA4_MOE = dict(GEMMA4_K_EQ_V, enable_moe_block=True, num_experts=4, top_k_experts=2,
                  moe_intermediate_size=32, final_logit_softcapping=30.0)

# Gemma 3n: sliding window 8, one global layer in three, the last two layers KV-shared, per-layer inputs 8
# wide from a table smaller than the vocabulary (ids 280-299 read row 0, as in the real 262400 / 262144),
# LAuReL rank 8, and three sparse MLPs (95%, 95%, 50%).
GEMMA3N_SMALL = dict(SMALL, num_hidden_layers=6, sliding_window=8,
                     layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                     hidden_size_per_layer_input=8, vocab_size_per_layer_input=280, num_kv_shared_layers=2,
                     laurel_rank=8, activation_sparsity_pattern=[0.95, 0.95, 0.5, 0.0, 0.0, 0.0])


def hf_config(family: int | str, **overrides):
    config_class, _ = HF_CLASSES[family]
    kwargs = dict(SMALL)
    if family == 4:
        return config_class(**dict(GEMMA4_SMALL, **overrides))
    if family == "3n":
        return config_class(**dict(GEMMA3N_SMALL, **overrides))
    if family >= 2:
        kwargs.update(query_pre_attn_scalar=16, sliding_window=8)
    kwargs.update(overrides)
    return config_class(**kwargs)


def perturb(model: torch.nn.Module, seed: int = 0, weight_std: float = 0.08) -> torch.nn.Module:
    """Random matrices and non-zero norm offsets, deterministic from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * weight_std)
    return model


def perturb_gemma4(model: torch.nn.Module, seed: int = 0, weight_std: float = 0.08) -> torch.nn.Module:
    """Gemma 4 (and 3n) stores norm gains themselves (not offsets from 1): gains 1 +- 0.3, so that a "+1" where
    none belongs, or a gain left out, shows; random matrices; layer_scalar buffers in [0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(1.0 + torch.randn(param.shape, generator=generator) * 0.3)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * weight_std)
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model


def hf_model(family: int, seed: int = 0, attn_implementation: str = "eager", **overrides):
    _, model_class = HF_CLASSES[family]
    config = hf_config(family, **overrides)
    torch.manual_seed(seed)
    model = model_class._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return (perturb_gemma4 if family in (4, "3n") else perturb)(model, seed).eval()


def write_checkpoint(folder: Path, family: int, seed: int = 0, max_shard_size: str | None = None,
                     **overrides) -> Path:
    """Save a random model with ``save_pretrained`` (sharded when ``max_shard_size`` is given)."""
    model = hf_model(family, seed, **overrides)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


def load_hf(folder: Path, dtype=torch.float32, attn_implementation: str = "eager"):
    _, model_class = next((c for f, c in HF_CLASSES.items()
                           if c[1].__name__ in _architectures(folder)), HF_CLASSES[1])
    return model_class.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation).eval()


def _architectures(folder: Path) -> list[str]:
    import json

    return json.loads((Path(folder) / "config.json").read_text()).get("architectures", [])
