"""KVCache: the keys and values every layer has computed so far, for step-by-step decoding.

Preallocated once per generation. Global layers keep every token (up to ``max_len``); sliding-window
layers keep a ring of ``sliding_window`` slots, since a query never looks further back than that.
Gemma 4's KV-shared layers keep nothing: they attend to what their source layer keeps
(``config.kv_source``); its wider global heads get buffers of their own width.
Each slot also remembers the absolute position of its token and whether it is a real token or
left padding, so the attention mask is computed from positions, whatever the slot order.

The model calls ``update`` from inside attention; generation code creates the cache and reads
``length``. A compiled decode step (``generation.decode_step(..., compile=True)``) sets
``write_index`` for one pass: the new token then goes to that slot and attention reads the whole
buffer, so every step has the same shapes and reads no Python-side counter (one traced graph
serves them all). Imports: torch and the config only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_lab.config import GemmaConfig


@dataclass
class LayerKV:
    """What attention may look at on one layer: keys/values ``[batch, kv_head, k_pos, d_head]``."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor  # [batch, k_pos] absolute position of each key
    valid: torch.Tensor  # [batch, k_pos] False for left padding and empty slots


class KVCache:
    """Per-layer key/value buffers of one batch of sequences, sliding-window aware."""

    def __init__(self, config: GemmaConfig, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", layer_devices: list[torch.device] | None = None,
                 kv_heads: list[int] | None = None) -> None:
        """``layer_devices``: one per layer, for a model placed across devices (default: ``device``).
        ``kv_heads``: one per layer, the kv heads kept (default: the config's); under tensor
        parallelism each rank keeps those its query heads read (see tensor_parallel.py)."""
        if max_len < 1 or batch_size < 1:
            raise ValueError(f"KVCache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        self.config = config
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0  # tokens (padding included) written so far, per row
        # Hand a sliding-window ring over oldest first (True) or as it lies in memory (False: the
        # model sets this when no hook is attached; the mask comes from positions, so both attend
        # to the same keys, and the in-memory order costs no copy per decoded token).
        self.keys_in_order = True
        # Fixed-shape decoding (the compiled step): the slot of the next token, as a 0-d tensor. Set by
        # generation.decode_step around one pass, None otherwise; the caller then counts `length`.
        self.write_index: torch.Tensor | None = None
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens so far, per row
        self.capacity: list[int] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []
        for layer in range(config.n_layers):
            capacity = min(max_len, config.sliding_window) if config.is_local(layer) else max_len
            if config.is_kv_shared(layer):  # Gemma 4: reads its source layer's keys and values
                capacity = 0
            self.capacity.append(capacity)
            heads = kv_heads[layer] if kv_heads is not None else config.n_kv_heads_for(layer)
            shape = (batch_size, heads, capacity, config.d_head_for(layer))
            where = layer_devices[layer] if layer_devices is not None else device
            self.keys.append(torch.zeros(shape, dtype=dtype, device=where))
            self.values.append(torch.zeros(shape, dtype=dtype, device=where))  # (zeros_like on meta costs seconds of imports)
            self.positions.append(torch.full((batch_size, capacity), -1, dtype=torch.long, device=where))
            self.valid.append(torch.zeros(batch_size, capacity, dtype=torch.bool, device=where))

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int) -> "KVCache":
        """A cache matching the model's config, dtype and device (each block's, if placed across devices)."""
        return cls(model.cfg, batch_size, max_len, dtype=model.dtype, device=model.device,
                   layer_devices=getattr(model, "block_devices", None),
                   kv_heads=[block.attn.n_kv_heads for block in model.blocks] if hasattr(model, "tp_mesh") else None)

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
               valid: torch.Tensor) -> LayerKV:
        """Store the new tokens' keys/values ``[batch, kv_head, pos, d_head]``; return what to attend to.

        Called once per layer per forward pass; ``advance`` is called by the model afterwards.
        """
        if self.write_index is not None:
            return self._update_fixed_shape(layer, keys, values, positions, valid)
        n_new = keys.shape[2]
        self.check_room(n_new)
        capacity = self.capacity[layer]
        if not self.config.is_local(layer):
            span = slice(self.length, self.length + n_new)
            self._write(layer, span, keys, values, positions, valid)
            end = self.length + n_new
            return LayerKV(self.keys[layer][:, :, :end], self.values[layer][:, :, :end],
                           self.positions[layer][:, :end], self.valid[layer][:, :end])
        # Sliding-window layer: a ring of `window` slots. One new token is written first and then
        # attends to the ring (it holds exactly the keys the window allows). A longer chunk attends
        # to the old ring plus itself, then its last `capacity` tokens are written. Either way the
        # keys are handed over oldest first, empty slots left out, so k_pos is in position order
        # (as attention patterns are drawn) and a prefill into a fresh cache attends to exactly
        # the keys of a forward pass without a cache.
        if n_new == 1:
            slot = self.length % capacity
            self._write(layer, slice(slot, slot + 1), keys, values, positions, valid)
            if not self.keys_in_order and self.length + 1 >= capacity:  # the ring is full: all of it
                return LayerKV(self.keys[layer], self.values[layer], self.positions[layer], self.valid[layer])
            return self._ring_in_order(layer, self.length + 1)
        old = self._ring_in_order(layer, self.length)
        seen = LayerKV(
            torch.cat([old.keys, keys], dim=2), torch.cat([old.values, values], dim=2),
            torch.cat([old.positions, positions], dim=1), torch.cat([old.valid, valid], dim=1),
        )
        keep = min(n_new, capacity)
        for i in range(n_new - keep, n_new):
            slot = (self.length + i) % capacity
            self._write(layer, slice(slot, slot + 1), keys[:, :, i : i + 1], values[:, :, i : i + 1],
                        positions[:, i : i + 1], valid[:, i : i + 1])
        return seen

    def check_room(self, n_new: int) -> None:
        """Raise if ``n_new`` more tokens do not fit."""
        if self.length + n_new > self.max_len:
            raise ValueError(
                f"KVCache is full: {self.length} + {n_new} tokens exceed max_len={self.max_len}; "
                "create the cache with a larger max_len"
            )

    def _update_fixed_shape(self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                            valid: torch.Tensor) -> LayerKV:
        """One token written at ``write_index`` (wrapped on a ring); attend to every slot of the layer.

        Empty slots are ``valid`` False and a ring is read as it lies in memory: the mask comes from
        the stored positions, so the keys attended to are those of ``update``'s path, and the shapes
        never change from step to step.
        """
        slot = (self.write_index % self.capacity[layer]).reshape(1)
        self.keys[layer].index_copy_(2, slot, keys)
        self.values[layer].index_copy_(2, slot, values)
        self.positions[layer].index_copy_(1, slot, positions)
        self.valid[layer].index_copy_(1, slot, valid)
        return LayerKV(self.keys[layer], self.values[layer], self.positions[layer], self.valid[layer])

    def _ring_in_order(self, layer: int, written: int) -> LayerKV:
        """The filled slots of a sliding-window ring, oldest first, after ``written`` tokens.

        Until the ring wraps these are views of its first slots; after that, the two halves
        (oldest from the next slot to overwrite onwards, then the newest) are joined in a copy.
        """
        capacity = self.capacity[layer]
        buffers = (self.keys[layer], self.values[layer], self.positions[layer], self.valid[layer])
        if written <= capacity:
            k, v, p, ok = (b[:, :, :written] if b.ndim == 4 else b[:, :written] for b in buffers)
            return LayerKV(k, v, p, ok)
        start = written % capacity
        k, v = (torch.cat([b[:, :, start:], b[:, :, :start]], dim=2) for b in buffers[:2])
        p, ok = (torch.cat([b[:, start:], b[:, :start]], dim=1) for b in buffers[2:])
        return LayerKV(k, v, p, ok)

    def _write(self, layer: int, span: slice, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
               valid: torch.Tensor) -> None:
        self.keys[layer][:, :, span] = keys
        self.values[layer][:, :, span] = values
        self.positions[layer][:, span] = positions
        self.valid[layer][:, span] = valid

    def advance(self, valid: torch.Tensor) -> None:
        """Count the tokens of the forward pass that just wrote to every layer."""
        self.seen += valid.sum(dim=1)
        if self.write_index is None:  # a fixed-shape step is counted by its caller, outside the compiled graph
            self.length += valid.shape[1]

    def next_positions(self) -> torch.Tensor:
        """``[batch]`` position the next real token of each row will have."""
        return self.seen.clone()

    def layer_kv(self, layer: int) -> LayerKV:
        """The stored keys/values of ``layer`` in the order they were written (oldest first).

        Often views into the cache's buffers: clone before editing them. A Gemma 4 KV-shared layer
        returns its source layer's.
        """
        layer = self.config.kv_source(layer)
        if self.config.is_local(layer):
            return self._ring_in_order(layer, self.length)
        end = self.length
        return LayerKV(self.keys[layer][:, :, :end], self.values[layer][:, :, :end],
                       self.positions[layer][:, :end], self.valid[layer][:, :end])

    def nbytes(self) -> int:
        """Memory held by the key/value buffers."""
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def __repr__(self) -> str:
        return (f"KVCache(batch={self.batch_size}, length={self.length}/{self.max_len}, "
                f"layers={self.config.n_layers}, {self.nbytes() / 2**20:.1f} MiB)")
