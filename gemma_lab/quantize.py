"""Weight-only quantization: int8 rows with one scale each, or int4 in groups of 32 with a scale and zero each.

    int8:  W[row, :]  ~=  q[row, :] * scale[row]                q in -127..127, scale = max|W[row, :]| / 127
    int4:  W[row, g]  ~=  (q[row, g] - 8) * scale[row, g] + zero[row, g]    per group g of 32 inputs,
           q in 0..15, scale = (max - min) / 15, zero = min + 8 * scale (so q = 0 is the group's min)

Only the weights are quantized; activations stay in the model's dtype, so every hook point sees
the same shapes and dtypes as before. The matrices quantized are the big ones: every linear layer
of attention and the MLP, and the tied embedding (also the unembedding), which stays int8 under
``"int4"`` too because tokens look up its rows one at a time. Norm gains stay as they are.

A quantized linear layer computes ``x @ W.T`` with ``W`` as above. The explicit form, dequantize
then ``F.linear``, is the reference (``reference_int8_linear``, ``reference_int4_linear``). The
layers run torch's fused CPU kernels instead, which read the small weights without materialising
a dequantized copy: ``torch._weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu``
(the ones gpt-fast and torchao call on CPU). Tests hold the two equal.

Why these kernels (measured side by side on a 2-core AVX2 CPU, one ``[1, 2304] x [2304, 9216]``
product): both int8 and int4 run at 0.6-0.9x the time of the bf16 product; dequantizing blocks
into an fp32 scratch then multiplying, torch.compile of the written-out product, and the int8
kernel with fp32 activations were all slower than bf16 (docs/bigger_models.md has the table).

``load_pretrained(path, quantize="int8" | "int4")`` quantizes tensor by tensor while it reads
the file (a block of rows at a time, see ``quantize_tensor``), so the full-precision model never
exists in memory.

Imports: torch only (the model imports nothing from here; loading swaps these modules in).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

#: The values ``load_pretrained(quantize=...)`` accepts.
QUANTIZE_KINDS = ("int8", "int4")

#: Inputs per int4 group (one scale and one zero each): 32, as llama.cpp's Q4_0. Groups of 64 or
#: 128 ran no faster here and had larger errors (relative error of one product 0.09, 0.10 vs 0.08).
INT4_GROUP = 32

# Elements quantized at a time: bounds the scratch memory of quantizing at load (4 MiB in fp32).
_CHUNK_ELEMENTS = 2**20


def check_quantize(quantize: str | None) -> str | None:
    """``quantize`` itself when it is None or a supported kind; a clear error otherwise."""
    if quantize is None or (isinstance(quantize, str) and quantize in QUANTIZE_KINDS):
        return quantize
    raise ValueError(f"quantize={quantize!r} is not supported; use None (full precision), 'int8' (weight-only, "
                     f"per output row) or 'int4' (weight-only, groups of {INT4_GROUP} inputs)")


def _row_chunks(rows: int, cols: int, multiple: int = 1):
    """Row ranges of about ``_CHUNK_ELEMENTS`` elements each (a multiple of ``multiple`` rows)."""
    step = max(multiple, _CHUNK_ELEMENTS // cols // multiple * multiple)
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


# ---------------------------------------------------------------------------------------------
# int8, one scale per output row


def quantize_weight(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [rows, cols], scale [rows])`` with ``weight ~= q * scale[:, None]``, symmetric per row.

    Works through the rows in chunks, so a memory-mapped weight is read once and the only
    full-precision scratch is one chunk in fp32.
    """
    rows, cols = weight.shape
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, dtype=torch.float32, device=weight.device)
    for start, end in _row_chunks(rows, cols):
        chunk = weight[start:end].to(torch.float32, copy=True)  # the only scratch: edited in place
        low, high = chunk.aminmax(dim=1)
        chunk_scale = torch.maximum(-low, high) / 127
        chunk_scale[chunk_scale == 0] = 1  # an all-zero row
        q[start:end] = chunk.div_(chunk_scale[:, None]).round_().clamp_(-127, 127)
        scale[start:end] = chunk_scale
    return q, scale.to(scale_dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The matrix the int8 weights stand for, in the scale's dtype."""
    return q.to(scale.dtype) * scale[:, None]


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scale).T`` for ``x [..., in]``: the fused kernel on CPU, the explicit form elsewhere.

    In fp32 the kernel is not vectorized on AVX2 (about 3-5x the bf16 time), yet it still beats
    the explicit form, which would build the whole fp32 matrix on every call (4x the int8 bytes).
    """
    if x.dtype in (torch.bfloat16, torch.float16, torch.float32) and x.device.type == "cpu" and scale.dtype == x.dtype:
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        return torch._weight_int8pack_mm(flat, q, scale).reshape(*x.shape[:-1], q.shape[0])
    return reference_int8_linear(x, q, scale)


def reference_int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The same product written out: each row's scale factors out of its dot product."""
    return F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# int4, a scale and a zero per group of INT4_GROUP inputs


def int4_fits(out_features: int, in_features: int) -> bool:
    """Whether torch's int4 kernel takes this shape (rows in sixteens, whole groups of inputs)."""
    return out_features % 16 == 0 and in_features % INT4_GROUP == 0


def quantize_weight_int4(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q [rows, cols] in 0..15, scale_and_zero [cols / INT4_GROUP, rows, 2])`` for ``weight``.

    ``q`` is returned in the kernel's packed layout (``pack_int4``: two values a byte, rows
    interleaved as this CPU's kernel reads them). Scales and zeros are rounded to ``dtype`` first
    and each ``q`` is the nearest level under the rounded ones. Works through blocks of 64 rows.
    """
    rows, cols = weight.shape
    groups = cols // INT4_GROUP
    packed = torch.empty(rows, cols // 2, dtype=torch.uint8)
    scale_and_zero = torch.empty(groups, rows, 2, dtype=dtype)
    for start, end in _row_chunks(rows, cols, multiple=64):  # 64 rows: whole blocks of the packed layout
        chunk = weight[start:end].to(torch.float32, copy=True).view(end - start, groups, INT4_GROUP)
        low, high = chunk.aminmax(dim=-1)
        scale = ((high - low) / 15).to(dtype)
        scale[scale == 0] = 1  # a constant group: every q is 0 and the zero carries the value
        zero = (low + 8 * scale.float()).to(dtype)
        q = chunk.sub_(zero.float()[..., None]).div_(scale.float()[..., None]).round_().add_(8).clamp_(0, 15)
        packed[start:end] = pack_int4(q.view(end - start, cols).to(torch.int32))
        scale_and_zero[:, start:end] = torch.stack([scale, zero], dim=-1).transpose(0, 1)
    return packed, scale_and_zero


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int32 ``[rows, cols]`` in 0..15 to the uint8 ``[rows, cols / 2]`` layout of torch's CPU kernel."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # 1: inner k tiles, unused on CPU


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The uint8 ``[rows, cols]`` values (0..15) behind a ``pack_int4`` layout.

    The layout depends on the CPU (torch packs rows 32 or 64 at a time to suit AVX2 or AVX-512),
    so rather than restating it, each block of 64 rows is put back by the order the packer itself
    gives (``_int4_order``): blocks are packed independently, each into consecutive bytes.
    """
    rows, cols = packed.shape[0], packed.shape[1] * 2
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1)  # low half of each byte first
    out = torch.empty(rows * cols, dtype=torch.uint8)
    for start in range(0, rows, 64):
        block = min(64, rows - start) * cols
        out[start * cols + _int4_order(block // cols, cols)] = nibbles[start * cols:start * cols + block]
    return out.view(rows, cols)


@lru_cache(maxsize=16)
def _int4_order(rows: int, cols: int) -> torch.Tensor:
    """For each packed nibble of a ``[rows, cols]`` block, the flat index of the value it holds.

    Found by packing the indices themselves, four bits at a time (``rows * cols`` < 16 ** digits).
    """
    index = torch.arange(rows * cols, dtype=torch.int64)
    order = torch.zeros(rows * cols, dtype=torch.int64)
    digit = 0
    while 16**digit < rows * cols:
        packed = pack_int4(((index >> (4 * digit)) & 15).view(rows, cols).to(torch.int32))
        nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        order += nibbles << (4 * digit)
        digit += 1
    return order


def dequantize_int4(q: torch.Tensor, scale_and_zero: torch.Tensor) -> torch.Tensor:
    """The matrix the int4 values ``q [rows, cols]`` stand for, in the scales' dtype."""
    scale, zero = (t.transpose(0, 1).repeat_interleave(INT4_GROUP, dim=1) for t in scale_and_zero.unbind(-1))
    return (q.to(scale.dtype) - 8) * scale + zero


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scale_and_zero: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for ``x [..., in]`` through torch's fused int4 kernel (CPU, any float dtype)."""
    flat = x.reshape(-1, x.shape[-1]).to(scale_and_zero.dtype)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, INT4_GROUP, scale_and_zero)
    return out.to(x.dtype).reshape(*x.shape[:-1], packed.shape[0])


def reference_int4_linear(x: torch.Tensor, packed: torch.Tensor, scale_and_zero: torch.Tensor) -> torch.Tensor:
    """The same product written out: unpack, dequantize, multiply."""
    return F.linear(x, dequantize_int4(unpack_int4(packed), scale_and_zero).to(x.dtype))


# ---------------------------------------------------------------------------------------------
# The modules loading swaps in


class Int8Linear(nn.Module):
    """A bias-free ``nn.Linear`` whose weight is stored as int8 rows with one scale each.

    ``weight`` still reads as the (dequantized) matrix, for code that inspects weights; it is a
    computed copy, so editing it changes nothing.
    """

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=dtype))

    @property
    def weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.qweight, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row, {self.scale.dtype}"


class Int4Linear(nn.Module):
    """A bias-free ``nn.Linear`` whose weight is stored as int4 in groups of ``INT4_GROUP`` inputs.

    ``weight`` reads as the dequantized matrix (a computed copy, for inspection).
    """

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale_and_zero", torch.zeros(in_features // INT4_GROUP, out_features, 2, dtype=dtype))

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_int4(unpack_int4(self.packed), self.scale_and_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int4_linear(x, self.packed, self.scale_and_zero)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 in groups of "
                f"{INT4_GROUP}, {self.scale_and_zero.dtype}")


class Int8Embedding(nn.Module):
    """The tied embedding in int8: rows looked up and dequantized; ``unembed`` is an int8 matmul."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=dtype))

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized matrix (a computed copy: for inspection, not for every pass)."""
        return dequantize(self.qweight, self.scale)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.qweight[tokens].to(self.scale.dtype) * self.scale[tokens][..., None]

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T``: logits from the int8 rows without dequantizing the matrix."""
        return int8_linear(x, self.qweight, self.scale)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row, {self.scale.dtype}"


def quantized_layout(model: nn.Module, quantize: str) -> dict[str, str]:
    """``{weight name: "int8" or "int4"}`` for what ``quantize`` stores: the embedding (always int8:
    its rows are looked up) and every linear layer (under ``"int4"``, int8 where the int4 kernel
    does not take the shape: ``int4_fits``)."""
    layout = {"embed.weight": "int8"}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fits = int4_fits(module.out_features, module.in_features)
            layout[f"{name}.weight"] = "int4" if quantize == "int4" and fits else "int8"
    return layout


def quantized_names(model: nn.Module) -> list[str]:
    """Names of the weights ``quantize_modules`` would quantize: the embedding and every linear layer."""
    return list(quantized_layout(model, "int8"))


def quantize_tensor(weight: torch.Tensor, kind: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The buffers of ``kind``'s module for ``weight`` (``qweight``/``scale`` or ``packed``/``scale_and_zero``)."""
    if kind == "int4":
        packed, scale_and_zero = quantize_weight_int4(weight, dtype)
        return {"packed": packed, "scale_and_zero": scale_and_zero}
    q, scale = quantize_weight(weight, scale_dtype=dtype)
    return {"qweight": q, "scale": scale}


def quantize_modules(model: nn.Module, dtype: torch.dtype, layout: dict[str, str] | None = None) -> None:
    """Swap the embedding and every ``nn.Linear`` for their quantized versions (empty: load into them next).

    ``layout``: ``quantized_layout``'s answer (default: int8 everywhere).
    """
    layout = layout if layout is not None else quantized_layout(model, "int8")

    def swap(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                kind = Int4Linear if layout.get(f"{prefix}{name}.weight") == "int4" else Int8Linear
                setattr(parent, name, kind(child.in_features, child.out_features, dtype))
            elif child is getattr(model, "embed", None):
                setattr(parent, name, Int8Embedding(child.num_embeddings, child.embedding_dim, dtype))
            else:
                swap(child, f"{prefix}{name}.")
    swap(model, "")


def quantization_error(reference: torch.Tensor, logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """How far a quantized model's ``logits [batch, pos, vocab]`` are from a reference model's on ``tokens``.

    ``max_error``: the largest logit difference over the largest reference logit; ``top1``: the
    fraction of positions where both pick the same token; ``perplexity`` and
    ``reference_perplexity``: of each model on the tokens themselves (each position predicting the next).
    """
    reference, logits = reference.float(), logits.float()

    def perplexity(x: torch.Tensor) -> float:
        return F.cross_entropy(x[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).exp().item()

    return {"max_error": ((logits - reference).abs().max() / reference.abs().max()).item(),
            "top1": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
            "perplexity": perplexity(logits), "reference_perplexity": perplexity(reference)}
