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

Fewer key/value heads than ranks (Gemma 1 2B and Gemma 3 1B have one: multi-query attention),
or a count the ranks do not divide: the query heads are still split, but ``k_proj``/``v_proj`` are
replicated, as transformers and vLLM do. Every rank computes all key/value heads (one or two
narrow projections: little work) and keeps, in attention and in its KV cache, those its own query
heads read (``Attention.kv_heads_kept``).

Gemma 4 splits the same way, layer by layer (its global layers have wider heads and, on K=V
models, fewer key/value heads, so one layer may split its keys while another replicates them).
Its experts are split by their intermediate columns like the dense MLP: each rank runs every
chosen expert on its columns, and the weighted sum is all-reduced once per layer. Replicated,
and why:
  * the router (a ``d_model x n_experts`` matrix): each rank needs the same choice of experts,
    and computing it whole on every rank costs less than gathering it;
  * per-layer embeddings (E2B/E4B) and each block's per-layer input gate and projection: a table
    lookup and two narrow matrices per layer that every rank needs in full (every rank runs every
    layer); the table is large but is read a row per token, which is why it may live in CPU memory;
  * norms, ``layer_scalar``, the embedding/unembedding, and Gemma 3n's AltUp and LAuReL parts,
    which act on the replicated residual stream;
  * Gemma 3n's sparse MLPs (its first layers): the cutoff is a statistic over all of a token's
    MLP columns, which no rank holds alone.

Hooks see whole activations: a hook point inside the split (q/k/v, scores, pattern, z, the MLP's
neurons, the experts' outputs) gathers the slices of every rank before its hooks run and keeps
this rank's slice of what they return. That costs one all-gather (all-reduce for the experts) per
hooked point per pass (hooks that are not attached cost nothing); the residual stream and logits
are replicated and need none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# Hook points inside the split, and the axis of their activation that holds heads or columns.
_QUERY_SHARDED = {"hook_q": 2, "hook_rot_q": 2, "hook_attn_scores_pre_softcap": 1, "hook_attn_scores": 1,
                  "hook_pattern": 1, "hook_z": 2}
_KV_SHARDED = {"hook_k": 2, "hook_v": 2, "hook_rot_k": 2}  # only where the key/value heads are split
_NORM_SHARDED = {"hook_inv_rms": 2, "hook_normalized": 2}  # q/k/v norms: [batch, pos, head, ...]
_MLP_SHARDED = {"hook_pre": -1, "hook_pre_linear": -1, "hook_post": -1}


@dataclass(frozen=True)
class Split:
    """How one weight is split: along ``dim`` over ``size`` ranks. ``blocks``: the axis holds that
    many stacked matrices (an expert's [gate | up] rows), each split on its own. ``dtensor``: the
    loaded slice becomes a DTensor (False: a plain tensor the module uses as it is, the experts)."""

    shape: tuple[int, ...]  # the whole weight's
    dim: int
    size: int
    blocks: int = 1
    dtensor: bool = True


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


def kv_heads_kept(rank: int, heads_per_rank: int, n_heads: int, n_kv_heads: int) -> slice | list[int]:
    """The key/value heads the query heads of ``rank`` read, when every rank computes them all.

    Query head h reads kv head ``h // group``. When every rank's query heads form whole groups, or
    lie in one group, that is a range of kv heads (a view, as grouped-query attention expects);
    otherwise (a world size that cuts groups unevenly) one kv head per query head, repeated. Either
    way every rank keeps as many as the others.
    """
    group = n_heads // n_kv_heads
    first, last = rank * heads_per_rank, (rank + 1) * heads_per_rank - 1
    if heads_per_rank % group == 0 or group % heads_per_rank == 0:
        return slice(first // group, last // group + 1)
    return [h // group for h in range(first, last + 1)]


class _KeptHeads(_Sharding):
    """Key/value heads computed whole on every rank, of which each keeps those its queries read
    (``kv_heads_kept``): what a KV-shared layer reads back from its source. ``full`` reassembles
    all kv heads from the ranks' kept ones; ``local`` keeps this rank's again."""

    def __init__(self, kept: list[slice | list[int]], n_kv_heads: int) -> None:
        super().__init__(2)
        heads = [list(range(n_kv_heads)[k]) if isinstance(k, slice) else k for k in kept]  # per rank
        self.kept, self.sizes = kept[self.rank], [len(h) for h in heads]
        where = {}  # kv head -> (rank, index among that rank's kept heads), the first found
        for rank, rank_heads in enumerate(heads):
            for i, head in enumerate(rank_heads):
                where.setdefault(head, (rank, i))
        self.where = [where[head] for head in range(n_kv_heads)]

    def full(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x.new_empty(*x.shape[:2], n, *x.shape[3:]) for n in self.sizes]
        dist.all_gather(parts, x.contiguous())
        return torch.stack([parts[rank][:, :, i] for rank, i in self.where], dim=2)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, self.kept].contiguous()


class _PartialSum:
    """An activation each rank holds a partial sum of, all-reduced later (the experts' outputs before
    their sum over the chosen experts). Hooks see the total; rank 0 carries what they return and
    the others zeros, so the later all-reduce yields exactly what the hooks returned."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()

    def full(self, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    def local(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.rank == 0 else torch.zeros_like(x)


def _sum_over_ranks(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on the experts: add up the ranks' partial outputs (each ran its columns)."""
    output = output.clone()
    dist.all_reduce(output)
    return output


def check(config) -> int:
    """The world size, after checking that the model can be split over it."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("tensor_parallel=True needs a process group: run under torchrun and call "
                           "torch.distributed.init_process_group() first (see docs/bigger_models.md)")
    size = dist.get_world_size()
    widths = [("n_heads", config.n_heads)]
    widths += [(f"d_mlp of layer {layer}", config.d_mlp_for(layer)) for layer in range(config.n_layers)
               if not config.sparsity_for(layer)]  # sparse MLPs are replicated (see above)
    if config.n_experts:
        widths.append(("d_expert", config.d_expert))
    for what, count in widths:
        if count % size:
            raise ValueError(f"tensor_parallel=True over {size} ranks: the model's {what} ({count}) does not "
                             f"divide by {size}; use a world size that divides it, or device_map=")
    return size


def parallelize(model: nn.Module, device: torch.device) -> dict[str, Split]:
    """Split ``model`` (on the meta device) with DTensor; return, for each split weight, how it is
    split, so the loader can read just this rank's slice."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    size, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh(device.type, (size,))
    whole = {name: tuple(p.shape) for name, p in model.named_parameters()}
    plan = {}
    for block in model.blocks:
        at = f"blocks.{block.layer}."
        plan[at + "attn.q_proj"], plan[at + "attn.o_proj"] = ColwiseParallel(), RowwiseParallel()
        if block.attn.n_kv_heads % size == 0:  # else replicated: every rank computes all kv heads
            for name in ("k_proj", "v_proj"):
                if getattr(block.attn, name) is not None:  # KV-shared layers have neither, K=V layers no v_proj
                    plan[f"{at}attn.{name}"] = ColwiseParallel()
        if block.mlp.sparsify is None:
            plan[at + "mlp.gate_proj"], plan[at + "mlp.up_proj"] = ColwiseParallel(), ColwiseParallel()
            plan[at + "mlp.down_proj"] = RowwiseParallel()
    parallelize_module(model, mesh, plan)
    splits = {name: Split(whole[name], 0 if isinstance(plan[name.rsplit(".", 1)[0]], ColwiseParallel) else 1, size)
              for name, _ in model.named_parameters() if name.rsplit(".", 1)[0] in plan}

    for block in model.blocks:  # each rank computes its share of the heads
        attn = block.attn
        heads = attn.n_heads // size
        kv_split = attn.n_kv_heads % size == 0
        sharded = dict(_QUERY_SHARDED, **(_KV_SHARDED if kv_split else {}))
        if kv_split:
            attn.n_kv_heads //= size
        else:
            kept = [kv_heads_kept(r, heads, attn.n_heads, attn.n_kv_heads) for r in range(size)]
            if attn.kv_source != attn.layer:  # reads its source's kept heads: hooks see all of them
                for name in ("hook_shared_k", "hook_shared_v"):
                    getattr(attn, name).sharding = _KeptHeads(kept, attn.n_kv_heads)
            attn.kv_heads_kept = kept[rank]
            attn.n_kv_heads = len(range(attn.n_kv_heads)[kept[rank]]) if isinstance(kept[rank], slice) else heads
        attn.n_heads = heads
        if kv_split and attn.kv_source != attn.layer:
            sharded.update(hook_shared_k=2, hook_shared_v=2)
        for name, dim in sharded.items():
            if hasattr(attn, name):
                getattr(attn, name).sharding = _Sharding(dim)
        for norm in (attn.q_norm, *((attn.k_norm, attn.v_norm) if kv_split else ())):
            if norm is not None:
                for name, dim in _NORM_SHARDED.items():
                    getattr(norm, name).sharding = _Sharding(dim)
        if block.mlp.sparsify is None:
            for name, dim in _MLP_SHARDED.items():
                getattr(block.mlp, name).sharding = _Sharding(dim)
        attn.hook_result.sharding = _SummedHeads(2)
        if block.moe is not None:
            experts = block.moe.experts
            at = f"blocks.{block.layer}.moe.experts."
            width = experts.cfg.d_expert // size
            # Meta parameters of this rank's shape: the loader fills them with its slice.
            like = dict(device="meta", dtype=experts.down_proj.dtype)
            experts.gate_up_proj = nn.Parameter(torch.empty(experts.cfg.n_experts, 2 * width, experts.cfg.d_model,
                                                            **like), requires_grad=False)
            experts.down_proj = nn.Parameter(torch.empty(experts.cfg.n_experts, experts.cfg.d_model, width, **like),
                                             requires_grad=False)
            splits[at + "gate_up_proj"] = Split(whole[at + "gate_up_proj"], 1, size, blocks=2, dtensor=False)
            splits[at + "down_proj"] = Split(whole[at + "down_proj"], 2, size, dtensor=False)
            experts.hook_expert_out.sharding = _PartialSum()
            experts.register_forward_hook(_sum_over_ranks)
    model.tp_size = size
    model.tp_mesh = mesh
    return splits


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


def local_slice(tensor_slice, split: Split) -> torch.Tensor:
    """This rank's slice of a weight, read from a safetensors ``get_slice`` handle (nothing else is read)."""
    rank = dist.get_rank()
    block = split.shape[split.dim] // split.blocks
    step = block // split.size
    parts = []
    for b in range(split.blocks):
        start = b * block + rank * step
        index = (slice(None),) * split.dim + (slice(start, start + step),)
        parts.append(tensor_slice[index])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=split.dim)


def distributed(local: torch.Tensor, split: Split, mesh) -> torch.Tensor:
    """The loaded slice as the model holds it: a DTensor sharded along ``split.dim``, or as it is."""
    from torch.distributed.tensor import DTensor, Shard

    if not split.dtensor:
        return local
    return DTensor.from_local(local, mesh, [Shard(split.dim)], run_check=False)
