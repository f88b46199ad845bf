"""Weight-only int8 quantization: each output row of a matrix stored as int8 times one scale.

    W[row, :]  ~=  q[row, :] * scale[row]      q in -127..127 (int8), scale = max|W[row, :]| / 127

Only the weights are quantized; activations stay in the model's dtype, so every hook point sees
the same shapes and dtypes as before. The matrices quantized are the big ones: the tied embedding
(also the unembedding) and every linear layer of attention and the MLP. Norm gains stay as they are.

A quantized linear layer computes ``x @ (q * scale).T``. Written out, that is
``F.linear(x, q.to(x.dtype)) * scale``: the scale of an output row factors out of its dot product.
That explicit form is the reference; in bf16/fp16 the layer runs torch's fused CPU kernel
``torch._weight_int8pack_mm`` (the one gpt-fast and torchao use for weight-only int8), which reads
the int8 weights without ever materialising a dequantized copy. The two are tested equal.

``load_pretrained(path, quantize="int8")`` quantizes tensor by tensor while it reads the file (see
``quantize_weight``), so the full-precision model never exists in memory.

Imports: torch only (the model imports nothing from here; loading swaps these modules in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The values ``load_pretrained(quantize=...)`` accepts.
QUANTIZE_KINDS = ("int8",)

# Elements quantized at a time: bounds the scratch memory of quantizing at load (4 MiB in fp32).
_CHUNK_ELEMENTS = 2**20


def check_quantize(quantize: str | None) -> str | None:
    """``quantize`` itself when it is None or a supported kind; a clear error otherwise."""
    if quantize is None or (isinstance(quantize, str) and quantize in QUANTIZE_KINDS):
        return quantize
    raise ValueError(f"quantize={quantize!r} is not supported; use None (full precision) or one of "
                     f"{', '.join(repr(k) for k in QUANTIZE_KINDS)} (weight-only, per output row)")


def quantize_weight(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [rows, cols], scale [rows])`` with ``weight ~= q * scale[:, None]``, symmetric per row.

    Works through the rows in chunks, so a memory-mapped weight is read once and the only
    full-precision scratch is one chunk in fp32.
    """
    rows, cols = weight.shape
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, dtype=torch.float32, device=weight.device)
    step = max(1, _CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        chunk = weight[start:start + step].to(torch.float32, copy=True)  # the only scratch: edited in place
        low, high = chunk.aminmax(dim=1)
        chunk_scale = torch.maximum(-low, high) / 127
        chunk_scale[chunk_scale == 0] = 1  # an all-zero row
        q[start:start + step] = chunk.div_(chunk_scale[:, None]).round_().clamp_(-127, 127)
        scale[start:start + step] = chunk_scale
    return q, scale.to(scale_dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The matrix the int8 weights stand for, in the scale's dtype."""
    return q.to(scale.dtype) * scale[:, None]


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scale).T`` for ``x [..., in]``: the fused kernel in bf16/fp16, the explicit form otherwise."""
    if x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu" and scale.dtype == x.dtype:
        flat = x.reshape(-1, x.shape[-1])
        if not flat.is_contiguous():
            flat = flat.contiguous()
        return torch._weight_int8pack_mm(flat, q, scale).reshape(*x.shape[:-1], q.shape[0])
    return reference_int8_linear(x, q, scale)


def reference_int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The same product written out: each row's scale factors out of its dot product."""
    return F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)


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


def quantized_names(model: nn.Module) -> list[str]:
    """Names of the weights ``quantize_modules`` would quantize: the embedding and every linear layer."""
    names = [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return ["embed.weight", *names]


def quantize_modules(model: nn.Module, dtype: torch.dtype) -> None:
    """Swap the embedding and every ``nn.Linear`` for their int8 versions (empty: load into them next)."""
    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.in_features, child.out_features, dtype))
            elif child is getattr(model, "embed", None):
                setattr(parent, name, Int8Embedding(child.num_embeddings, child.embedding_dim, dtype))
            else:
                swap(child)
    swap(model)
