"""Gemma, written out: one file that reads top to bottom like the papers (Gemma 1, 2, 3, 3n and 4).

    tokens -> embed * sqrt(d_model) -> n_layers x Block -> RMSNorm -> x @ embed.T -> logits

    Block (Gemma 1):    x = x + Attn(RMSNorm(x));             x = x + MLP(RMSNorm(x))
    Block (Gemma 2/3):  x = x + RMSNorm(Attn(RMSNorm(x)));    x = x + RMSNorm(MLP(RMSNorm(x)))
    Block (Gemma 4):    as Gemma 3, then x = x + PerLayerInput(x, ple[layer]) (E2B/E4B);  x = x * layer_scalar
                        (26B-A4B: the MLP's output is norm(MLP) + norm(Experts), see gemma4_parts.py)
    Block (Gemma 3n):   on 4 copies of the stream: predict the copies; on the active one x:
                        x = (x + RMSNorm(Attn(RMSNorm(x))) + LAuReL(RMSNorm(x))) / sqrt(2);  x = x + RMSNorm(MLP(RMSNorm(x)))
                        then correct every copy by x's change, and add PerLayerInput to copies 1..3 (gemma3n_parts.py)

Axis vocabulary (einops patterns, docstrings, hook tables and notebooks all use it):
    batch    sequences in the batch              pos      token positions (q_pos / k_pos in attention)
    d_model  residual stream width               vocab    token ids
    head     query heads                         kv_head  key/value heads
    group    query heads per kv_head, so that head = (kv_head group)
    d_head   width of one head                   d_mlp    width of one MLP branch
    Gemma 4: layer, d_per_layer (per-layer embeddings); expert, top_k (chosen experts per token)
    Gemma 3n: stream (AltUp's parallel copies of the residual stream; one is "active")

Differences between the generations are config fields, not subclasses: ``sandwich_norms``,
``qk_norm``, ``attn_softcap``/``final_softcap``, ``sliding_window`` with ``layer_types``, and the
RoPE bases. Gemma 4's additions are config fields too (per-layer head widths, K=V, KV sharing,
partial RoPE); its new modules (per-layer inputs, experts) live in ``gemma4_parts.py``, and Gemma
3n's (AltUp, LAuReL, activation sparsity) in ``gemma3n_parts.py``. Gemma's
numerics, at the line where they happen: RMSNorm computes in fp32 with gain ``(1 + w)`` (Gemma 4:
``w``, as in Gemma 3n); the embedding scale is rounded to the weight dtype; GELU is the tanh approximation;
softmax runs in fp32. Reference: transformers' ``modeling_gemma{,2,3,4}.py`` (the parity oracle),
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

from gemma_lab import gemma3n_parts, gemma4_parts
from gemma_lab.activation_cache import ActivationCache
from gemma_lab.config import GemmaConfig
from gemma_lab.hooks import HookedModule, HookPoint, NameFilter
from gemma_lab.kv_cache import KVCache, LayerKV


class RMSNorm(nn.Module):
    """Root-mean-square norm with Gemma's gain ``1 + w`` (weights stored as offsets from 1).

    Gemma 4 stores the gain itself (``gain_offset=False``: gain ``w``), and normalises its values
    and its router input without any gain (``learned=False``).
    """

    def __init__(self, width: int, eps: float, *, gain_offset: bool = True, learned: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.gain_offset = gain_offset
        self.weight = nn.Parameter(torch.zeros(width) if gain_offset else torch.ones(width)) if learned else None
        self.hook_inv_rms = HookPoint()  # [..., 1] 1 / root-mean-square: the factor each vector is scaled by
        self.hook_normalized = HookPoint()  # [..., width] the output

    def gain(self) -> torch.Tensor | None:
        """The fp32 factor the normalised vector is multiplied by: ``1 + w``, ``w`` (Gemma 4) or None."""
        if self.weight is None:
            return None
        return 1.0 + self.weight.float() if self.gain_offset else self.weight.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 throughout, one cast back at the end: in bf16 the mean of squares loses too much.
        x_fp32 = x.float()
        inv_rms = self.hook_inv_rms(torch.rsqrt(x_fp32.pow(2).mean(dim=-1, keepdim=True) + self.eps))
        normalized = x_fp32 * inv_rms
        if self.weight is not None:
            normalized = normalized * self.gain()
        return self.hook_normalized(normalized.to(x.dtype))


def rotary_cos_sin(positions: torch.Tensor, d_head: int, theta: float, scale: float,
                   dtype: torch.dtype, fraction: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[batch, pos, d_head]`` of the rotation angle ``position / scale * theta**(-2i/d_head)``.

    Angles are computed in fp32 (in bf16, positions above 256 would already be rounded) and only
    then cast to the activation dtype, as the reference does. ``fraction < 1`` is Gemma 4's
    "proportional" RoPE: only the first ``fraction * d_head / 2`` pairs rotate (with the frequencies
    they would have in a fully rotating head); the other pairs get angle 0 and pass unchanged.
    """
    n_rotated = int(fraction * d_head // 2)
    exponents = torch.arange(0, 2 * n_rotated, 2, dtype=torch.float32, device=positions.device) / d_head
    inv_freq = 1.0 / (theta ** exponents)
    inv_freq = torch.cat([inv_freq, inv_freq.new_zeros(d_head // 2 - n_rotated)])
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


class TiedEmbedding(nn.Embedding):
    """The token embedding, which Gemma also uses, transposed, as its unembedding."""

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``x @ weight.T`` (``quantize.Int8Embedding`` does the same from int8 rows)."""
        return F.linear(x, self.weight)


class Attention(nn.Module):
    """Multi-query / grouped-query / multi-head attention with rotary embeddings."""

    def __init__(self, cfg: GemmaConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.window = cfg.sliding_window if cfg.is_local(layer) else None
        # Gemma 1-3: the same on every layer. Gemma 4: wider heads (and K=V models fewer kv heads) on global layers.
        self.d_head, self.n_kv_heads = cfg.d_head_for(layer), cfg.n_kv_heads_for(layer)
        self.n_heads = cfg.n_heads  # both head counts are per rank under tensor parallelism (tensor_parallel.py)
        # Tensor parallel with k/v replicated (fewer kv heads than ranks): the kv heads this rank's queries read.
        self.kv_heads_kept: slice | list[int] | None = None
        # Gemma 4 KV sharing: this layer attends to the keys/values of layer `kv_source` and has none of its own.
        self.kv_source = cfg.kv_source(layer)
        owns_kv = self.kv_source == layer
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * self.d_head, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_heads * self.d_head, bias=False) if owns_kv else None
        # Gemma 4 K=V global layers have no v_proj: the key projection serves as values too.
        self.v_proj = (nn.Linear(cfg.d_model, self.n_kv_heads * self.d_head, bias=False)
                       if owns_kv and cfg.has_v_proj(layer) else None)
        self.o_proj = nn.Linear(cfg.n_heads * self.d_head, cfg.d_model, bias=False)
        # Hook points are declared in the order they fire, so hook_names() lists them that way.
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        if owns_kv:
            self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
            self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        # Gemma 3 normalises each query and key head before rotating it (replacing Gemma 2's softcap).
        norm_kind = dict(gain_offset=cfg.norm_gain_offset)  # gain 1 + w; Gemma 4: w
        self.q_norm = RMSNorm(self.d_head, cfg.norm_eps, **norm_kind) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.d_head, cfg.norm_eps, **norm_kind) if cfg.qk_norm and owns_kv else None
        # Gemma 3n and 4 also normalise values, without a gain.
        self.v_norm = RMSNorm(self.d_head, cfg.norm_eps, learned=False) if cfg.values_normed and owns_kv else None
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head] after RoPE
        if owns_kv:
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head] after RoPE
        else:  # what this layer reads from layer kv_source (after that layer's norms and RoPE)
            self.hook_shared_k = HookPoint()  # [batch, k_pos, kv_head, d_head]
            self.hook_shared_v = HookPoint()  # [batch, k_pos, kv_head, d_head]
        self.hook_attn_scores_pre_softcap = HookPoint()  # [batch, head, q_pos, k_pos] scaled q.k
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos] softcapped and masked
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos] softmax
        self.hook_z = HookPoint()  # [batch, pos, head, d_head] pattern-weighted values
        self.hook_result = HookPoint()  # [batch, pos, head, d_model] per-head output; opt-in

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                valid: torch.Tensor, kv_cache: KVCache | None = None,
                shared_kv: dict[int, LayerKV] | None = None) -> torch.Tensor:
        """``shared_kv``: Gemma 4's KV sharing, filled by the layers that others read from in this pass."""
        cfg = self.cfg
        owns_kv = self.kv_source == self.layer  # False on Gemma 4's KV-shared layers: they compute no k, v
        q = rearrange(self.q_proj(x), "batch pos (head d_head) -> batch pos head d_head", head=self.n_heads)
        q = self.hook_q(q)
        if owns_kv:
            k = rearrange(self.k_proj(x), "batch pos (kv_head d_head) -> batch pos kv_head d_head", d_head=self.d_head)
            k = self.hook_k(k)
            if self.v_proj is not None:
                v = rearrange(self.v_proj(x), "batch pos (kv_head d_head) -> batch pos kv_head d_head", d_head=self.d_head)
            else:  # Gemma 4 K=V: the raw key projection (before k_norm and RoPE) is also the value
                v = k
            v = self.hook_v(v)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.v_norm is not None:
            v = self.v_norm(v)
        q = self.hook_rot_q(apply_rotary(q, cos, sin))

        if owns_kv:
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
            if self.kv_heads_kept is not None:  # tensor parallel: all kv heads computed, this rank's kept
                k, v = k[:, :, self.kv_heads_kept], v[:, :, self.kv_heads_kept]
            k = rearrange(k, "batch k_pos kv_head d_head -> batch kv_head k_pos d_head")
            v = rearrange(v, "batch k_pos kv_head d_head -> batch kv_head k_pos d_head")
            seen = LayerKV(k, v, positions, valid)
            if kv_cache is not None:  # attend to everything cached so far, this chunk included
                seen = kv_cache.update(self.layer, k, v, positions, valid)
            if shared_kv is not None:  # Gemma 4: later layers may attend to exactly these
                shared_kv[self.layer] = seen
        else:
            seen = self._shared_kv(shared_kv)
        k, v = seen.keys, seen.values
        allowed = attention_mask(positions, seen.positions, seen.valid, self.window)

        if self._wants_explicit_scores():
            z = self._explicit_attention(q, k, v, allowed)
        else:
            z = self._fused_attention(q, k, v, allowed)
        z = self.hook_z(z)

        out = self.o_proj(rearrange(z, "batch pos head d_head -> batch pos (head d_head)"))
        if self.hook_result.has_hooks:  # per-head contributions (they sum to out): only when someone asks
            w_o = self.o_proj.weight
            w_o = w_o.to_local() if hasattr(w_o, "to_local") else w_o  # tensor parallel: this rank's heads
            w_o = rearrange(w_o, "d_model (head d_head) -> head d_head d_model", head=self.n_heads)
            result = einsum(z, w_o, "batch pos head d_head, head d_head d_model -> batch pos head d_model")
            # Add only what the hooks changed: an identity hook then leaves out bit-identical.
            out = out + (self.hook_result(result.clone()) - result).sum(dim=2)
        return out

    def _shared_kv(self, shared_kv: dict[int, LayerKV] | None) -> LayerKV:
        """The keys and values layer ``kv_source`` attended to in this pass (its KV cache's included)."""
        if shared_kv is None or self.kv_source not in shared_kv:
            raise RuntimeError(f"layer {self.layer} reads the keys and values of layer {self.kv_source}, "
                               "which have not been computed in this forward pass")
        source = shared_kv[self.kv_source]
        device = self.q_proj.weight.device  # the source layer may sit on another device
        source = LayerKV(*(t.to(device) for t in (source.keys, source.values, source.positions, source.valid)))
        k = self.hook_shared_k(rearrange(source.keys, "batch kv_head k_pos d_head -> batch k_pos kv_head d_head"))
        v = self.hook_shared_v(rearrange(source.values, "batch kv_head k_pos d_head -> batch k_pos kv_head d_head"))
        return LayerKV(rearrange(k, "batch k_pos kv_head d_head -> batch kv_head k_pos d_head"),
                       rearrange(v, "batch k_pos kv_head d_head -> batch kv_head k_pos d_head"),
                       source.positions, source.valid)

    def _wants_explicit_scores(self) -> bool:
        # The fused kernel cannot softcap and never materialises scores or patterns.
        return (self.cfg.attn_softcap is not None or self.hook_attn_scores_pre_softcap.has_hooks
                or self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks)

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            allowed: torch.Tensor) -> torch.Tensor:
        """softmax(softcap(q.k * scale) + mask) @ v, each step a named tensor."""
        cfg = self.cfg
        # Grouped-query attention by definition: each kv_head serves a group of query heads.
        q = rearrange(q, "batch q_pos (kv_head group) d_head -> batch kv_head group q_pos d_head", kv_head=self.n_kv_heads)
        scores = einsum(q, k, "batch kv_head group q_pos d_head, batch kv_head k_pos d_head -> batch kv_head group q_pos k_pos")
        scores = rearrange(scores, "batch kv_head group q_pos k_pos -> batch (kv_head group) q_pos k_pos")
        scores = self.hook_attn_scores_pre_softcap(scores * cfg.attn_scale)
        if cfg.attn_softcap is not None:  # Gemma 2 bounds scores smoothly to (-50, 50)
            scores = cfg.attn_softcap * torch.tanh(scores / cfg.attn_softcap)
        # Masked entries get the dtype's lowest value (not -inf) so a fully padded row stays finite.
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        pattern = rearrange(pattern, "batch (kv_head group) q_pos k_pos -> batch kv_head group q_pos k_pos", kv_head=self.n_kv_heads)
        z = einsum(pattern, v, "batch kv_head group q_pos k_pos, batch kv_head k_pos d_head -> batch q_pos kv_head group d_head")
        return rearrange(z, "batch q_pos kv_head group d_head -> batch q_pos (kv_head group) d_head")

    def _fused_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         allowed: torch.Tensor) -> torch.Tensor:
        """The same computation in torch's fused kernel (no scores materialised)."""
        q = rearrange(q, "batch q_pos head d_head -> batch head q_pos d_head")
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)[:, None]
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.cfg.attn_scale,
                                           enable_gqa=self.n_kv_heads < self.n_heads)
        return rearrange(z, "batch head q_pos d_head -> batch q_pos head d_head")


class MLP(nn.Module):
    """GeGLU: ``down(gelu(gate(x)) * up(x))``."""

    def __init__(self, cfg: GemmaConfig, d_mlp: int | None = None, sparsity: float = 0.0) -> None:
        super().__init__()
        d_mlp = d_mlp or cfg.d_mlp  # Gemma 4 E2B's KV-shared layers: twice as wide
        self.gate_proj = nn.Linear(cfg.d_model, d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, d_mlp, bias=False)
        self.down_proj = nn.Linear(d_mlp, cfg.d_model, bias=False)
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp] gate branch, before GELU
        # Gemma 3n's first layers: only the gate values above a per-token cutoff survive (shifted down by it).
        self.sparsify = gemma3n_parts.GaussianTopK(sparsity) if sparsity > 0 else None
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp] up branch
        self.hook_post = HookPoint()  # [batch, pos, d_mlp] the neurons: gelu(gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.hook_pre(self.gate_proj(x))
        if self.sparsify is not None:
            gate = self.sparsify(gate)
        up = self.hook_pre_linear(self.up_proj(x))
        neurons = self.hook_post(F.gelu(gate, approximate=self.approximate) * up)
        return self.down_proj(neurons)


class Block(nn.Module):
    """One transformer layer: attention then MLP, each read from and added to the residual stream."""

    def __init__(self, cfg: GemmaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        # Submodules and hook points in the order they run, so hook_names() lists them that way.
        eps, norm_kind = cfg.norm_eps, dict(gain_offset=cfg.norm_gain_offset)  # Gemma 3n, 4: gain w, not 1 + w
        self.altup = cfg.is_gemma3n  # Gemma 3n: the block runs on the active one of several stream copies
        if self.altup:
            self.active = cfg.altup_active_idx  # which copy attention, LAuReL and the MLP read and write
            self.hook_streams_pre = HookPoint()  # [batch, pos, stream, d_model] the copies entering the block
            self.altup_predict = gemma3n_parts.AltUpPredict(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model] (Gemma 3n: the predicted active copy)
        self.ln1 = RMSNorm(cfg.d_model, eps, **norm_kind)  # pre-attention norm
        self.attn = Attention(cfg, layer)
        self.ln1_post = RMSNorm(cfg.d_model, eps, **norm_kind) if cfg.sandwich_norms else None  # post-attention
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model] what attention adds to the stream
        # Gemma 3n: a low-rank branch beside attention, on the same normalised input.
        self.laurel = gemma3n_parts.Laurel(cfg, RMSNorm) if cfg.laurel_rank else None
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.ln2 = RMSNorm(cfg.d_model, eps, **norm_kind)  # pre-MLP norm
        self.mlp = MLP(cfg, cfg.d_mlp_for(layer), sparsity=cfg.sparsity_for(layer))
        # Gemma 4 26B-A4B: experts beside the dense MLP.
        self.moe = gemma4_parts.MixtureOfExperts(cfg, RMSNorm) if cfg.n_experts else None
        self.ln2_post = RMSNorm(cfg.d_model, eps, **norm_kind) if cfg.sandwich_norms else None  # post-MLP
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model] what the MLP adds to the stream
        if self.altup:  # the block's output on the active copy, then every copy corrected by it
            self.hook_resid_post = HookPoint()  # [batch, pos, d_model] the active copy's output, before correction
            self.altup_correct = gemma3n_parts.AltUpCorrect(cfg)
        if cfg.d_per_layer:  # Gemma 4 E2B/E4B: this layer's slice of the per-layer embeddings, gated by the stream
            self.per_layer = gemma4_parts.PerLayerInput(cfg, RMSNorm)
            self.hook_per_layer_out = HookPoint()  # [batch, pos, d_model] what it adds to the stream
        else:
            self.per_layer = None
        # Gemma 4: a fixed per-layer factor on the whole stream leaving the block (a checkpoint buffer).
        self.register_buffer("layer_scalar", torch.ones(1) if cfg.family == 4 else None)
        if self.altup:
            self.hook_streams_post = HookPoint()  # [batch, pos, stream, d_model] the copies leaving the block
        else:
            self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                valid: torch.Tensor, kv_cache: KVCache | None = None, shared_kv: dict[int, LayerKV] | None = None,
                per_layer_input: torch.Tensor | None = None) -> torch.Tensor:
        if self.altup:  # Gemma 3n: resid holds the AltUp copies [batch, pos, stream, d_model]
            return self.forward_altup(resid, cos, sin, positions, valid, kv_cache, shared_kv, per_layer_input)
        resid_pre = self.hook_resid_pre(resid)
        # The cache and the shared-KV dict go by keyword: they are updated in place, and placement's
        # device hooks copy positional containers (see placement.dispatch's skip_keys).
        attn_out = self.attn(self.ln1(resid_pre), cos, sin, positions, valid, kv_cache=kv_cache, shared_kv=shared_kv)
        if self.ln1_post is not None:
            attn_out = self.ln1_post(attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        mlp_out = self.mlp(self.ln2(resid_mid))
        if self.moe is not None:
            mlp_out = self.moe(resid_mid, mlp_out)
        if self.ln2_post is not None:
            mlp_out = self.ln2_post(mlp_out)
        resid_post = resid_mid + self.hook_mlp_out(mlp_out)
        if self.per_layer is not None:
            resid_post = resid_post + self.hook_per_layer_out(self.per_layer(resid_post, per_layer_input))
        if self.layer_scalar is not None:
            resid_post = resid_post * self.layer_scalar
        return self.hook_resid_post(resid_post)

    def forward_altup(self, streams: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                      valid: torch.Tensor, kv_cache: KVCache | None, shared_kv: dict[int, LayerKV] | None,
                      per_layer_input: torch.Tensor) -> torch.Tensor:
        """Gemma 3n: ``streams [batch, pos, stream, d_model]`` in and out; attention, LAuReL and the MLP
        run on the active copy only, and AltUp spreads their effect over the copies."""
        streams = self.hook_streams_pre(streams)
        predicted = self.altup_predict(streams)
        resid_pre = self.hook_resid_pre(gemma3n_parts.copy_of(predicted, self.active))
        normed = self.ln1(resid_pre)
        attn_out = self.attn(normed, cos, sin, positions, valid, kv_cache=kv_cache, shared_kv=shared_kv)  # by keyword: as above
        attn_out = self.hook_attn_out(self.ln1_post(attn_out))
        # LAuReL returns normed + its branch; with the residual that is two unit-scale paths: hence 1/sqrt(2).
        resid_mid = self.hook_resid_mid((resid_pre + attn_out + self.laurel(normed)) / gemma3n_parts.SQRT2)
        mlp_out = self.hook_mlp_out(self.ln2_post(self.mlp(self.ln2(resid_mid))))
        resid_post = self.hook_resid_post(resid_mid + mlp_out)
        corrected = self.altup_correct(predicted, resid_post, self.altup_predict.router)
        per_layer_out = self.per_layer(self.altup_correct.scaled_active(corrected), per_layer_input)
        streams = gemma3n_parts.streams_plus_per_layer(corrected, self.hook_per_layer_out(per_layer_out))
        return self.hook_streams_post(streams)


class Gemma(HookedModule):
    """A Gemma 1, 2, 3 or 4 text model: ``model(tokens) -> logits [batch, pos, vocab]``."""

    def __init__(self, cfg: GemmaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = TiedEmbedding(cfg.vocab_size, cfg.d_model)  # also the unembedding (tied)
        self.hook_embed = HookPoint()  # [batch, pos, d_model] after the sqrt(d_model) scale
        # Gemma 4 E2B/E4B: a second embedding, a slice per layer, fed to each block.
        self.per_layer_embed = gemma4_parts.PerLayerEmbedding(cfg, RMSNorm) if cfg.d_per_layer else None
        # Gemma 3n: the stream is widened into altup_num_inputs copies here and narrowed again after the blocks.
        self.altup_stack = gemma3n_parts.AltUpStack(cfg) if cfg.is_gemma3n else None
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.altup_unstack = gemma3n_parts.AltUpUnstack(cfg) if cfg.is_gemma3n else None
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps, gain_offset=cfg.norm_gain_offset)  # Gemma 4: gain w
        self.hook_logits = HookPoint()  # [batch, pos, vocab] after Gemma 2's final softcap
        self.setup_hooks()

    def forward(self, tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                last_position_only: bool = False, check_ids: bool = True) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` for ``tokens [batch, pos]`` (a 1-D tensor is one sequence).

        attention_mask: ``[batch, pos]``, 0 (False) for left padding. Positions then count only real
            tokens, so a padded row gives the logits of the same row unpadded.
        positions: ``[batch, pos]`` absolute positions; by default continued from ``kv_cache``.
        kv_cache: keys/values of earlier tokens; this pass reads them and appends its own.
        last_position_only: unembed only the last position (``[batch, 1, vocab]``): generation needs
            nothing else, and on a 256k vocabulary the unembedding dominates a prompt pass.
        check_ids: False when the caller has already checked that every id is in the vocabulary
            (generation does, once per call): the check reads the ids back, a host sync per pass.
        """
        tokens = self._check_tokens(tokens, check_ids=check_ids)
        valid = self._check_mask(attention_mask, tokens)
        if positions is None:
            start = kv_cache.next_positions()[:, None] if kv_cache is not None else 0
            positions = (start + valid.long().cumsum(dim=-1) - 1).clamp(min=0)
        else:
            self._check_positions(positions, tokens)
        self.run_context.positions = positions
        if kv_cache is not None:
            # Nobody looking: a sliding-window layer may attend to its ring in slot order (no copy
            # per step). With a hook attached, keys are handed over oldest first, as patterns are drawn.
            kv_cache.keys_in_order = self.hooks_attached()

        dtype = self.dtype
        # sqrt(d_model) is rounded to the weight dtype first (34.0, not 33.94, for d_model=1152 in bf16).
        embed_scale = torch.tensor(self.cfg.embed_scale, dtype=torch.float32).to(dtype)
        resid = self.hook_embed(self.embed(tokens) * embed_scale)
        per_layer_inputs = self.per_layer_embed(tokens, resid) if self.per_layer_embed is not None else None
        shared_kv = {} if self.cfg.n_kv_shared_layers else None  # Gemma 3n, 4: keys/values other layers reuse
        if self.altup_stack is not None:  # Gemma 3n: from here on, resid holds [batch, pos, stream, d_model]
            resid = self.altup_stack(resid)

        rotary = {}  # one (cos, sin) per distinct RoPE setting: global and local layers differ in Gemma 3 and 4
        for block in self.blocks:
            layer = block.layer
            rope = (self.cfg.d_head_for(layer), *self.cfg.rope_for_layer(layer), self.cfg.rope_fraction_for(layer))
            if rope not in rotary:
                rotary[rope] = rotary_cos_sin(positions, rope[0], *rope[1:3], dtype=dtype, fraction=rope[3])
            per_layer_input = per_layer_inputs[:, :, layer] if per_layer_inputs is not None else None
            # By keyword: a model placed across devices moves a block's arguments to its device,
            # all but these two, which the block updates in place (see placement.py).
            resid = block(resid, *rotary[rope], positions, valid, kv_cache=kv_cache, shared_kv=shared_kv,
                          per_layer_input=per_layer_input)
        if self.altup_unstack is not None:  # Gemma 3n: the copies back into one stream
            resid = self.altup_unstack(resid)
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
            logits = self.embed.unembed(normalized[:, -1])[:, None]
        else:
            logits = self.embed.unembed(normalized)  # unembed with the embedding matrix itself
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

    def hooks_attached(self) -> bool:
        """True when any hook point has a hook attached (then no fast path may skip an activation)."""
        return any(hook.fwd_fns or hook.bwd_fns for hook in self._hook_points.values())

    def _check_tokens(self, tokens: torch.Tensor, check_ids: bool = True) -> torch.Tensor:
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
        if not check_ids:
            return tokens.long()
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
        """What activations are computed in (the final norm's dtype: also right for an int8 model)."""
        return self.ln_final.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.ln_final.weight.device

    def n_params(self) -> int:
        """Parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (f"family=Gemma {cfg.family}, layers={cfg.n_layers}, d_model={cfg.d_model}, "
                f"heads={cfg.n_heads} ({cfg.attention_kind}, kv_heads={cfg.n_kv_heads}), d_head={cfg.d_head}")


def init_weights(model: Gemma, *, seed: int = 0, std: float = 0.02) -> Gemma:
    """Random weights for experiments and tests: normal(0, std) matrices, norm gains 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:  # a norm gain (an offset from 1 before Gemma 4) or a Gemma 4 router scale
                param.fill_(0.0 if model.cfg.norm_gain_offset else 1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model

