"""Tensor parallelism: attention heads and MLP columns split over the ranks of a process group.

``load_pretrained(path, tensor_parallel=True)`` under ``torchrun --nproc-per-node N`` (with
``torch.distributed`` initialised) comes here. The split is torch's own DTensor
``parallelize_module`` with the plan transformers' ``tp_plan`` uses for Gemma:

    q_proj, k_proj, v_proj, gate_proj, up_proj   ColwiseParallel: each rank computes its heads / columns
    o_proj, down_proj                             RowwiseParallel: partial sums, all-reduced

so each rank holds 1/N of every block's matrices and reads only that slice of the safetensors
file (``get_slice``); the embedding, norms and residual stream are replicated. Between the two
projections everything is per head (or per MLP column), so attention and the GeGLU run unchanged
on the rank's heads.

Hooks see whole activations: a hook point inside the split (q/k/v, scores, pattern, z, the MLP's
neurons) gathers the slices of every rank before its hooks run and keeps this rank's slice of
what they return. That costs one all-gather per hooked point per pass (hooks that are not
attached cost nothing); the residual stream and logits are replicated and need none.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

# Hook points inside the split, and the axis of their activation that holds heads or columns.
_ATTENTION_SHARDED = {"hook_q": 2, "hook_k": 2, "hook_v": 2, "hook_rot_q": 2, "hook_rot_k": 2,
                      "hook_attn_scores_pre_softcap": 1, "hook_attn_scores": 1, "hook_pattern": 1, "hook_z": 2}
_NORM_SHARDED = {"hook_inv_rms": 2, "hook_normalized": 2}  # q_norm / k_norm: [batch, pos, head, ...]
_MLP_SHARDED = {"hook_pre": -1, "hook_pre_linear": -1, "hook_post": -1}


class _Sharding:
    """Gather an activation's slices from every rank, and take this rank's slice back."""

    def __init__(self, dim: int, group=None) -> None:
        self.dim, self.group = dim, group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=self.dim)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        return x.chunk(self.size, dim=self.dim)[self.rank].contiguous()


def check(config) -> int:
    """The world size, after checking that the model can be split over it."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("tensor_parallel=True needs a process group: run under torchrun and call "
                           "torch.distributed.init_process_group() first (see docs/bigger_models.md)")
    size = dist.get_world_size()
    if config.family == 4:
        raise ValueError("tensor_parallel=True supports Gemma 1, 2 and 3; for Gemma 4 use device_map=")
    for what, count in (("n_heads", config.n_heads), ("n_kv_heads", config.n_kv_heads), ("d_mlp", config.d_mlp)):
        if count % size:
            raise ValueError(f"tensor_parallel=True over {size} ranks: the model's {what} ({count}) does not "
                             f"divide by {size}; use a world size that divides it, or device_map=")
    return size


def parallelize(model: nn.Module, device: torch.device) -> dict[str, tuple[int, int]]:
    """Split ``model`` (on the meta device) with DTensor; return, for each split weight, the axis it
    is split along and the number of ranks, so the loader can read just this rank's slice."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    size = dist.get_world_size()
    mesh = init_device_mesh(device.type, (size,))
    plan = {}
    for i in range(len(model.blocks)):
        for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            plan[f"blocks.{i}.{name}"] = ColwiseParallel()
        for name in ("attn.o_proj", "mlp.down_proj"):
            plan[f"blocks.{i}.{name}"] = RowwiseParallel()
    parallelize_module(model, mesh, plan)
    for block in model.blocks:  # each rank computes its share of the heads
        block.attn.n_heads //= size
        block.attn.n_kv_heads //= size
        for name, dim in _ATTENTION_SHARDED.items():
            if hasattr(block.attn, name):
                getattr(block.attn, name).sharding = _Sharding(dim, None)
        for norm in (block.attn.q_norm, block.attn.k_norm):
            if norm is not None:
                for name, dim in _NORM_SHARDED.items():
                    getattr(norm, name).sharding = _Sharding(dim, None)
        for name, dim in _MLP_SHARDED.items():
            getattr(block.mlp, name).sharding = _Sharding(dim, None)
        block.attn.hook_result.sharding = _SummedHeads(2)
    model.tp_size = size
    model.tp_mesh = mesh
    return {name: (0 if plan[name.rsplit(".", 1)[0]].__class__ is ColwiseParallel else 1, size)
            for name, _ in model.named_parameters() if name.rsplit(".", 1)[0] in plan}


class _SummedHeads(_Sharding):
    """``hook_result``: the model adds what the hooks changed, summed over heads, to the (already
    all-reduced) attention output. Each rank sees every head's edit, so it hands back its own
    slice with the whole change put on its first head: summed over its heads, that is the total."""

    def full(self, x: torch.Tensor) -> torch.Tensor:
        self._local, self._full = x, super().full(x)
        return self._full.clone()

    def local(self, x: torch.Tensor) -> torch.Tensor:
        local = self._local.clone()
        local[:, :, 0] += (x - self._full).sum(dim=self.dim)
        return local


def local_slice(tensor_slice, shape: tuple[int, ...], dim: int, size: int) -> torch.Tensor:
    """This rank's slice of a weight, read from a safetensors ``get_slice`` handle (nothing else is read)."""
    rank = dist.get_rank()
    step = shape[dim] // size
    if dim == 0:
        return tensor_slice[rank * step:(rank + 1) * step]
    return tensor_slice[:, rank * step:(rank + 1) * step]


def distributed(local: torch.Tensor, dim: int, mesh) -> torch.Tensor:
    from torch.distributed.tensor import DTensor, Shard

    return DTensor.from_local(local, mesh, [Shard(dim)], run_check=False)
