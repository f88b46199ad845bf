"""Exercises of the interpretability lessons (notebooks 08 to 14), registered with ``gemma_lab.exercises``.

Each exercise is a small piece of a technique the lesson then uses through the package: the learner
writes it, ``check`` compares it with the reference below on several random trials (small random
Gemma models of all three generations, random activations, float32 and bfloat16), and the usual
mistakes are recognised by name.

    08_hooks_and_caching            run_with_head_ablated
    09_attention_patterns_and_induction  prev_token_score, induction_score
    10_logit_lens                   logit_lens_for_position
    11_activation_patching_ioi      logit_difference, patch_residual
    12_steering                     steering_vector
    13_gemma2_and_gemma3            softcap, sliding_window_mask
    14_real_weights                 weight_memory_gib, kv_cache_bytes

The references call the package wherever it has the piece (``interp.ablate_heads``,
``interp.unembed``, the model's own attention mask, ``GemmaConfig.n_params``), so a learner's answer
is checked against what the lessons run. Solutions, written independently, are in ``notebooks/solutions/``.

Imports torch, the model and the config; never widgets or plotting.
"""

from __future__ import annotations

import torch

from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.exercises import choice, exercise, randint, trial_number
from gemma_lab.model import Gemma, attention_mask, init_weights

# The small random-weight architectures the model-based trials cycle through: one per generation.
_SMALL_PRESETS = ("test-gemma", "test-gemma2", "test-gemma3")


def _small_model(generator: torch.Generator) -> Gemma:
    """A small random Gemma; trial t uses generation t % 3 + 1, so every generation is tried."""
    name = _SMALL_PRESETS[trial_number(generator) % len(_SMALL_PRESETS)]
    seed = randint(generator, 0, 10_000)
    # std 0.1 rather than init_weights' 0.02: spread-out logits make wrong answers visibly wrong.
    return init_weights(Gemma(PRESETS[name]), seed=seed, std=0.1).eval()


def _random_float(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Normal values in float32 on most trials and bfloat16 on the last ones (dtype must be kept)."""
    dtype = torch.bfloat16 if trial_number(generator) >= 4 else torch.float32
    return torch.randn(shape, generator=generator).to(dtype)


# ---------------------------------------------------------------------------------------------
# 08 hooks and caching
# ---------------------------------------------------------------------------------------------


def run_with_head_ablated_inputs(generator: torch.Generator) -> tuple:
    model = _small_model(generator)
    tokens = torch.randint(0, model.cfg.vocab_size, (randint(generator, 1, 2), randint(generator, 3, 12)),
                           generator=generator)
    return model, tokens, randint(generator, 0, model.cfg.n_layers - 1), randint(generator, 0, model.cfg.n_heads - 1)


def run_with_head_ablated_reference(model: Gemma, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Logits with one head's output ``z`` set to zero: the package's own zero-ablation."""
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    with interp.ablate_heads(model, [(layer, head)]):
        return model(tokens)


def _ablate_position_instead(model, tokens, layer, head):
    def zero(z, hook):
        z = z.clone()
        z[:, head] = 0.0  # axis 1 of z is pos, not head
        return z

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])


def _ablate_query_instead(model, tokens, layer, head):
    def zero(q, hook):
        q = q.clone()
        q[:, :, head] = 0.0
        return q

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_q", zero)])


def _ablate_every_layer(model, tokens, layer, head):
    def zero(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    every_z = [(f"blocks.{i}.attn.hook_z", zero) for i in range(model.cfg.n_layers)]
    return model.run_with_hooks(tokens, fwd_hooks=every_z)


exercise(
    "run_with_head_ablated",
    make_inputs=run_with_head_ablated_inputs,
    reference=run_with_head_ablated_reference,
    mistakes={
        "z has axes [batch, pos, head, d_head]: did you index the pos axis (z[:, head]) instead of "
        "the head axis (z[:, :, head])?": _ablate_position_instead,
        "Zeroing the query does not silence a head (softmax of all-zero scores is uniform attention, "
        "not nothing): hook blocks.{layer}.attn.hook_z, the head's output.": _ablate_query_instead,
        "Did your hook run in every layer? Attach it to the one name f'blocks.{layer}.attn.hook_z'.":
            _ablate_every_layer,
    },
    notebook="08_hooks_and_caching",
    trials=4,
)


# ---------------------------------------------------------------------------------------------
# 09 attention patterns and induction heads
# ---------------------------------------------------------------------------------------------


def _random_pattern(generator: torch.Generator, q_len: int) -> torch.Tensor:
    """A causal attention pattern [batch, head, q_pos, k_pos]: rows sum to one, future keys are zero."""
    batch, heads = randint(generator, 1, 3), randint(generator, 1, 6)
    scores = torch.randn(batch, heads, q_len, q_len, generator=generator) * 3
    future = torch.ones(q_len, q_len, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def prev_token_score_inputs(generator: torch.Generator) -> tuple:
    return (_random_pattern(generator, randint(generator, 2, 20)),)


def prev_token_score_reference(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one before it, per head: ``[head]``.

    pattern: ``[batch, head, q_pos, k_pos]``. Queries 1 .. q_pos-1 (position 0 has no predecessor).
    """
    to_previous = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)  # [batch, head, q_pos - 1]
    return to_previous.mean(dim=(0, 2))


def _prev_token_includes_diagonal(pattern):
    return pattern.diagonal(dim1=-2, dim2=-1).mean(dim=(0, 2))


def _prev_token_next_position(pattern):
    return pattern.diagonal(offset=1, dim1=-2, dim2=-1).mean(dim=(0, 2))


exercise(
    "prev_token_score",
    make_inputs=prev_token_score_inputs,
    reference=prev_token_score_reference,
    mistakes={
        "That is attention to the token itself (the main diagonal): the previous token is one column "
        "to the left, pattern[..., q, q - 1].": _prev_token_includes_diagonal,
        "Rows are queries and columns keys: the previous token of query q is key q - 1, below the "
        "diagonal (offset=-1), not above it.": _prev_token_next_position,
    },
    notebook="09_attention_patterns_and_induction",
)


def induction_score_inputs(generator: torch.Generator) -> tuple:
    seq_len = randint(generator, 2, 10)
    return _random_pattern(generator, 1 + 2 * seq_len), seq_len


def induction_score_reference(pattern: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean attention an induction head would pay, per head: ``[head]``.

    The sequence is ``<bos>, r_0 .. r_{n-1}, r_0 .. r_{n-1}`` (n = seq_len), so the token at position
    ``q`` in the second copy first appeared at ``q - n``, and the token that followed it is at
    ``q - n + 1``: that is where an induction head looks. Queries: every position of the second copy.
    """
    diagonal = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # entries [q, q - n + 1]
    second_copy = diagonal[..., -seq_len:]  # the queries q = n + 1 .. 2n
    return second_copy.mean(dim=(0, 2))


def _induction_duplicate_token(pattern, seq_len):
    return pattern.diagonal(offset=-seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(0, 2))


def _induction_all_queries(pattern, seq_len):
    return pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).mean(dim=(0, 2))


exercise(
    "induction_score",
    make_inputs=induction_score_inputs,
    reference=induction_score_reference,
    mistakes={
        "That is the duplicate-token score (attention to the earlier copy of the same token, q - n). "
        "An induction head looks one further: at the token that came *after* it, q - n + 1.":
            _induction_duplicate_token,
        "Average over the queries of the second copy only (the last seq_len positions): in the "
        "first copy there is nothing to repeat yet.": _induction_all_queries,
    },
    notebook="09_attention_patterns_and_induction",
)


# ---------------------------------------------------------------------------------------------
# 10 the logit lens
# ---------------------------------------------------------------------------------------------


def logit_lens_inputs(generator: torch.Generator) -> tuple:
    model = _small_model(generator)
    n_pos = randint(generator, 2, 8)
    tokens = torch.randint(0, model.cfg.vocab_size, (1, n_pos), generator=generator)
    _, cache = model.run_with_cache(tokens, names_filter=_is_residual)
    stack = [cache["hook_embed"][0]] + [cache["resid_post", layer][0] for layer in range(model.cfg.n_layers)]
    return model, torch.stack(stack), randint(generator, 0, n_pos - 1)


def _is_residual(name: str) -> bool:
    return name == "hook_embed" or name.endswith("hook_resid_post")


def logit_lens_for_position_reference(model: Gemma, resid_stack: torch.Tensor, pos: int) -> torch.Tensor:
    """Next-token probabilities read off the residual stream at ``pos`` after each layer: ``[layer, vocab]``.

    resid_stack: ``[layer, pos, d_model]``, the embedding then the stream after each block. Each row
    goes through what the model does after its last block: the final RMSNorm, the tied unembedding,
    Gemma 2's final softcap, then a softmax.
    """
    from gemma_lab import interp  # lazily: loading the exercises must not need the interp layer

    return torch.softmax(interp.unembed(model, resid_stack[:, pos, :]).float(), dim=-1)


def _lens_without_norm(model, resid_stack, pos):
    logits = resid_stack[:, pos, :] @ model.embed.weight.T
    if model.cfg.final_softcap is not None:
        logits = model.cfg.final_softcap * torch.tanh(logits / model.cfg.final_softcap)
    return torch.softmax(logits.float(), dim=-1)


def _lens_without_softcap(model, resid_stack, pos):
    return torch.softmax((model.ln_final(resid_stack[:, pos, :]) @ model.embed.weight.T).float(), dim=-1)


def _lens_softmax_over_layers(model, resid_stack, pos):
    logits = model.ln_final(resid_stack[:, pos, :]) @ model.embed.weight.T
    if model.cfg.final_softcap is not None:
        logits = model.cfg.final_softcap * torch.tanh(logits / model.cfg.final_softcap)
    return torch.softmax(logits.float(), dim=0)


exercise(
    "logit_lens_for_position",
    make_inputs=logit_lens_inputs,
    reference=logit_lens_for_position_reference,
    mistakes={
        "Did you skip the final norm? The unembedding was trained on model.ln_final's output, not on "
        "the raw residual stream.": _lens_without_norm,
        "Gemma 2 caps its logits (cfg.final_softcap: cap * tanh(logits / cap)) before the softmax; "
        "apply it when it is not None.": _lens_without_softcap,
        "The softmax goes over the vocab axis (dim=-1), not over layers.": _lens_softmax_over_layers,
    },
    notebook="10_logit_lens",
)


# ---------------------------------------------------------------------------------------------
# 11 activation patching on indirect-object identification
# ---------------------------------------------------------------------------------------------


def logit_difference_inputs(generator: torch.Generator) -> tuple:
    batch, n_pos, vocab = randint(generator, 1, 4), randint(generator, 2, 9), randint(generator, 8, 40)
    logits = _random_float(generator, (batch, n_pos, vocab))
    io_ids = torch.randint(0, vocab, (batch,), generator=generator)
    s_ids = (io_ids + torch.randint(1, vocab, (batch,), generator=generator)) % vocab  # never the IO token
    return logits, io_ids, s_ids


def logit_difference_reference(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``logit(IO) - logit(S)`` at the last position: a 0-d float32 tensor."""
    last = logits[:, -1, :].float()  # [batch, vocab]
    rows = torch.arange(last.shape[0])
    return (last[rows, io_ids] - last[rows, s_ids]).mean()


def _logit_difference_first_position(logits, io_ids, s_ids):
    first = logits[:, 0, :].float()
    rows = torch.arange(first.shape[0])
    return (first[rows, io_ids] - first[rows, s_ids]).mean()


def _logit_difference_swapped(logits, io_ids, s_ids):
    return -logit_difference_reference(logits, io_ids, s_ids)


def _logit_difference_summed(logits, io_ids, s_ids):
    return logit_difference_reference(logits, io_ids, s_ids) * logits.shape[0]


exercise(
    "logit_difference",
    make_inputs=logit_difference_inputs,
    reference=logit_difference_reference,
    mistakes={
        "The prediction for the answer is made at the last position (logits[:, -1]), not the first.":
            _logit_difference_first_position,
        "The sign: logit(IO) - logit(S), so that a model that gets IOI right scores positive.":
            _logit_difference_swapped,
        "Average over the batch (.mean()) rather than summing, so the number does not grow with the "
        "number of prompts.": _logit_difference_summed,
    },
    notebook="11_activation_patching_ioi",
)


def patch_residual_inputs(generator: torch.Generator) -> tuple:
    batch, n_pos, d_model = randint(generator, 1, 3), randint(generator, 2, 10), randint(generator, 4, 32)
    corrupted = _random_float(generator, (batch, n_pos, d_model))
    clean = _random_float(generator, (batch, n_pos, d_model)).to(corrupted.dtype)
    return corrupted, clean, randint(generator, 0, n_pos - 1)


def patch_residual_reference(corrupted: torch.Tensor, clean: torch.Tensor, pos: int) -> torch.Tensor:
    """The corrupted run's residual stream ``[batch, pos, d_model]`` with position ``pos`` taken from the clean run."""
    patched = corrupted.clone()
    patched[:, pos, :] = clean[:, pos, :]
    return patched


def _patch_from_pos_on(corrupted, clean, pos):
    patched = corrupted.clone()
    patched[:, pos:, :] = clean[:, pos:, :]
    return patched


def _patch_wrong_direction(corrupted, clean, pos):
    patched = clean.clone()
    patched[:, pos, :] = corrupted[:, pos, :]
    return patched


exercise(
    "patch_residual",
    make_inputs=patch_residual_inputs,
    reference=patch_residual_reference,
    mistakes={
        "Patch one position only (patched[:, pos]); a slice pos: patches every later position too.":
            _patch_from_pos_on,
        "Direction: we run the corrupted prompt and restore one clean activation, so start from "
        "`corrupted` and copy in clean[:, pos].": _patch_wrong_direction,
    },
    notebook="11_activation_patching_ioi",
)


# ---------------------------------------------------------------------------------------------
# 12 steering
# ---------------------------------------------------------------------------------------------


def steering_vector_inputs(generator: torch.Generator) -> tuple:
    d_model = randint(generator, 4, 32)
    acts_a = _random_float(generator, (randint(generator, 1, 6), d_model)) + 1.0
    acts_b = _random_float(generator, (randint(generator, 1, 6), d_model)).to(acts_a.dtype)
    return acts_a, acts_b


def steering_vector_reference(acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
    """``mean(acts_a) - mean(acts_b)`` over prompts: ``[n_a, d_model], [n_b, d_model] -> [d_model]``."""
    return acts_a.mean(dim=0) - acts_b.mean(dim=0)


def _steering_reversed(acts_a, acts_b):
    return acts_b.mean(dim=0) - acts_a.mean(dim=0)


def _steering_normalised(acts_a, acts_b):
    direction = acts_a.mean(dim=0) - acts_b.mean(dim=0)
    return direction / direction.norm()


def _steering_summed(acts_a, acts_b):
    return acts_a.sum(dim=0) - acts_b.sum(dim=0)


exercise(
    "steering_vector",
    make_inputs=steering_vector_inputs,
    reference=steering_vector_reference,
    mistakes={
        "The direction points from B to A: mean(acts_a) - mean(acts_b).": _steering_reversed,
        "Keep the length: the difference of means already has the size of a real change in the "
        "residual stream, which is what makes a coefficient of 1 meaningful.": _steering_normalised,
        "A sum grows with the number of prompts, and the two sets need not be the same size: take "
        "the mean of each.": _steering_summed,
    },
    notebook="12_steering",
)


# ---------------------------------------------------------------------------------------------
# 13 Gemma 2 and Gemma 3
# ---------------------------------------------------------------------------------------------


def softcap_inputs(generator: torch.Generator) -> tuple:
    cap = choice(generator, (50.0, 30.0, 5.0, 1.0))
    return _random_float(generator, (randint(generator, 1, 4), randint(generator, 1, 16))) * 3 * cap, cap


def softcap_reference(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``: close to ``x`` near zero, never beyond ``±cap`` (Gemma 2's softcaps)."""
    return cap * torch.tanh(x / cap)


def _softcap_hard_clip(x, cap):
    return x.clamp(-cap, cap)


def _softcap_no_rescale(x, cap):
    return torch.tanh(x / cap)


exercise(
    "softcap",
    make_inputs=softcap_inputs,
    reference=softcap_reference,
    mistakes={
        "A softcap is smooth: cap * tanh(x / cap), not a hard clamp (which has no gradient beyond the cap).":
            _softcap_hard_clip,
        "tanh lives in (-1, 1): multiply by cap again so that small values pass unchanged.": _softcap_no_rescale,
    },
    notebook="13_gemma2_and_gemma3",
)


def sliding_window_mask_inputs(generator: torch.Generator) -> tuple:
    n_pos = randint(generator, 1, 16)
    return n_pos, randint(generator, 1, n_pos + 2)


def sliding_window_mask_reference(n_pos: int, window: int) -> torch.Tensor:
    """``[q_pos, k_pos]`` bool, True where a query may attend: the model's own causal sliding-window mask."""
    positions = torch.arange(n_pos)[None]
    return attention_mask(positions, positions, torch.ones_like(positions, dtype=torch.bool), window)[0]


def _window_one_too_wide(n_pos, window):
    q, k = torch.arange(n_pos)[:, None], torch.arange(n_pos)[None, :]
    return (k <= q) & (q - k <= window)


def _window_not_causal(n_pos, window):
    q, k = torch.arange(n_pos)[:, None], torch.arange(n_pos)[None, :]
    return (q - k).abs() < window


exercise(
    "sliding_window_mask",
    make_inputs=sliding_window_mask_inputs,
    reference=sliding_window_mask_reference,
    mistakes={
        "The window counts the query itself: a window of w sees q and the w - 1 before it, so q - k < w.":
            _window_one_too_wide,
        "Still causal: a key after the query (k > q) is never visible, window or not.": _window_not_causal,
    },
    notebook="13_gemma2_and_gemma3",
)


# ---------------------------------------------------------------------------------------------
# 14 real weights
# ---------------------------------------------------------------------------------------------

_FULL_SIZE = tuple(name for name in PRESETS if not name.startswith("test-"))
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def weight_memory_gib_inputs(generator: torch.Generator) -> tuple:
    return PRESETS[choice(generator, _FULL_SIZE)], choice(generator, _DTYPES)


def weight_memory_gib_reference(cfg: GemmaConfig, dtype: torch.dtype) -> float:
    """GiB (2**30 bytes) the weights take: parameters (tied embedding once) times bytes per parameter."""
    return cfg.n_params() * torch.finfo(dtype).bits / 8 / 2**30


def _memory_in_gb(cfg, dtype):
    return cfg.n_params() * torch.finfo(dtype).bits / 8 / 1e9


def _memory_untied(cfg, dtype):
    return (cfg.n_params() + cfg.vocab_size * cfg.d_model) * torch.finfo(dtype).bits / 8 / 2**30


def _memory_bits(cfg, dtype):
    return cfg.n_params() * torch.finfo(dtype).bits / 2**30


exercise(
    "weight_memory_gib",
    make_inputs=weight_memory_gib_inputs,
    reference=weight_memory_gib_reference,
    mistakes={
        "A GiB is 2**30 bytes (1e9 bytes is a GB, about 7% less).": _memory_in_gb,
        "Gemma ties the unembedding to the embedding: one matrix, counted once (cfg.n_params() does).":
            _memory_untied,
        "finfo(dtype).bits counts bits: divide by 8 for bytes.": _memory_bits,
    },
    notebook="14_real_weights",
)


# Trial t: a Gemma 1, 2 and 3 model each, then the same again, with contexts shorter than, equal to
# and longer than the sliding window.
_KV_TRIALS = (("gemma-2b", 1.0), ("gemma2-2b", 2.0), ("gemma3-1b", 0.5), ("gemma-7b", 0.25),
              ("gemma2-9b", 1.0), ("gemma3-4b", 16.0))


def kv_cache_bytes_inputs(generator: torch.Generator) -> tuple:
    name, context_in_windows = _KV_TRIALS[trial_number(generator) % len(_KV_TRIALS)]
    cfg = PRESETS[name]
    n_tokens = int((cfg.sliding_window or 4096) * context_in_windows) + randint(generator, -1, 1)
    return cfg, n_tokens, choice(generator, _DTYPES)


def kv_cache_bytes_reference(cfg: GemmaConfig, n_tokens: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values for ``n_tokens`` tokens of one sequence, summed over layers.

    Per layer and kept token: a key and a value, each ``n_kv_heads x d_head`` numbers. A global layer
    keeps every token; a sliding-window layer only the last ``sliding_window`` (what ``KVCache`` keeps).
    Gemma 4: global layers have their own head width and kv heads, and KV-shared layers keep nothing.
    """
    total = 0
    for layer in range(cfg.n_layers):
        if cfg.is_kv_shared(layer):
            continue
        per_token = 2 * cfg.n_kv_heads_for(layer) * cfg.d_head_for(layer) * torch.finfo(dtype).bits // 8
        total += per_token * (min(n_tokens, cfg.sliding_window) if cfg.is_local(layer) else n_tokens)
    return total


def _kv_ignoring_window(cfg, n_tokens, dtype):
    return 2 * cfg.n_kv_heads * cfg.d_head * torch.finfo(dtype).bits // 8 * n_tokens * cfg.n_layers


def _kv_query_heads(cfg, n_tokens, dtype):
    per_token = 2 * cfg.n_heads * cfg.d_head * torch.finfo(dtype).bits // 8
    kept = [min(n_tokens, cfg.sliding_window) if cfg.is_local(layer) else n_tokens for layer in range(cfg.n_layers)]
    return per_token * sum(kept)


def _kv_keys_only(cfg, n_tokens, dtype):
    return kv_cache_bytes_reference(cfg, n_tokens, dtype) // 2


exercise(
    "kv_cache_bytes",
    make_inputs=kv_cache_bytes_inputs,
    reference=kv_cache_bytes_reference,
    mistakes={
        "Sliding-window layers (cfg.is_local(layer)) keep at most cfg.sliding_window tokens.": _kv_ignoring_window,
        "Only the key/value heads are cached (cfg.n_kv_heads): grouped- and multi-query attention "
        "share them between query heads, which is the point.": _kv_query_heads,
        "Both keys and values are cached: a factor 2.": _kv_keys_only,
    },
    notebook="14_real_weights",
)
