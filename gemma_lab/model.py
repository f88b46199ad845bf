"""Gemma, written out: one file that reads top to bottom like the papers (Gemma 1, 2 and 3).

    tokens -> embed * sqrt(d_model) -> n_layers x Block -> RMSNorm -> x @ embed.T -> logits

    Block (Gemma 1):    x = x + Attn(RMSNorm(x));             x = x + MLP(RMSNorm(x))
    Block (Gemma 2/3):  x = x + RMSNorm(Attn(RMSNorm(x)));    x = x + RMSNorm(MLP(RMSNorm(x)))

Axis vocabulary (einops patterns, docstrings, hook tables and notebooks all use it):
    batch    sequences in the batch              pos      token positions (q_pos / k_pos in attention)
    d_model  residual stream width               vocab    token ids
    head     query heads                         kv_head  key/value heads
    group    query heads per kv_head, so that head = (kv_head group)
    d_head   width of one head                   d_mlp    width of one MLP branch

Differences between the generations are config fields, not subclasses: ``sandwich_norms``,
``qk_norm``, ``attn_softcap``/``final_softcap``, ``sliding_window`` with ``layer_types``, and the
RoPE bases. Gemma's numerics, at the line where they happen: RMSNorm computes in fp32 with gain
``(1 + w)``; the embedding scale is rounded to the weight dtype; GELU is the tanh approximation;
softmax runs in fp32. Reference: transformers' ``modeling_gemma{,2,3}.py`` (the parity oracle),
Google's gemma_pytorch, and ``docs/architecture.md``.

Every activation passes through a ``HookPoint`` (see ``hooks.py``). When no hook wants attention
scores or patterns, attention runs through torch's fused ``scaled_dot_product_attention``;
otherwise it runs the explicit einsum path below (the two are tested equal).

The model holds no tokenizer and no file paths, and never imports widgets or plotting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from gemma_lab.activation_cache import ActivationCache
from gemma_lab.config import GemmaConfig
from gemma_lab.hooks import HookedModule, HookPoint, NameFilter
from gemma_lab.kv_cache import KVCache


class RMSNorm(nn.Module):
    """Root-mean-square norm with Gemma's gain ``1 + w`` (weights stored as offsets from 1)."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(width))
        self.hook_inv_rms = HookPoint()  # [..., 1] 1 / root-mean-square: the factor each vector is scaled by
        self.hook_normalized = HookPoint()  # [..., width] the output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 throughout, one cast back at the end: in bf16 the mean of squares loses too much.
        x_fp32 = x.float()
        inv_rms = self.hook_inv_rms(torch.rsqrt(x_fp32.pow(2).mean(dim=-1, keepdim=True) + self.eps))
        normalized = (x_fp32 * inv_rms) * (1.0 + self.weight.float())
        return self.hook_normalized(normalized.to(x.dtype))


def rotary_cos_sin(positions: torch.Tensor, d_head: int, theta: float, scale: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[batch, pos, d_head]`` of the rotation angle ``position / scale * theta**(-2i/d_head)``.

    Angles are computed in fp32 (in bf16, positions above 256 would already be rounded) and only
    then cast to the activation dtype, as the reference does.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float32, device=positions.device) / d_head))
    inv_freq = inv_freq / scale  # linear position interpolation (Gemma 3 global layers, 4B and up)
    angles = positions.float()[..., None] * inv_freq  # [batch, pos, d_head/2]
    angles = torch.cat([angles, angles], dim=-1)  # dimension i and i + d_head/2 share an angle
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of dimensions (i, i + d_head/2) of ``x [batch, pos, head, d_head]`` by its angle."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over the head axis
    return x * cos + rotated_half * sin


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, k_valid: torch.Tensor,
                   window: int | None) -> torch.Tensor:
    """``[batch, q_pos, k_pos]`` True where a query may attend to a key.

    Causal by absolute position; padding keys never; on sliding-window layers only the ``window``
    most recent positions, the query's own included (``q - k < window``).
    """
    q = q_positions[:, :, None]
    k = k_positions[:, None, :]
    allowed = k_valid[:, None, :] & (k <= q)
    if window is not None:
        allowed = allowed & (q - k < window)
    return allowed


class Attention(nn.Module):
    """Multi-query / grouped-query / multi-head attention with rotary embeddings."""

    def __init__(self, cfg: GemmaConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.window = cfg.sliding_window if cfg.is_local(layer) else None
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=False)
        # Hook points are declared in the order they fire, so hook_names() lists them that way.
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        # Gemma 3 normalises each query and key head before rotating it (replacing Gemma 2's softcap).
        self.q_norm = RMSNorm(cfg.d_head, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.d_head, cfg.norm_eps) if cfg.qk_norm else None
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head] after RoPE
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head] after RoPE
        self.hook_attn_scores_pre_softcap = HookPoint()  # [batch, head, q_pos, k_pos] scaled q.k
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos] softcapped and masked
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos] softmax
        self.hook_z = HookPoint()  # [batch, pos, head, d_head] pattern-weighted values
        self.hook_result = HookPoint()  # [batch, pos, head, d_model] per-head output; opt-in

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                valid: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        cfg = self.cfg
        q = rearrange(self.q_proj(x), "batch pos (head d_head) -> batch pos head d_head", head=cfg.n_heads)
        k = rearrange(self.k_proj(x), "batch pos (kv_head d_head) -> batch pos kv_head d_head", kv_head=cfg.n_kv_heads)
        v = rearrange(self.v_proj(x), "batch pos (kv_head d_head) -> batch pos kv_head d_head", kv_head=cfg.n_kv_heads)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = self.hook_rot_q(apply_rotary(q, cos, sin))
        k = self.hook_rot_k(apply_rotary(k, cos, sin))

        k = rearrange(k, "batch k_pos kv_head d_head -> batch kv_head k_pos d_head")
        v = rearrange(v, "batch k_pos kv_head d_head -> batch kv_head k_pos d_head")
        k_positions, k_valid = positions, valid
        if kv_cache is not None:  # attend to everything cached so far, this chunk included
            seen = kv_cache.update(self.layer, k, v, positions, valid)
            k, v, k_positions, k_valid = seen.keys, seen.values, seen.positions, seen.valid
        allowed = attention_mask(positions, k_positions, k_valid, self.window)

        if self._wants_explicit_scores():
            z = self._explicit_attention(q, k, v, allowed)
        else:
            z = self._fused_attention(q, k, v, allowed)
        z = self.hook_z(z)

        out = self.o_proj(rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))
        if self.hook_result.has_hooks:  # per-head contributions (they sum to out): only when someone asks
            w_o = rearrange(self.o_proj.weight, "d_model (head d_head) -> head d_head d_model", head=cfg.n_heads)
            result = einsum(z, w_o, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
            # Add only what the hooks changed: an identity hook then leaves out bit-identical.
            out = out + (self.hook_result(result.clone()) - result).sum(dim=2)
        return out

    def _wants_explicit_scores(self) -> bool:
        # The fused kernel cannot softcap and never materialises scores or patterns.
        return (self.cfg.attn_softcap is not None or self.hook_attn_scores_pre_softcap.has_hooks
                or self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks)

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            allowed: torch.Tensor) -> torch.Tensor:
        """softmax(softcap(q.k * scale) + mask) @ v, each step a named tensor."""
        cfg = self.cfg
        # Grouped-query attention by definition: each kv_head serves a group of query heads.
        q = rearrange(q, "batch q_pos (kv_head group) d_head -> batch kv_head group q_pos d_head", kv_head=cfg.n_kv_heads)
        scores = einsum(q, k, "batch kv_head group q_pos d_head, batch kv_head k_pos d_head -> batch kv_head group q_pos k_pos")
        scores = rearrange(scores, "batch kv_head group q_pos k_pos -> batch (kv_head group) q_pos k_pos")
        scores = self.hook_attn_scores_pre_softcap(scores * cfg.attn_scale)
        if cfg.attn_softcap is not None:  # Gemma 2 bounds scores smoothly to (-50, 50)
            scores = cfg.attn_softcap * torch.tanh(scores / cfg.attn_softcap)
        # Masked entries get the dtype's lowest value (not -inf) so a fully padded row stays finite.
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        pattern = rearrange(pattern, "batch (kv_head group) q_pos k_pos -> batch kv_head group q_pos k_pos", kv_head=cfg.n_kv_heads)
        z = einsum(pattern, v, "batch kv_head group q_pos k_pos, batch kv_head k_pos d_head -> batch q_pos kv_head group d_head")
        return rearrange(z, "batch q_pos kv_head group d_head -> batch q_pos (kv_head group) d_head")

    def _fused_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         allowed: torch.Tensor) -> torch.Tensor:
        """The same computation in torch's fused kernel (no scores materialised)."""
        q = rearrange(q, "batch q_pos head d_head -> batch head q_pos d_head")
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)[:, None]
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.cfg.attn_scale,
                                           enable_gqa=self.cfg.group_size > 1)
        return rearrange(z, "batch head q_pos d_head -> batch q_pos head d_head")


class MLP(nn.Module):
    """GeGLU: ``down(gelu(gate(x)) * up(x))``."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp] gate branch, before GELU
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp] up branch
        self.hook_post = HookPoint()  # [batch, pos, d_mlp] the neurons: gelu(gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.hook_pre(self.gate_proj(x))
        up = self.hook_pre_linear(self.up_proj(x))
        neurons = self.hook_post(F.gelu(gate, approximate=self.approximate) * up)
        return self.down_proj(neurons)


class Block(nn.Module):
    """One transformer layer: attention then MLP, each read from and added to the residual stream."""

    def __init__(self, cfg: GemmaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        # Submodules and hook points in the order they run, so hook_names() lists them that way.
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)  # pre-attention norm
        self.attn = Attention(cfg, layer)
        self.ln1_post = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.sandwich_norms else None  # post-attention
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model] what attention adds to the stream
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)  # pre-MLP norm
        self.mlp = MLP(cfg)
        self.ln2_post = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.sandwich_norms else None  # post-MLP
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model] what the MLP adds to the stream
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                valid: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        resid_pre = self.hook_resid_pre(resid)
        attn_out = self.attn(self.ln1(resid_pre), cos, sin, positions, valid, kv_cache)
        if self.ln1_post is not None:
            attn_out = self.ln1_post(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        mlp_out = self.mlp(self.ln2(resid_mid))
        if self.ln2_post is not None:
            mlp_out = self.ln2_post(mlp_out)
        return self.hook_resid_post(resid_mid + self.hook_mlp_out(mlp_out))


class Gemma(HookedModule):
    """A Gemma 1, 2 or 3 text model: ``model(tokens) -> logits [batch, pos, vocab]``."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # also the unembedding (tied)
        self.hook_embed = HookPoint()  # [batch, pos, d_model] after the sqrt(d_model) scale
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.hook_logits = HookPoint()  # [batch, pos, vocab] after Gemma 2's final softcap
        self.setup_hooks()

    def forward(self, tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                last_position_only: bool = False) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` for ``tokens [batch, pos]`` (a 1-D tensor is one sequence).

        attention_mask: ``[batch, pos]``, 0 (False) for left padding. Positions then count only real
            tokens, so a padded row gives the logits of the same row unpadded.
        positions: ``[batch, pos]`` absolute positions; by default continued from ``kv_cache``.
        kv_cache: keys/values of earlier tokens; this pass reads them and appends its own.
        last_position_only: unembed only the last position (``[batch, 1, vocab]``): generation needs
            nothing else, and on a 256k vocabulary the unembedding dominates a prompt pass.
        """
        tokens = self._check_tokens(tokens)
        valid = self._check_mask(attention_mask, tokens)
        if positions is None:
            start = kv_cache.next_positions()[:, None] if kv_cache is not None else 0
            positions = (start + valid.long().cumsum(dim=-1) - 1).clamp(min=0)
        else:
            self._check_positions(positions, tokens)
        self.run_context.positions = positions

        weight = self.embed.weight
        # sqrt(d_model) is rounded to the weight dtype first (34.0, not 33.94, for d_model=1152 in bf16).
        embed_scale = torch.tensor(self.cfg.embed_scale, dtype=torch.float32).to(weight.dtype)
        resid = self.hook_embed(self.embed(tokens) * embed_scale)

        rotary = {}  # one (cos, sin) per distinct RoPE setting: global and local layers differ in Gemma 3
        for block in self.blocks:
            rope = self.cfg.rope_for_layer(block.layer)
            if rope not in rotary:
                rotary[rope] = rotary_cos_sin(positions, self.cfg.d_head, *rope, dtype=weight.dtype)
            resid = block(resid, *rotary[rope], positions, valid, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(valid)

        return self.hook_logits(self.unembed(resid, last_position_only=last_position_only))

    def unembed(self, resid: torch.Tensor, *, last_position_only: bool = False) -> torch.Tensor:
        """Logits ``[..., vocab]`` from a residual-stream state ``[..., d_model]``: the final RMSNorm,
        the tied unembedding and (Gemma 2) the final softcap.

        ``forward`` ends with it; the logit lens applies it to the stream after any layer. It runs
        ``ln_final``, so hooks on ``ln_final`` see every call.
        """
        normalized = self.ln_final(resid)
        if last_position_only:
            # Unembed the last row as a 2-D matrix: a [batch, 1, d_model] slice keeps the long
            # stride of its parent, which sends torch 2.13's bf16 CPU matmul down a path ~50x slower.
            logits = F.linear(normalized[:, -1], self.embed.weight)[:, None]
        else:
            logits = F.linear(normalized, self.embed.weight)  # unembed with the embedding matrix itself
        if self.cfg.final_softcap is not None:  # Gemma 2 bounds logits smoothly to (-30, 30)
            logits = self.cfg.final_softcap * torch.tanh(logits / self.cfg.final_softcap)
        return logits

    def run_with_cache(self, *args, names_filter: NameFilter = None, device: torch.device | str | None = None,
                       incl_bwd: bool = False, remove_batch_dim: bool = False,
                       **kwargs) -> tuple[torch.Tensor, ActivationCache]:
        """Logits and an ``ActivationCache`` of the requested activations (``cache["pattern", 3]``).

        Arguments as ``HookedModule.run_with_cache``, which stores the activations in a plain dict.
        """
        logits, store = super().run_with_cache(*args, names_filter=names_filter, device=device,
                                               incl_bwd=incl_bwd, remove_batch_dim=remove_batch_dim, **kwargs)
        return logits, ActivationCache(store, self, has_batch_dim=not remove_batch_dim)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a LongTensor [batch, pos], got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must have shape [batch, pos] with pos >= 1, got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the model's max_seq_len of {self.cfg.max_seq_len}")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= self.cfg.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary (valid ids: 0 to {self.cfg.vocab_size - 1})")
        return tokens.long()

    def _check_positions(self, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        if not isinstance(positions, torch.Tensor) or positions.shape != tokens.shape:
            shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise ValueError(f"positions has shape {shape}; tokens have {tuple(tokens.shape)}")
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise TypeError(f"positions must be integers, got dtype {positions.dtype}")
        if int(positions.min()) < 0 or int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"positions must lie in 0 to {self.cfg.max_seq_len - 1} (max_seq_len), "
                             f"got {int(positions.min())} to {int(positions.max())}")
        if bool((positions.diff(dim=-1) < 0).any()):  # RoPE and the causal mask assume reading order
            raise ValueError("positions must not decrease along a sequence")

    def _check_mask(self, attention_mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        if attention_mask.ndim == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; tokens have {tuple(tokens.shape)}")
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token), got other values")
        return attention_mask.bool()

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def n_params(self) -> int:
        """Parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (f"family=Gemma {cfg.family}, layers={cfg.n_layers}, d_model={cfg.d_model}, "
                f"heads={cfg.n_heads} ({cfg.attention_kind}, kv_heads={cfg.n_kv_heads}), d_head={cfg.d_head}")


def init_weights(model: Gemma, *, seed: int = 0, std: float = 0.02) -> Gemma:
    """Random weights for experiments and tests: normal(0, std) matrices, norm offsets 0 (gain 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:  # every 1-D parameter is a norm gain offset
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model

