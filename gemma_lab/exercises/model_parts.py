"""Exercises of lessons 01-07: the parts of the model, from token pieces to the sampling filters.

Each exercise is a function the learner writes in a notebook. Here, for each one: the reference
(a thin wrapper around the package's own implementation, with the exercise's signature, so a
learner's answer is checked against the code that actually runs the model), the random inputs of
its trials, and the usual mistakes, each written out as the wrong function it describes.

The references double as "the pieces you built": lesson 06 imports them to assemble a whole
forward pass (``from gemma_lab.exercises.model_parts import rms_norm, apply_rotary, ...``).

Shapes use the package's axis vocabulary (``batch, pos, q_pos, k_pos, d_model, head, kv_head,
group, d_head, d_mlp, vocab``). Nothing here imports plotting or widgets.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from gemma_lab import model as gemma_model
from gemma_lab import sampling
from gemma_lab.config import GLOBAL, LOCAL, GemmaConfig
from gemma_lab.exercises import choice, exercise, randint, trial_number

__all__ = [
    "apply_rotary",
    "attention_layer",
    "attention_mask",
    "attention_pattern",
    "decode_pieces",
    "embed",
    "gemma_forward",
    "geglu",
    "grouped_attention",
    "rms_norm",
    "rotary_cos_sin",
    "top_k_filter",
    "top_p_filter",
    "transformer_block",
]

NB_TOKENIZATION = "01_tokenization"
NB_EMBEDDINGS = "02_embeddings_and_rmsnorm"
NB_ROTARY = "03_rotary_embeddings"
NB_ATTENTION = "04_attention"
NB_BLOCK = "05_mlp_and_block"
NB_FORWARD = "06_full_forward_pass"
NB_SAMPLING = "07_generation_and_sampling"


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float32):
    return (torch.randn(shape, generator=generator) * scale).to(dtype)


def _dtype(generator: torch.Generator) -> torch.dtype:
    """float32 on trial 0, bfloat16 on trial 1, either afterwards."""
    trial = trial_number(generator)
    if trial < 2:
        return (torch.float32, torch.bfloat16)[trial]
    return choice(generator, [torch.float32, torch.bfloat16])


def exactly_equal(got, expected) -> bool:
    """Bit-for-bit comparison (shape and dtype included), for results that have one right answer."""
    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype
                and torch.equal(got, expected))
    return got == expected


# ==============================================================================================
# 01 Tokenization: pieces back to text
# ==============================================================================================

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BOUNDARY_PIECES = ("<bos>", "<eos>", "<pad>")


def decode_pieces(pieces: list[str]) -> str:
    """Text from vocabulary pieces, as ``GemmaTokenizer.decode`` does it: "▁" is a space, runs of
    byte pieces ``<0xNN>`` are UTF-8, ``<bos>``/``<eos>``/``<pad>`` vanish, other specials stay by name."""
    text, pending = [], bytearray()
    for piece in pieces:
        if piece in _BOUNDARY_PIECES:
            continue
        if byte := _BYTE_PIECE.fullmatch(piece):
            pending.append(int(byte.group(1), 16))
            continue
        text.append(pending.decode("utf-8", errors="replace"))
        pending.clear()
        text.append(piece.replace("▁", " "))
    text.append(pending.decode("utf-8", errors="replace"))
    return "".join(text)


_WORD_PIECES = ["▁the", "▁cat", "sat", "▁on", "▁mat", ".", "▁Mary", "▁John", ",", "\n", "▁▁", "1", "2",
                "ing", "▁a", "!", "▁"]
_MULTIBYTE = ["é", "ö", "生", "活", "€", "😀", "ß", "Ж"]


def _byte_pieces(character: str) -> list[str]:
    return [f"<0x{b:02X}>" for b in character.encode("utf-8")]


def _decode_pieces_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    if trial == 0:
        return ([],)
    if trial == 1:  # a leading space, then a character spelled in bytes
        return (["<bos>", "▁", "caf"] + _byte_pieces("é") + ["▁ok"],)
    pieces = ["<bos>"] if randint(generator, 0, 3) else []
    pieces.append(choice(generator, ["▁the", "▁Mary", "▁▁"]))  # a leading space: no dummy prefix to strip
    for _ in range(randint(generator, 4, 12)):
        kind = randint(generator, 0, 9)
        if kind < 6:
            pieces.append(choice(generator, _WORD_PIECES))
        elif kind < 9:
            pieces += _byte_pieces(choice(generator, _MULTIBYTE))
        else:
            pieces.append(choice(generator, ["<start_of_turn>", "<end_of_turn>", "<pad>"]))
    pieces += _byte_pieces(choice(generator, _MULTIBYTE))
    if trial % 2 == 0:
        pieces.append("<eos>")
    return (pieces,)


def _decode_pieces_no_space(pieces):
    text, pending = [], bytearray()
    for piece in pieces:
        if piece in _BOUNDARY_PIECES:
            continue
        if byte := _BYTE_PIECE.fullmatch(piece):
            pending.append(int(byte.group(1), 16))
            continue
        text.append(pending.decode("utf-8", errors="replace"))
        pending.clear()
        text.append(piece)
    text.append(pending.decode("utf-8", errors="replace"))
    return "".join(text)


def _decode_pieces_keeps_boundaries(pieces):
    text = []
    for start, piece in enumerate(pieces):
        if piece in _BOUNDARY_PIECES:
            text.append(piece)
        elif not _BYTE_PIECE.fullmatch(piece):
            text.append(decode_pieces([piece]))
        elif start == 0 or not _BYTE_PIECE.fullmatch(pieces[start - 1]):
            run = []
            for later in pieces[start:]:
                if not _BYTE_PIECE.fullmatch(later):
                    break
                run.append(later)
            text.append(decode_pieces(run))
    return "".join(text)


def _decode_pieces_byte_by_byte(pieces):
    return "".join(decode_pieces([piece]) for piece in pieces)


def _decode_pieces_strips_leading_space(pieces):
    return decode_pieces(pieces).lstrip(" ")


def _decode_pieces_drops_all_specials(pieces):
    return decode_pieces([p for p in pieces if not (p.startswith("<") and p.endswith(">") and len(p) > 2)
                          or _BYTE_PIECE.fullmatch(p)])


exercise(
    "decode_pieces",
    make_inputs=_decode_pieces_inputs,
    reference=decode_pieces,
    mistakes={
        "Did you turn '▁' (U+2581, SentencePiece's visible space) back into a space?": _decode_pieces_no_space,
        "Did you drop <bos>, <eos> and <pad>? They mark where a sequence starts and ends and carry no text.":
            _decode_pieces_keeps_boundaries,
        "Did you decode each byte piece on its own? A character such as 'é' is several <0xNN> pieces in a row: "
        "collect the bytes of the run, then decode them together as UTF-8.": _decode_pieces_byte_by_byte,
        "Did you strip the leading space? Gemma adds no dummy prefix, so a leading '▁' is a real space.":
            _decode_pieces_strips_leading_space,
        "Did you drop every special token? Only <bos>, <eos> and <pad> vanish; <start_of_turn> and the "
        "other specials appear by name.": _decode_pieces_drops_all_specials,
    },
    notebook=NB_TOKENIZATION,
)


# ==============================================================================================
# 02 Embeddings and RMSNorm
# ==============================================================================================


def embed(tokens: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight[tokens] * sqrt(d_model)``, the scale rounded to the weight dtype: ``[batch, pos, d_model]``.

    The same two lines as ``Gemma.forward``.
    """
    scale = torch.tensor(math.sqrt(weight.shape[-1]), dtype=torch.float32).to(weight.dtype)
    return F.embedding(tokens, weight) * scale


def _embed_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    dtype = _dtype(generator)
    d_model = 1152 if trial == 1 else choice(generator, [24, 40, 48, 72, 80, 1152])
    vocab = randint(generator, 5, 40)
    batch, pos = (1, 1) if trial == 0 else (randint(generator, 1, 3), randint(generator, 1, 7))
    tokens = torch.randint(0, vocab, (batch, pos), generator=generator)
    return tokens, _randn(generator, vocab, d_model, scale=0.5, dtype=dtype)


def _embed_unscaled(tokens, weight):
    return weight[tokens]


def _embed_scale_not_rounded(tokens, weight):
    return weight[tokens] * math.sqrt(weight.shape[-1])


def _embed_divided(tokens, weight):
    scale = torch.tensor(math.sqrt(weight.shape[-1])).to(weight.dtype)
    return weight[tokens] / scale


exercise(
    "embed",
    make_inputs=_embed_inputs,
    reference=embed,
    mistakes={
        "Did you multiply by sqrt(d_model)? Gemma scales the embeddings up by sqrt(d_model).": _embed_unscaled,
        "Did you round sqrt(d_model) to the weight dtype? Make the scale a tensor in weight.dtype first "
        "(in bfloat16, sqrt(1152) = 33.94 becomes 34.0), then multiply.": _embed_scale_not_rounded,
        "Did you divide by sqrt(d_model) rather than multiply?": _embed_divided,
    },
    compare=exactly_equal,
    notebook=NB_EMBEDDINGS,
)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm over the last axis, computed by ``gemma_lab.model.RMSNorm``."""
    norm = gemma_model.RMSNorm(x.shape[-1], eps).to(weight.dtype)
    norm.weight.data.copy_(weight)
    return norm(x)


def _rms_norm_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    dtype = _dtype(generator)
    d_model = choice(generator, [8, 16, 40, 64])
    batch, pos = randint(generator, 1, 3), randint(generator, 1, 6)
    scale = {2: 1e-3, 3: 30.0}.get(trial, 1.0)  # tiny activations make eps matter; large ones test range
    x = _randn(generator, batch, pos, d_model, scale=scale, dtype=dtype) + _randn(generator, 1, 1, d_model, scale=0.5 * scale, dtype=dtype)
    weight = _randn(generator, d_model, scale=0.5, dtype=dtype)
    eps = {4: 0.1, 5: 1e-2}.get(trial, 1e-6)
    return x, weight, eps


def _rms_norm_eps_outside(x, weight, eps):
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + eps) * (1 + weight.float())).to(x.dtype)


def _rms_norm_gain_without_one(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _rms_norm_centred(x, weight, eps):
    xf = x.float()
    xf = xf - xf.mean(-1, keepdim=True)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.float())).to(x.dtype)


def _rms_norm_all_axes(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean() + eps) * (1 + weight.float())).to(x.dtype)


def _rms_norm_stays_float32(x, weight, eps):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1 + weight.float())


exercise(
    "rms_norm",
    make_inputs=_rms_norm_inputs,
    reference=rms_norm,
    mistakes={
        "Is your epsilon inside the square root? x / sqrt(mean(x²) + eps), not x / (sqrt(mean(x²)) + eps).":
            _rms_norm_eps_outside,
        "Did you add 1 to the norm weight? Gemma stores the gain as an offset from 1: multiply by (1 + weight).":
            _rms_norm_gain_without_one,
        "Did you subtract the mean? RMSNorm does not centre; it only divides by the root-mean-square.":
            _rms_norm_centred,
        "Did you take the mean over the last axis (d_model) only, with keepdim=True? Each vector is "
        "normalised on its own.": _rms_norm_all_axes,
        "Did you cast the result back to x's dtype? Compute in float32, then .to(x.dtype) once at the end.":
            _rms_norm_stays_float32,
    },
    notebook=NB_EMBEDDINGS,
)


# ==============================================================================================
# 03 Rotary position embeddings
# ==============================================================================================


def rotary_cos_sin(positions: torch.Tensor, d_head: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[batch, pos, d_head]`` (float32) of RoPE's angles, by ``gemma_lab.model.rotary_cos_sin``."""
    return gemma_model.rotary_cos_sin(positions, d_head, theta, 1.0, torch.float32)


def _positions(generator: torch.Generator, batch: int, pos: int, high: int = 200) -> torch.Tensor:
    start = torch.randint(0, high, (batch, 1), generator=generator)
    return start + torch.arange(pos)


def _rotary_cos_sin_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    d_head = 2 if trial == 0 else choice(generator, [4, 8, 16, 32, 64])
    batch, pos = randint(generator, 1, 2), randint(generator, 1, 6)
    positions = torch.arange(pos)[None].repeat(batch, 1) if trial < 2 else _positions(generator, batch, pos)
    theta = choice(generator, [10_000.0, 1_000_000.0, 100.0])
    return positions, d_head, theta


def _angles(positions, d_head, theta, exponent_sign=-1.0, step=2):
    exponents = torch.arange(0, d_head, 2, dtype=torch.float32) / d_head
    if step == 1:
        exponents = torch.arange(0, d_head // 2, dtype=torch.float32) / d_head
    inv_freq = theta ** (exponent_sign * exponents)
    return positions.float()[..., None] * inv_freq


def _rotary_interleaved_frequencies(positions, d_head, theta):
    angles = _angles(positions, d_head, theta).repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def _rotary_positive_exponent(positions, d_head, theta):
    angles = _angles(positions, d_head, theta, exponent_sign=1.0)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotary_exponent_step_one(positions, d_head, theta):
    angles = _angles(positions, d_head, theta, step=1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotary_swapped(positions, d_head, theta):
    cos, sin = rotary_cos_sin(positions, d_head, theta)
    return sin, cos


def _close_angles(got, expected) -> bool:
    """cos/sin of angles up to a few hundred radians: float32 angles carry ~1e-5 absolute error."""
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        return False
    return all(isinstance(g, torch.Tensor) and g.shape == e.shape and g.dtype == e.dtype
               and torch.allclose(g, e, rtol=0, atol=2e-4) for g, e in zip(got, expected))


exercise(
    "rotary_cos_sin",
    make_inputs=_rotary_cos_sin_inputs,
    reference=rotary_cos_sin,
    mistakes={
        "Did you pair dimension i with i + d_head/2? Repeat the d_head/2 angles as two halves "
        "(torch.cat([angles, angles], -1)), not as neighbours (repeat_interleave).": _rotary_interleaved_frequencies,
        "Is your exponent negative? The frequencies are theta ** (-2i / d_head): they fall from 1 towards 1/theta.":
            _rotary_positive_exponent,
        "Is your exponent 2i / d_head for i = 0 .. d_head/2 - 1? torch.arange(0, d_head, 2) / d_head.":
            _rotary_exponent_step_one,
        "Did you return (cos, sin) in that order?": _rotary_swapped,
    },
    compare=_close_angles,
    notebook=NB_ROTARY,
)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [batch, pos, head, d_head]`` by ``gemma_lab.model.apply_rotary``."""
    return gemma_model.apply_rotary(x, cos, sin)


def _apply_rotary_inputs(generator: torch.Generator) -> tuple:
    dtype = _dtype(generator)
    batch, pos, head = randint(generator, 1, 2), randint(generator, 1, 6), randint(generator, 1, 4)
    d_head = choice(generator, [2, 4, 8, 16])
    positions = _positions(generator, batch, pos, high=50)
    cos, sin = gemma_model.rotary_cos_sin(positions, d_head, choice(generator, [10_000.0, 100.0]), 1.0, dtype)
    return _randn(generator, batch, pos, head, d_head, dtype=dtype), cos, sin


def _apply_rotary_neighbours(x, cos, sin):
    half = x.shape[-1] // 2
    cos, sin = cos[:, :, None, :half], sin[:, :, None, :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2)


def _apply_rotary_wrong_sign(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    return x * cos[:, :, None] + torch.cat([second, -first], dim=-1) * sin[:, :, None]


def _apply_rotary_swapped(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    return x * sin[:, :, None] + torch.cat([-second, first], dim=-1) * cos[:, :, None]


exercise(
    "apply_rotary",
    make_inputs=_apply_rotary_inputs,
    reference=apply_rotary,
    mistakes={
        "Did you rotate pairs (i, i + d_head/2) rather than neighbours (2i, 2i+1)? Gemma uses rotate-half: "
        "split x into two halves.": _apply_rotary_neighbours,
        "Is the sign in rotate_half right? rotate_half(x) = cat(-second_half, first_half), so the first half "
        "becomes x1·cos − x2·sin.": _apply_rotary_wrong_sign,
        "Did you swap cos and sin? x·cos + rotate_half(x)·sin.": _apply_rotary_swapped,
    },
    notebook=NB_ROTARY,
)


# ==============================================================================================
# 04 Attention: the mask, the pattern, grouped-query attention
# ==============================================================================================


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """``[batch, q_pos, k_pos]`` True where a query may attend to a key (``gemma_lab.model.attention_mask``)."""
    return gemma_model.attention_mask(q_positions, k_positions, torch.ones_like(k_positions, dtype=torch.bool),
                                      window)


def _attention_mask_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    if trial == 0:
        positions = torch.arange(5)[None]
        return positions, positions, None
    if trial == 1:
        positions = torch.arange(8)[None]
        return positions, positions, 3
    if trial == 2:  # one new token decoding against a cache of 8 keys
        return torch.tensor([[7]]), torch.arange(8)[None], 4
    batch, n_keys = randint(generator, 1, 2), randint(generator, 2, 10)
    n_queries = randint(generator, 1, n_keys)
    k_positions = _positions(generator, batch, n_keys, high=20)
    window = choice(generator, [None, 1, 2, 3, n_keys])
    return k_positions[:, -n_queries:], k_positions, window


def _mask_parts(q_positions, k_positions):
    return q_positions[:, :, None], k_positions[:, None, :]


def _attention_mask_not_causal(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = torch.ones(q.shape[0], q.shape[1], k.shape[2], dtype=torch.bool)
    return allowed & ((q - k).abs() < window) if window is not None else allowed


def _attention_mask_future(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = k >= q
    return allowed & (k - q < window) if window is not None else allowed


def _attention_mask_window_off_by_one(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = k <= q
    return allowed & (q - k <= window) if window is not None else allowed


def _attention_mask_no_window(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    return k <= q


def _attention_mask_strict(q_positions, k_positions, window):
    q, k = _mask_parts(q_positions, k_positions)
    allowed = k < q
    return allowed & (q - k < window) if window is not None else allowed


exercise(
    "attention_mask",
    make_inputs=_attention_mask_inputs,
    reference=attention_mask,
    mistakes={
        "Did you forget the causal mask? A query may attend only to keys at its own position or earlier (k <= q).":
            _attention_mask_not_causal,
        "Did you let queries see the future? Allowed is k <= q, not k >= q.": _attention_mask_future,
        "Is your window off by one? It counts the query itself: allowed when q - k < window, so a query sees "
        "at most `window` keys.": _attention_mask_window_off_by_one,
        "Did you apply the sliding window? When window is not None, keys window or more positions back are masked.":
            _attention_mask_no_window,
        "Did you mask the diagonal? A query always attends to its own key: k <= q, not k < q.":
            _attention_mask_strict,
    },
    notebook=NB_ATTENTION,
)


def _attention_module(n_heads: int, n_kv_heads: int, d_head: int, query_pre_attn_scalar: float,
                      softcap: float | None) -> gemma_model.Attention:
    """A ``gemma_lab.model.Attention`` for these head sizes (its projections are never used here)."""
    cfg = GemmaConfig(family=2, vocab_size=1, d_model=1, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      d_head=d_head, d_mlp=1, query_pre_attn_scalar=float(query_pre_attn_scalar),
                      attn_softcap=softcap)
    return gemma_model.Attention(cfg, 0)


def _package_attention(q, k, v, allowed, query_pre_attn_scalar, softcap):
    """(pattern, z) from the package's explicit attention path; k, v are ``[batch, k_pos, kv_head, d_head]``."""
    attention = _attention_module(q.shape[2], k.shape[2], q.shape[3], query_pre_attn_scalar, softcap)
    seen = {}

    def keep(pattern, hook):
        seen["pattern"] = pattern

    attention.hook_pattern.fwd_fns.append(keep)
    to_heads = "batch k_pos kv_head d_head -> batch kv_head k_pos d_head"
    z = attention._explicit_attention(q, rearrange(k, to_heads), rearrange(v, to_heads), allowed)
    return seen["pattern"], z


def attention_pattern(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, query_pre_attn_scalar: float,
                      softcap: float | None = None) -> torch.Tensor:
    """``[batch, head, q_pos, k_pos]`` attention weights for ``q [batch, q_pos, head, d_head]`` and
    ``k [batch, k_pos, head, d_head]`` (one key head per query head), by the package's attention."""
    return _package_attention(q, k, torch.zeros_like(k), allowed, query_pre_attn_scalar, softcap)[0]


def _attention_trial(generator: torch.Generator, n_kv_heads: int, group: int) -> tuple:
    """q, k, v, allowed for one attention trial (k and v with ``n_kv_heads`` heads)."""
    trial = trial_number(generator)
    dtype = _dtype(generator)
    batch = randint(generator, 1, 2)
    d_head = choice(generator, [4, 8, 16])
    n_keys = randint(generator, 2, 9)
    n_queries = 1 if trial == 2 else randint(generator, 1, n_keys)
    k_positions = _positions(generator, batch, n_keys, high=10)
    window = choice(generator, [None, 2, 3]) if trial > 1 else (None, 3)[trial]
    allowed = attention_mask(k_positions[:, -n_queries:], k_positions, window)
    q = _randn(generator, batch, n_queries, n_kv_heads * group, d_head, dtype=dtype)
    k = _randn(generator, batch, n_keys, n_kv_heads, d_head, dtype=dtype)
    v = _randn(generator, batch, n_keys, n_kv_heads, d_head, dtype=dtype)
    return q, k, v, allowed, d_head


def _attention_pattern_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    heads = randint(generator, 1, 3)
    q, k, _, allowed, d_head = _attention_trial(generator, heads, 1)
    scalar = choice(generator, [d_head / 2, 2.0 * d_head, 10.0])
    softcap = None
    if trial in (3, 5):  # Gemma 2: large scores, so the cap bites
        q, softcap = q * 4, choice(generator, [5.0, 20.0])
    return q, k, allowed, scalar, softcap


def _scores(q, k, scale, softcap, allowed, fill=None):
    scores = einsum(q.float(), k.float(), "batch q_pos head d_head, batch k_pos head d_head -> batch head q_pos k_pos")
    scores = scores * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if allowed is not None:
        fill = torch.finfo(scores.dtype).min if fill is None else fill
        scores = scores.masked_fill(~allowed[:, None], fill)
    return scores


def _attention_pattern_head_dim_scale(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, q.shape[-1] ** -0.5, softcap, allowed).softmax(-1).to(q.dtype)


def _attention_pattern_not_square_root(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, 1 / query_pre_attn_scalar, softcap, allowed).softmax(-1).to(q.dtype)


def _attention_pattern_unmasked(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, None).softmax(-1).to(q.dtype)


def _attention_pattern_query_softmax(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, allowed).softmax(-2).to(q.dtype)


def _attention_pattern_no_softcap(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, None, allowed).softmax(-1).to(q.dtype)


def _attention_pattern_zero_fill(q, k, allowed, query_pre_attn_scalar, softcap=None):
    return _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, allowed, fill=0.0).softmax(-1).to(q.dtype)


def _attention_pattern_mask_after_softmax(q, k, allowed, query_pre_attn_scalar, softcap=None):
    pattern = _scores(q, k, query_pre_attn_scalar ** -0.5, softcap, None).softmax(-1)
    return (pattern * allowed[:, None]).to(q.dtype)


_SCALE_HINT = ("Did you scale by sqrt(d_head) rather than query_pre_attn_scalar? Gemma 2 and 3 multiply the "
               "scores by query_pre_attn_scalar ** -0.5 (Gemma 1: d_head ** -0.5).")
_CAUSAL_HINT = "Did you forget the causal mask? Masked scores must get a very negative value before the softmax."

exercise(
    "attention_pattern",
    make_inputs=_attention_pattern_inputs,
    reference=attention_pattern,
    mistakes={
        _SCALE_HINT: _attention_pattern_head_dim_scale,
        "Did you divide by query_pre_attn_scalar rather than by its square root?": _attention_pattern_not_square_root,
        _CAUSAL_HINT: _attention_pattern_unmasked,
        "Did you apply softmax over the query axis? Each query's weights over the keys sum to 1: softmax over "
        "k_pos, the last axis.": _attention_pattern_query_softmax,
        "Did you apply the softcap when one is given? Gemma 2: scores = softcap * tanh(scores / softcap), "
        "after scaling and before the mask.": _attention_pattern_no_softcap,
        "Did you mask with 0? A score of 0 still gets weight after the softmax; use a very negative number "
        "(torch.finfo(dtype).min) or -inf.": _attention_pattern_zero_fill,
        "Did you mask after the softmax? Mask the scores first, so that the allowed weights sum to 1.":
            _attention_pattern_mask_after_softmax,
    },
    notebook=NB_ATTENTION,
)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                      query_pre_attn_scalar: float, softcap: float | None = None) -> torch.Tensor:
    """``z [batch, q_pos, head, d_head]``: each group of query heads attends with its own kv_head
    (``q [batch, q_pos, head, d_head]``, ``k``/``v [batch, k_pos, kv_head, d_head]``), by the package."""
    return _package_attention(q, k, v, allowed, query_pre_attn_scalar, softcap)[1]


def _grouped_attention_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    n_kv_heads, group = [(1, 3), (2, 3), (3, 1), (2, 2)][trial] if trial < 4 else (randint(generator, 1, 3),
                                                                                 randint(generator, 1, 4))
    q, k, v, allowed, d_head = _attention_trial(generator, n_kv_heads, group)
    scalar = choice(generator, [d_head / 2, 2.0 * d_head])
    return q, k, v, allowed, scalar, None


def _grouped(q, k, v, allowed, scale, softcap, kv_layout="(kv_head group)", masked=True):
    dtype, n_kv_heads = v.dtype, k.shape[2]
    q = rearrange(q.float(), f"batch q_pos {kv_layout} d_head -> batch q_pos kv_head group d_head", kv_head=n_kv_heads)
    scores = einsum(q, k.float(), "batch q_pos kv_head group d_head, batch k_pos kv_head d_head "
                                  "-> batch kv_head group q_pos k_pos") * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if masked:
        scores = scores.masked_fill(~allowed[:, None, None], torch.finfo(scores.dtype).min)
    pattern = scores.softmax(-1)
    z = einsum(pattern, v.float(), "batch kv_head group q_pos k_pos, batch k_pos kv_head d_head "
                                   "-> batch q_pos kv_head group d_head")
    return rearrange(z, f"batch q_pos kv_head group d_head -> batch q_pos {kv_layout} d_head").to(dtype)


def _grouped_attention_tiled(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    return _grouped(q, k, v, allowed, query_pre_attn_scalar ** -0.5, softcap, kv_layout="(group kv_head)")


def _grouped_attention_unmasked(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    return _grouped(q, k, v, allowed, query_pre_attn_scalar ** -0.5, softcap, masked=False)


def _grouped_attention_head_dim_scale(q, k, v, allowed, query_pre_attn_scalar, softcap=None):
    return _grouped(q, k, v, allowed, q.shape[-1] ** -0.5, softcap)


exercise(
    "grouped_attention",
    make_inputs=_grouped_attention_inputs,
    reference=grouped_attention,
    mistakes={
        "Did you group the query heads as (kv_head group)? Consecutive query heads share a kv_head "
        "(query head h uses kv_head h // group), like repeat_interleave, not repeat.": _grouped_attention_tiled,
        _CAUSAL_HINT: _grouped_attention_unmasked,
        _SCALE_HINT: _grouped_attention_head_dim_scale,
    },
    notebook=NB_ATTENTION,
)


# ==============================================================================================
# 05 The GeGLU MLP and the transformer block
# ==============================================================================================


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
    notebook=NB_BLOCK,
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

    def forward(self, x: torch.Tensor, *rotary_and_positions) -> torch.Tensor:
        return self.inner(x)


def _small_config(generator: torch.Generator, family: int, **changes) -> GemmaConfig:
    n_kv_heads = randint(generator, 1, 2)
    d_head = choice(generator, [4, 8])
    fields = dict(family=family, vocab_size=randint(generator, 20, 60), d_model=choice(generator, [16, 24, 32]),
                  n_layers=1, n_heads=n_kv_heads * randint(generator, 1, 3), n_kv_heads=n_kv_heads, d_head=d_head,
                  d_mlp=choice(generator, [24, 40]), max_seq_len=64, sandwich_norms=family >= 2,
                  qk_norm=family == 3)
    if family >= 2:
        fields["query_pre_attn_scalar"] = choice(generator, [d_head / 2, 2.0 * d_head])
    fields.update(changes)
    return GemmaConfig(**fields)


def _randomise(module: nn.Module, generator: torch.Generator, std: float = 0.3, norm_std: float = 0.4) -> nn.Module:
    """Random matrices and non-zero norm offsets (a zero offset would hide a missing ``1 +``)."""
    with torch.no_grad():
        for param in module.parameters():
            fan_in = param.shape[-1] if param.ndim > 1 else 1
            scale = norm_std if param.ndim == 1 else std * 4 / math.sqrt(fan_in)
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module


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
    notebook=NB_BLOCK,
)


# ==============================================================================================
# 06 The full forward pass
# ==============================================================================================


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
    notebook=NB_FORWARD,
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
    notebook=NB_FORWARD,
)


# ==============================================================================================
# 07 Sampling filters
# ==============================================================================================


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, the rest ``-inf`` (``gemma_lab.sampling.apply_top_k``)."""
    return sampling.apply_top_k(logits, k)


def _logits(generator: torch.Generator, scale: float) -> torch.Tensor:
    shape = [randint(generator, 1, 3), randint(generator, 5, 40)]
    if trial_number(generator) == 2:
        shape = shape[1:]  # a single row: [vocab]
    return _randn(generator, *shape, scale=scale)


def _top_k_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    logits = _logits(generator, 3.0)
    vocab = logits.shape[-1]
    k = {0: 1, 1: vocab + 3}.get(trial, randint(generator, 2, vocab - 1))
    return logits, k


def _top_k_smallest(logits, k):
    k = min(k, logits.shape[-1])
    kth_smallest = logits.topk(k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth_smallest, -math.inf)


def _top_k_one_extra(logits, k):
    ordered = logits.sort(dim=-1, descending=True).values
    threshold = ordered[..., min(k, logits.shape[-1] - 1)][..., None]
    return logits.masked_fill(logits < threshold, -math.inf)


def _top_k_zero_fill(logits, k):
    return sampling.apply_top_k(logits, k).nan_to_num(neginf=0.0)


_NEG_INF_HINT = ("Did you set the removed logits to -inf? A logit of 0 still gets probability after the softmax; "
                 "-inf gets exactly 0.")

exercise(
    "top_k_filter",
    make_inputs=_top_k_inputs,
    reference=top_k_filter,
    mistakes={
        "Did you keep the k largest logits? (Sorting ascending, or topk(largest=False), picks the smallest.)":
            _top_k_smallest,
        "Is k off by one? Keep the k largest: remove every logit below the k-th largest (index k - 1 of the "
        "descending order).": _top_k_one_extra,
        _NEG_INF_HINT: _top_k_zero_fill,
    },
    notebook=NB_SAMPLING,
)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens holding at least ``p`` of the probability, the rest
    ``-inf`` (``gemma_lab.sampling.apply_top_p``)."""
    return sampling.apply_top_p(logits, p)


def _top_p_inputs(generator: torch.Generator) -> tuple:
    trial = trial_number(generator)
    p = {0: 0.9, 1: 1.0, 2: 0.5, 3: 0.01}.get(trial) or choice(generator, [0.3, 0.75, 0.95])
    return _logits(generator, 2.0), p


def _sorted_probs(logits, descending=True):
    ordered, order = logits.sort(dim=-1, descending=descending)
    return ordered.float().softmax(-1), order


def _keep_sorted(logits, keep_sorted, order):
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, -math.inf)


def _top_p_drops_crossing_token(logits, p):
    probs, order = _sorted_probs(logits)
    return _keep_sorted(logits, probs.cumsum(-1) <= p, order)


def _top_p_unsorted(logits, p):
    probs = logits.float().softmax(-1)
    before = probs.cumsum(-1) - probs
    return logits.masked_fill(before >= p, -math.inf)


def _top_p_ascending(logits, p):
    probs, order = _sorted_probs(logits, descending=False)
    before = probs.cumsum(-1) - probs
    return _keep_sorted(logits, before < p, order)


def _top_p_zero_fill(logits, p):
    return sampling.apply_top_p(logits, p).nan_to_num(neginf=0.0)


exercise(
    "top_p_filter",
    make_inputs=_top_p_inputs,
    reference=top_p_filter,
    mistakes={
        "Did you keep the token that carries the total past p? Keep a token while the probability of the more "
        "likely tokens before it is still below p (so the most likely token always stays).":
            _top_p_drops_crossing_token,
        "Did you sort by probability before the cumulative sum? The nucleus is made of the most likely tokens.":
            _top_p_unsorted,
        "Did you sort in descending order? Start the running total at the most likely token.": _top_p_ascending,
        _NEG_INF_HINT: _top_p_zero_fill,
    },
    notebook=NB_SAMPLING,
)
