"""TransformerLens course code, run verbatim on a HookedGemma.

Each entry of ``UNCHANGED`` is code in the style of TransformerLens's demo notebooks (Main_Demo,
Exploratory_Analysis_Demo, Activation_Patching_in_TL_Demo, Head_Detector_Demo) and ARENA's
chapter 1, written for this test: ``model`` is what ``HookedTransformer.from_pretrained`` would
have returned, ``utils`` is ``transformer_lens.utils``. Only the line that builds the model (and
the import of ``utils``) is translated. After ``# check`` each entry asserts that it gave the right
numbers, computed independently with gemma_lab's own API.

``DIFFERENT`` holds the usages that do not run unchanged (or give other numbers, because Gemma is
not GPT-2): each runs the TransformerLens line, asserts how it fails or differs, and runs the
documented gemma_lab equivalent (docs/transformerlens.md).

``test_share_of_usages_that_run_unchanged`` reports the count.
"""

from __future__ import annotations

import functools
import textwrap

import einops
import numpy as np
import pytest
import torch

import gemma_lab
from gemma_lab import FactoredMatrix, HookedGemma, HookPoint, interp
from gemma_lab import tl_utils as utils
from gemma_lab.tl_views import TLActivationCache

UNCHANGED: dict[str, str] = {}
DIFFERENT: dict[str, str] = {}


def idiom(table: dict[str, str], name: str, code: str) -> None:
    table[name] = textwrap.dedent(code)


# ---- model, config, tokens --------------------------------------------------------------------

idiom(UNCHANGED, "cfg sizes", """
    n_layers, n_heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    d_model, d_mlp, d_vocab, n_ctx = model.cfg.d_model, model.cfg.d_mlp, model.cfg.d_vocab, model.cfg.n_ctx
    # check
    g = model.model.cfg
    assert (n_layers, n_heads, d_head, d_model, d_mlp, d_vocab, n_ctx) == (
        g.n_layers, g.n_heads, g.d_head, g.d_model, g.d_mlp, g.vocab_size, g.max_seq_len)
""")
idiom(UNCHANGED, "zeros on cfg.device", """
    induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)
    # check
    assert induction_score_store.shape == (4, 4) and induction_score_store.device == model.model.device
""")
idiom(UNCHANGED, "loss of a text", """
    loss = model(text, return_type="loss")
    # check
    tokens = torch.tensor([model.gemma_tokenizer.encode(text)])
    logits = model.model(tokens)[0]
    by_hand = -torch.log_softmax(logits, -1)[torch.arange(len(tokens[0]) - 1), tokens[0, 1:]].mean()
    torch.testing.assert_close(loss, by_hand)
""")
idiom(UNCHANGED, "greedy predictions", """
    logits = model(text, return_type="logits")
    prediction = logits.argmax(dim=-1).squeeze()[:-1]
    predicted_str = model.to_string(prediction)
    # check
    tokens = model.to_tokens(text)
    assert torch.equal(prediction, model.model(tokens)[0, :-1].argmax(-1))
    assert isinstance(predicted_str, str)
""")
idiom(UNCHANGED, "to_str_tokens", """
    str_tokens = model.to_str_tokens(text)
    no_bos = model.to_str_tokens(" Claire", prepend_bos=False)
    many = model.to_str_tokens(["The cat", "A dog barked"])
    # check
    ids = model.gemma_tokenizer.encode(text)
    assert str_tokens[0] == "<bos>" and "".join(str_tokens[1:]) == text and len(str_tokens) == len(ids)
    assert "".join(no_bos) == " Claire"
    assert [len(row) for row in many] == [len(model.gemma_tokenizer.encode(t)) for t in ["The cat", "A dog barked"]]
""")
idiom(UNCHANGED, "to_tokens and to_string", """
    tokens = model.to_tokens(text)
    print("Num tokens:", len(model.to_tokens(text)[0]))
    detok = model.to_string(tokens.squeeze())
    batch = model.to_tokens(["The cat sat", "Hi"])
    # check
    assert tokens.tolist() == [model.gemma_tokenizer.encode(text)]
    assert detok == "<bos>" + text
    pad = model.tokenizer.pad_token_id
    assert batch.shape[0] == 2 and batch[1, -1] == pad and batch[0, -1] != pad  # right padding, as TL
""")
idiom(UNCHANGED, "to_string of an id", """
    print(f"Token 256: |{model.to_string(256)}|")
    # check
    assert model.to_string(256) == model.gemma_tokenizer.decode([256])
""")
idiom(UNCHANGED, "to_single_token", """
    mary = model.to_single_token(" Mary")
    john = model.to_single_token(" John")
    # check
    assert [mary] == model.gemma_tokenizer.encode(" Mary", add_bos=False)
    assert mary != john
""")
idiom(UNCHANGED, "get_token_position", """
    with_bos = model.get_token_position(" cat", "The cat sat on the mat")
    without_bos = model.get_token_position(" cat", "The cat sat on the mat", prepend_bos=False)
    first = model.get_token_position(" cat", "The cat sat on the mat is mat-shaped cat", mode="first")
    last = model.get_token_position(" cat", "The cat sat on the mat is mat-shaped cat", mode="last")
    # check
    assert with_bos == without_bos + 1 == 2
    assert first == 2 and last > first
""")
idiom(UNCHANGED, "random tokens with a bos column", """
    batch, seq_len = 2, 8
    prefix = (torch.ones(batch, 1) * model.tokenizer.bos_token_id).long()
    rep_tokens_half = torch.randint(0, model.cfg.d_vocab, (batch, seq_len), dtype=torch.int64)
    rep_tokens = torch.cat([prefix, rep_tokens_half, rep_tokens_half], dim=-1).to(model.cfg.device)
    rep_logits, rep_cache = model.run_with_cache(rep_tokens)
    # check
    assert rep_tokens.shape == (2, 17) and (rep_tokens[:, 0] == model.gemma_tokenizer.bos_id).all()
    assert rep_logits.shape == (2, 17, model.cfg.d_vocab)
""")
idiom(UNCHANGED, "tokenizer decode and encode", """
    tokens = model.to_tokens(text)
    decoded = model.tokenizer.decode(tokens[0])
    encoded = model.tokenizer.encode(text)
    # check
    assert decoded == "<bos>" + text and encoded == tokens[0].tolist()
""")
idiom(UNCHANGED, "named_parameters", """
    for name, param in model.named_parameters():
        if name.startswith("blocks.0.") or "blocks.0." in name:
            pass
    n = sum(p.numel() for p in model.parameters())
    # check
    assert n == model.model.n_params()
""")

# ---- run_with_cache and the cache -------------------------------------------------------------

idiom(UNCHANGED, "cache with remove_batch_dim", """
    gemma_tokens = model.to_tokens(text)
    gemma_logits, gemma_cache = model.run_with_cache(gemma_tokens, remove_batch_dim=True)
    attention_pattern = gemma_cache["pattern", 0, "attn"]
    gemma_str_tokens = model.to_str_tokens(text)
    # check
    _, full = model.model.run_with_cache(gemma_tokens)
    assert torch.equal(attention_pattern, full["blocks.0.attn.hook_pattern"][0])
    assert attention_pattern.shape == (model.cfg.n_heads, len(gemma_str_tokens), len(gemma_str_tokens))
    assert gemma_cache["embed"].ndim == 2
""")
idiom(UNCHANGED, "cache keys and items", """
    logits, cache = model.run_with_cache(text, remove_batch_dim=True)
    layer0 = [(name, tuple(tensor.shape)) for name, tensor in cache.items() if ".0." in name]
    outside = [(name, tuple(tensor.shape)) for name, tensor in cache.items() if "blocks" not in name]
    # check
    names = dict(layer0)
    assert names["blocks.0.attn.hook_pattern"][0] == model.cfg.n_heads
    assert "blocks.0.ln1.hook_scale" in names and "hook_embed" in dict(outside)
""")
idiom(UNCHANGED, "get_act_name spellings", """
    names = [utils.get_act_name("resid_pre", 1), utils.get_act_name("v", 0), utils.get_act_name("z", 2, "attn"),
             utils.get_act_name("attn", 1, "attn"), utils.get_act_name("pattern", 3), utils.get_act_name("post", 1),
             utils.get_act_name("scale", 0, "ln1"), utils.get_act_name("scale"), utils.get_act_name("q_input", 2)]
    # check
    assert names == ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_v", "blocks.2.attn.hook_z",
                     "blocks.1.attn.hook_pattern", "blocks.3.attn.hook_pattern", "blocks.1.mlp.hook_post",
                     "blocks.0.ln1.hook_scale", "ln_final.hook_scale", "blocks.2.hook_q_input"]
    assert all(name in model.hook_dict or name == "blocks.2.hook_q_input" for name in names)
""")
idiom(UNCHANGED, "cache shorthand and negative layers", """
    logits, cache = model.run_with_cache(text)
    final_residual_stream = cache["resid_post", -1]
    scale = cache["ln_final.hook_scale"]
    # check
    assert torch.equal(final_residual_stream, cache["blocks.3.hook_resid_post"])
    torch.testing.assert_close(scale, 1 / cache["ln_final.hook_inv_rms"])
    rms = final_residual_stream.pow(2).mean(-1, keepdim=True).add(model.cfg.eps).sqrt()
    torch.testing.assert_close(scale, rms)
""")
idiom(UNCHANGED, "names_filter and stop_at_layer", """
    attn_layer = 1
    attn_hook_name = utils.get_act_name("pattern", attn_layer)
    _, attn_cache = model.run_with_cache(model.to_tokens(text), remove_batch_dim=True,
                                         stop_at_layer=attn_layer + 1, names_filter=[attn_hook_name])
    attn = attn_cache[attn_hook_name]
    # check
    assert list(attn_cache.keys()) == [attn_hook_name]
    _, full = model.model.run_with_cache(model.to_tokens(text), names_filter=attn_hook_name)
    assert torch.equal(attn, full[attn_hook_name][0])
""")
idiom(UNCHANGED, "stop_at_layer returns the residual stream", """
    resid = model(text, stop_at_layer=2)
    # check
    _, cache = model.model.run_with_cache(model.to_tokens(text), names_filter="blocks.2.hook_resid_pre")
    assert torch.equal(resid, cache["blocks.2.hook_resid_pre"])
""")
idiom(UNCHANGED, "cache.to, remove_batch_dim, cache_dict", """
    logits, cache = model.run_with_cache(text)
    cache = cache.to("cpu")
    single = cache.remove_batch_dim()
    raw = cache.cache_dict
    # check
    assert isinstance(raw, dict) and torch.equal(single["resid_pre", 0], raw["blocks.0.hook_resid_pre"][0])
""")
idiom(UNCHANGED, "stack_activation", """
    logits, cache = model.run_with_cache(text)
    patterns = cache.stack_activation("pattern")
    # check
    assert patterns.shape[:2] == (model.cfg.n_layers, 1) and torch.equal(patterns[2], cache["pattern", 2])
""")
idiom(UNCHANGED, "incl_bwd gradients", """
    loss, cache = model.run_with_cache(text, return_type="loss", incl_bwd=True,
                                       names_filter=lambda name: name.endswith("resid_post"))
    grad = cache["blocks.1.hook_resid_post_grad"]
    # check
    assert grad.shape == cache["resid_post", 1].shape and grad.abs().sum() > 0
    model.zero_grad()
""")

# ---- hooks --------------------------------------------------------------------------------------

idiom(UNCHANGED, "print hook names and shapes", """
    seen = []
    def print_name_shape_hook_function(activation, hook):
        seen.append((hook.name, activation.shape))
    not_in_late_block_filter = lambda name: name.startswith("blocks.0.") or not name.startswith("blocks")
    model.run_with_hooks(text, return_type=None, fwd_hooks=[(not_in_late_block_filter, print_name_shape_hook_function)])
    # check
    assert seen[0][0] == "hook_tokens" and any(name == "blocks.0.attn.hook_pattern" for name, _ in seen)
    assert not any(name.startswith("blocks.1.") for name, _ in seen)
""")
idiom(UNCHANGED, "induction score via hook.layer()", """
    seq_len, batch = 10, 2
    rep_half = torch.randint(3, model.cfg.d_vocab, (batch, seq_len))
    rep_tokens = torch.cat([torch.full((batch, 1), model.tokenizer.bos_token_id), rep_half, rep_half], dim=1)
    induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)
    def induction_score_hook(pattern, hook):
        induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
        induction_score_store[hook.layer(), :] = induction_score
    pattern_hook_names_filter = lambda name: name.endswith("pattern")
    model.run_with_hooks(rep_tokens, return_type=None, fwd_hooks=[(pattern_hook_names_filter, induction_score_hook)])
    # check
    _, cache = model.model.run_with_cache(rep_tokens)
    for layer in range(model.cfg.n_layers):
        stripe = cache["pattern", layer].diagonal(dim1=-2, dim2=-1, offset=1 - seq_len).mean(dim=(0, 2))
        torch.testing.assert_close(induction_score_store[layer], stripe)
    assert induction_score_store.max() > 0.5  # the tiny model has induction heads
""")
idiom(UNCHANGED, "previous-token score with hook.layer()", """
    prev_token_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)
    def prev_token_hook(pattern, hook):
        layer = hook.layer()
        diagonal = pattern.diagonal(offset=1, dim1=-1, dim2=-2)
        prev_token_scores[layer] = einops.reduce(diagonal, "1 head_index diag -> head_index", "mean")
    model.run_with_hooks(text, fwd_hooks=[(lambda name: name.endswith("pattern"), prev_token_hook)])
    # check
    _, cache = model.run_with_cache(text)
    torch.testing.assert_close(prev_token_scores[1], cache["pattern", 1][0].diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1))
""")
idiom(UNCHANGED, "zero-ablate a head with partial", """
    tokens = model.to_tokens(text)
    layer_to_ablate, head_index_to_ablate = 1, 2
    def head_ablation_hook(value, hook, head_index):
        value[:, :, head_index, :] = 0.
        return value
    original_loss = model(tokens, return_type="loss")
    ablated_loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(
        utils.get_act_name("z", layer_to_ablate), functools.partial(head_ablation_hook, head_index=head_index_to_ablate))])
    # check
    with interp.ablate_heads(model.model, [(1, 2)]):
        expected = model.loss_fn(model.model(tokens), tokens)
    torch.testing.assert_close(ablated_loss, expected)
    assert ablated_loss != original_loss
""")
idiom(UNCHANGED, "mean-ablate values", """
    tokens = model.to_tokens(text)
    def mean_ablate_v(value, hook):
        value[:] = value.mean(dim=1, keepdim=True)
        return value
    ablated = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(utils.get_act_name("v", 0), mean_ablate_v)])
    # check
    def by_hand(v, hook):
        return v.mean(dim=1, keepdim=True).expand_as(v)
    with model.model.hooks(fwd_hooks=[("blocks.0.attn.hook_v", by_hand)]):
        expected = model.loss_fn(model.model(tokens), tokens)
    torch.testing.assert_close(ablated, expected)
""")
idiom(UNCHANGED, "hooks context manager", """
    def double_resid(resid, hook):
        return resid * 2
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", double_resid)]):
        hooked_logits = model(text)
    plain_logits = model(text)
    # check
    assert not torch.allclose(hooked_logits, plain_logits)
    assert torch.equal(plain_logits, model.model(model.to_tokens(text)))
""")
idiom(UNCHANGED, "add_hook then run_with_cache resets it", """
    tokens = model.to_tokens(text)
    def ablate_top_head_hook(z, hook):
        z[:, -1, 1, :] = 0
        return z
    model.blocks[2].attn.hook_z.add_hook(ablate_top_head_hook)
    ablated_logits, ablated_cache = model.run_with_cache(tokens)
    after_logits = model(tokens)
    # check
    assert not torch.allclose(ablated_logits[0, -1], after_logits[0, -1], atol=1e-6)  # ablated during the run only
    assert not model.blocks[2].attn.hook_z.has_hooks
    assert torch.equal(ablated_cache["z", 2][0, -1, 1], torch.zeros(model.cfg.d_head))
""")
idiom(UNCHANGED, "add_hook and reset_hooks", """
    stored = {}
    def store_hook(x, hook):
        stored[hook.name] = x.detach()
    model.add_hook("blocks.0.hook_resid_post", store_hook)
    model(text)
    model.reset_hooks()
    model(text)
    # check
    assert list(stored) == ["blocks.0.hook_resid_post"]
    assert not any(point.has_hooks for point in model.hook_dict.values())
""")
idiom(UNCHANGED, "hook_dict names", """
    attn_names = [name for name in model.hook_dict.keys() if "pattern" in name]
    # check
    assert attn_names == [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
""")
idiom(UNCHANGED, "backward hooks", """
    grads = {}
    def save_grad(grad, hook):
        grads[hook.name] = grad.detach()
    loss = model.run_with_hooks(text, return_type="loss", bwd_hooks=[("blocks.2.hook_resid_pre", save_grad)],
                                reset_hooks_end=False)
    loss.backward()
    model.reset_hooks()
    model.zero_grad()
    # check
    assert grads["blocks.2.hook_resid_pre"].shape == (1, len(model.to_tokens(text)[0]), model.cfg.d_model)
""")

# ---- patching ---------------------------------------------------------------------------------

idiom(UNCHANGED, "residual stream patching loop", """
    clean_tokens = model.to_tokens(clean_prompt)
    corrupted_tokens = model.to_tokens(corrupted_prompt)
    def logits_to_logit_diff(logits, correct_answer=" Mary", incorrect_answer=" John"):
        correct_index = model.to_single_token(correct_answer)
        incorrect_index = model.to_single_token(incorrect_answer)
        return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]
    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    def residual_stream_patching_hook(resid_pre, hook, position):
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre
    num_positions = len(clean_tokens[0])
    ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
    for layer in range(model.cfg.n_layers):
        for position in range(num_positions):
            temp_hook_fn = functools.partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
                (utils.get_act_name("resid_pre", layer), temp_hook_fn)])
            ioi_patching_result[layer, position] = logits_to_logit_diff(patched_logits).detach()
    # check
    expected = interp.patch_by_layer_pos(model.model, corrupted_tokens, clean_cache, logits_to_logit_diff, progress=False)
    assert torch.equal(ioi_patching_result, expected)
""")
idiom(UNCHANGED, "head output patching loop", """
    clean_tokens, corrupted_tokens = model.to_tokens(clean_prompt), model.to_tokens(corrupted_prompt)
    answer = model.to_single_token(" Mary"), model.to_single_token(" John")
    def metric(logits):
        return logits[0, -1, answer[0]] - logits[0, -1, answer[1]]
    _, clean_cache = model.run_with_cache(clean_tokens)
    def patch_head_vector(corrupted_head_vector, hook, head_index, clean_cache):
        corrupted_head_vector[:, :, head_index, :] = clean_cache[hook.name][:, :, head_index, :]
        return corrupted_head_vector
    patched_head_z_diff = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, device=model.cfg.device)
    for layer in range(model.cfg.n_layers):
        for head_index in range(model.cfg.n_heads):
            hook_fn = functools.partial(patch_head_vector, head_index=head_index, clean_cache=clean_cache)
            patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(utils.get_act_name("z", layer, "attn"), hook_fn)],
                                                  return_type="logits")
            patched_head_z_diff[layer, head_index] = metric(patched_logits)
    # check
    expected = interp.patch_by_head(model.model, corrupted_tokens, clean_cache, metric, progress=False)
    assert torch.equal(patched_head_z_diff, expected)
""")
idiom(UNCHANGED, "pattern patching", """
    clean_tokens, corrupted_tokens = model.to_tokens(clean_prompt), model.to_tokens(corrupted_prompt)
    _, clean_cache = model.run_with_cache(clean_tokens)
    def patch_head_pattern(corrupted_head_pattern, hook, head_index, clean_cache):
        corrupted_head_pattern[:, head_index, :, :] = clean_cache[hook.name][:, head_index, :, :]
        return corrupted_head_pattern
    patched = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(utils.get_act_name("attn", 3, "attn"),
                                   functools.partial(patch_head_pattern, head_index=1, clean_cache=clean_cache))])
    # check
    index = (slice(None), 1)
    with model.model.hooks(fwd_hooks=[("blocks.3.attn.hook_pattern", interp._Patch(clean_cache["pattern", 3], index))]):
        assert torch.equal(patched, model.model(corrupted_tokens))
""")
idiom(UNCHANGED, "path patching through q_input", """
    model.set_use_split_qkv_input(True)
    clean_tokens, corrupted_tokens = model.to_tokens(clean_prompt), model.to_tokens(corrupted_prompt)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    def patch_q_input(q_input, hook, head):
        q_input[:, :, head] = corrupted_cache[hook.name][:, :, head]
        return q_input
    patched = model.run_with_hooks(clean_tokens, fwd_hooks=[(utils.get_act_name("q_input", 3),
                                   functools.partial(patch_q_input, head=2))])
    model.set_use_split_qkv_input(False)
    # check
    def patch_q(q, hook):
        q[:, :, 2] = corrupted_cache["q", 3][:, :, 2]
        return q
    with model.model.hooks(fwd_hooks=[("blocks.3.attn.hook_q", patch_q)]):
        torch.testing.assert_close(patched, model.model(clean_tokens), rtol=1e-5, atol=1e-5)
""")
idiom(UNCHANGED, "mlp_in and scale hooks", """
    model.set_use_hook_mlp_in(True)
    def freeze_scale(scale, hook):
        return torch.ones_like(scale) * scale.mean()
    def zero_mlp_in(mlp_in, hook):
        mlp_in[:, 1:] = 0
        return mlp_in
    logits = model.run_with_hooks(text, fwd_hooks=[("ln_final.hook_scale", freeze_scale),
                                                    (utils.get_act_name("mlp_in", 0), zero_mlp_in)])
    model.set_use_hook_mlp_in(False)
    # check
    _, cache = model.run_with_cache(text)
    def zero_ln2(x, hook):
        x[:, 1:] = 0  # the RMS norm of a zero row is zero: the MLP sees zeros there
        return x
    def freeze_inv_rms(inv_rms, hook):
        return 1 / (torch.ones_like(inv_rms) * (1 / inv_rms).mean())
    with model.model.hooks(fwd_hooks=[("blocks.0.ln2.hook_normalized", zero_ln2), ("ln_final.hook_inv_rms", freeze_inv_rms)]):
        torch.testing.assert_close(logits, model.model(model.to_tokens(text)))
""")

# ---- logit attribution ----------------------------------------------------------------------

idiom(UNCHANGED, "logit difference through the residual stream", """
    prompts = [clean_prompt, corrupted_prompt]
    answers = [(" Mary", " John"), (" John", " Mary")]
    answer_tokens = torch.tensor([[model.to_single_token(a) for a in pair] for pair in answers], device=model.cfg.device)
    tokens = model.to_tokens(prompts, prepend_bos=True)
    original_logits, cache = model.run_with_cache(tokens)
    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    final_residual_stream = cache["resid_post", -1]
    final_token_residual_stream = final_residual_stream[:, -1, :]
    scaled_final_token_residual_stream = cache.apply_ln_to_stack(final_token_residual_stream, layer=-1, pos_slice=-1)
    average_logit_diff = einops.einsum(scaled_final_token_residual_stream, logit_diff_directions,
                                       "batch d_model, batch d_model ->") / len(prompts)
    # check
    final = original_logits[:, -1]
    expected = (final.gather(1, answer_tokens[:, :1]) - final.gather(1, answer_tokens[:, 1:])).mean()
    torch.testing.assert_close(average_logit_diff, expected, rtol=1e-4, atol=1e-4)
""")
idiom(UNCHANGED, "accumulated, per-layer and per-head residuals", """
    tokens = model.to_tokens(clean_prompt)
    logits, cache = model.run_with_cache(tokens)
    direction = model.tokens_to_residual_directions(" Mary") - model.tokens_to_residual_directions(" John")
    def residual_stack_to_logit_diff(residual_stack, cache):
        scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
        return einops.einsum(scaled_residual_stack, direction, "... batch d_model, d_model -> ...") / tokens.shape[0]
    accumulated_residual, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    logit_lens_logit_diffs = residual_stack_to_logit_diff(accumulated_residual, cache)
    per_layer_residual, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_layer_logit_diffs = residual_stack_to_logit_diff(per_layer_residual, cache)
    per_head_residual, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    per_head_logit_diffs = einops.rearrange(residual_stack_to_logit_diff(per_head_residual, cache),
                                            "(layer head_index) -> layer head_index", layer=model.cfg.n_layers,
                                            head_index=model.cfg.n_heads)
    # check
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    actual = logits[0, -1, mary] - logits[0, -1, john]
    assert len(accumulated_residual) == 2 * model.cfg.n_layers + 1
    torch.testing.assert_close(logit_lens_logit_diffs[-1], actual, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(per_layer_logit_diffs.sum(), actual, rtol=1e-4, atol=1e-4)
    attn_total = sum(per_layer_logit_diffs[1 + 2 * layer] for layer in range(model.cfg.n_layers))
    torch.testing.assert_close(per_head_logit_diffs.sum(), attn_total, rtol=1e-4, atol=1e-4)
""")
idiom(UNCHANGED, "logit_attrs", """
    logits, cache = model.run_with_cache(clean_prompt)
    stack, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    attrs = cache.logit_attrs(stack, tokens=" Mary", incorrect_tokens=" John", pos_slice=-1)
    # check
    actual = logits[0, -1, model.to_single_token(" Mary")] - logits[0, -1, model.to_single_token(" John")]
    torch.testing.assert_close(attrs.sum(0)[0], actual, rtol=1e-4, atol=1e-4)
""")
idiom(UNCHANGED, "set_use_attn_result and cache result", """
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(text)
    model.set_use_attn_result(False)
    l1_results = cache["result", 1]
    # check
    z_times_w_o = einops.einsum(cache["z", 1], model.W_O[1], "b p h d, h d m -> b p h m")
    torch.testing.assert_close(l1_results, z_times_w_o)
    _, plain = model.run_with_cache(text)
    assert "blocks.1.attn.hook_result" not in plain
    plain.compute_head_results()
    torch.testing.assert_close(plain["result", 1], l1_results)
""")
idiom(UNCHANGED, "unembed.W_U columns", """
    logits, cache = model.run_with_cache(text)
    tokens = model.to_tokens(text)[0]
    W_U_correct_tokens = model.W_U[:, tokens[1:]]
    direct = einops.einsum(cache["unembed.hook_in"][0, :-1], W_U_correct_tokens, "seq d_model, d_model seq -> seq")
    # check
    torch.testing.assert_close(direct, logits[0, :-1].gather(-1, tokens[1:, None])[:, 0])
""")
idiom(UNCHANGED, "unembedding bias", """
    unembed_bias = model.unembed.b_U
    bias_values, bias_indices = unembed_bias.sort(descending=True)
    john_bias = model.unembed.b_U[model.to_single_token(" John")]
    # check
    assert unembed_bias.shape == (model.cfg.d_vocab,) and john_bias == 0  # Gemma has no unembedding bias
""")

# ---- weights and circuits ---------------------------------------------------------------------

idiom(UNCHANGED, "weight shapes", """
    shapes = {name: tuple(getattr(model, name).shape) for name in
              ["W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "b_Q", "b_O", "b_in", "b_out"]}
    # check
    L, H, D, M, F, V = 4, 4, 32, 128, 384, 3072
    assert shapes == {"W_E": (V, M), "W_U": (M, V), "W_Q": (L, H, M, D), "W_K": (L, H, M, D), "W_V": (L, H, M, D),
                      "W_O": (L, H, D, M), "W_in": (L, M, F), "W_gate": (L, M, F), "W_out": (L, F, M),
                      "b_Q": (L, H, D), "b_O": (L, M), "b_in": (L, F), "b_out": (L, M)}
""")
idiom(UNCHANGED, "per-block weights", """
    W_Q = model.blocks[1].attn.W_Q
    W_K = model.blocks[1].attn.W_K
    w = model.blocks[1].ln1.w
    # check
    assert torch.equal(W_Q, model.W_Q[1]) and torch.equal(W_K[1], W_K[0])  # heads 0, 1 share kv head 0 (GQA)
    assert torch.equal(w, 1 + model.model.blocks[1].ln1.weight)
""")
idiom(UNCHANGED, "embed.W_E is what the stream starts with", """
    tokens = model.to_tokens(text)
    logits, cache = model.run_with_cache(tokens)
    embed = model.embed.W_E[tokens]
    # check
    assert torch.equal(embed, cache["embed"])
""")
idiom(UNCHANGED, "FactoredMatrix basics", """
    A = torch.randn(5, 2)
    B = torch.randn(2, 5)
    AB = A @ B
    AB_factor = FactoredMatrix(A, B)
    print("Eigenvalues:", torch.linalg.eig(AB).eigenvalues, AB_factor.eigenvalues)
    print("Singular values:", torch.linalg.svd(AB).S, AB_factor.S)
    U, S, Vh = AB_factor.svd()
    C = torch.randn(5, 300)
    ABC_factor = AB_factor @ C
    AB_unfactored = AB_factor.AB
    # check
    torch.testing.assert_close(AB_unfactored, AB)
    torch.testing.assert_close(AB_factor.S, torch.linalg.svd(AB).S[:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(U @ torch.diag(S) @ Vh.T, AB, rtol=1e-4, atol=1e-5)
    assert ABC_factor.shape == (5, 300) and ABC_factor.mdim == 2
    big = torch.linalg.eigvals(AB)
    big = big[big.abs().argsort(descending=True)[:2]]
    for value in AB_factor.eigenvalues:
        assert (big - value).abs().min() < 1e-4
""")
idiom(UNCHANGED, "OV copying scores of every head", """
    OV_circuit_all_heads = model.OV
    OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
    OV_copying_score = OV_circuit_all_heads_eigenvalues.sum(dim=-1).real / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1)
    full_OV_circuit = model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U
    # check
    assert OV_circuit_all_heads_eigenvalues.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)
    assert OV_circuit_all_heads_eigenvalues.dtype == torch.complex64
    assert OV_copying_score.shape == (model.cfg.n_layers, model.cfg.n_heads) and OV_copying_score.abs().max() <= 1
    product = (model.W_V[2, 1] @ model.W_O[2, 1]).double()
    full = torch.linalg.eigvals(product)
    top = full[full.abs().argsort(descending=True)[: model.cfg.d_head]]
    ours = OV_circuit_all_heads_eigenvalues[2, 1].to(torch.complex128)
    assert all((ours - value).abs().min() < 1e-4 * max(1, value.abs()) for value in top)
    assert full_OV_circuit.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_vocab, model.cfg.d_vocab)
""")
idiom(UNCHANGED, "full OV circuit of one head", """
    layer, head_index = 1, 3
    W_O = model.W_O[layer, head_index]
    W_V = model.W_V[layer, head_index]
    W_E = model.W_E
    W_U = model.W_U
    OV_circuit = FactoredMatrix(W_V, W_O)
    full_OV_circuit = W_E @ OV_circuit @ W_U
    indices = torch.randint(0, model.cfg.d_vocab, (20,))
    full_OV_circuit_sample = full_OV_circuit[indices, indices].AB
    def top_1_acc(full_OV_circuit, batch_size=1000):
        total = 0
        for i in range(0, full_OV_circuit.shape[-1], batch_size):
            indices = torch.arange(i, min(i + batch_size, full_OV_circuit.shape[-1]))
            top1 = full_OV_circuit[indices].AB.argmax(dim=1)
            total += (top1 == indices).float().sum().item()
        return total / full_OV_circuit.shape[-1]
    acc = top_1_acc(full_OV_circuit)
    # check
    full = (W_E @ W_V @ W_O @ W_U)
    torch.testing.assert_close(full_OV_circuit_sample, full[indices][:, indices], rtol=1e-4, atol=1e-4)
    expected = (full.argmax(dim=1) == torch.arange(model.cfg.d_vocab)).float().mean().item()
    assert abs(acc - expected) <= 3 / model.cfg.d_vocab  # a near-tie may fall either way in float32
""")
idiom(UNCHANGED, "OV of two heads side by side", """
    W_O_both = einops.rearrange(model.W_O[1, [0, 3]], "head d_head d_model -> (head d_head) d_model")
    W_V_both = einops.rearrange(model.W_V[1, [0, 3]], "head d_model d_head -> d_model (head d_head)")
    OV_both = FactoredMatrix(W_V_both, W_O_both)
    # check
    torch.testing.assert_close(OV_both.AB, model.OV[1, 0].AB + model.OV[1, 3].AB, rtol=1e-5, atol=1e-5)
""")
idiom(UNCHANGED, "QK circuit and composition scores", """
    W_QK = model.W_Q[0, 1] @ model.W_K[0, 1].T
    def get_comp_score(W_A, W_B):
        return ((W_A @ W_B).norm() / (W_A.norm() * W_B.norm())).item()
    comp = get_comp_score(model.W_V[0, 1] @ model.W_O[0, 1], model.W_Q[1, 0] @ model.W_K[1, 0].T)
    def get_batched_comp_scores(W_As, W_Bs):
        W_As = FactoredMatrix(W_As.A.unsqueeze(1), W_As.B.unsqueeze(1))
        W_Bs = FactoredMatrix(W_Bs.A.unsqueeze(0), W_Bs.B.unsqueeze(0))
        return (W_As @ W_Bs).norm() / (W_As.norm() * W_Bs.norm())
    batched = get_batched_comp_scores(model.OV[0], model.QK[1])
    # check
    torch.testing.assert_close(model.QK[0, 1].AB, W_QK)
    assert batched.shape == (model.cfg.n_heads, model.cfg.n_heads)
    torch.testing.assert_close(batched[1, 0].item(), comp, rtol=1e-4, atol=1e-5)
""")
idiom(UNCHANGED, "tokens_to_residual_directions", """
    answer_tokens = torch.tensor([[model.to_single_token(" Mary"), model.to_single_token(" John")]])
    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    one = model.tokens_to_residual_directions(" Mary")
    # check
    assert answer_residual_directions.shape == (1, 2, model.cfg.d_model)
    assert torch.equal(one, model.W_U[:, answer_tokens[0, 0]])
""")

# ---- text helpers and generation ------------------------------------------------------------

idiom(UNCHANGED, "generate text", """
    sample = model.generate("The capital of France is", max_new_tokens=5, temperature=0.7, prepend_bos=True, verbose=False)
    greedy = model.generate("The capital of France is", max_new_tokens=5, do_sample=False, verbose=False)
    # check
    assert sample.startswith("The capital of France is") and greedy.startswith("The capital of France is")
    expected = gemma_lab.generate(model.model, "The capital of France is", tokenizer=model.gemma_tokenizer,
                                  max_new_tokens=5, stop=[model.tokenizer.eos_token_id])
    assert greedy == "The capital of France is" + expected.text
""")
idiom(UNCHANGED, "generate from tokens", """
    input_tokens = model.to_tokens("The capital of France is")
    output = model.generate(input_tokens, max_new_tokens=4, do_sample=False, verbose=False)
    # check
    assert output.shape == (1, input_tokens.shape[1] + 4) and torch.equal(output[:, : input_tokens.shape[1]], input_tokens)
""")
idiom(UNCHANGED, "test_prompt", """
    utils.test_prompt("The capital of France is", " Paris", model, prepend_bos=True)
    # check
    result = utils.test_prompt("The capital of France is", " Paris", model, print_details=False)
    logits = model("The capital of France is")[0, -1]
    paris = model.to_single_token(" Paris")
    assert result.ranks == [int((logits > logits[paris]).sum())]
""")
idiom(UNCHANGED, "loss_fn per token", """
    tokens = model.to_tokens(text)
    logits = model(tokens)
    correct_log_probs = model.loss_fn(logits, tokens, per_token=True)
    # check
    assert correct_log_probs.shape == (1, tokens.shape[1] - 1)
    torch.testing.assert_close(correct_log_probs.mean(), model(tokens, return_type="loss"))
""")
idiom(UNCHANGED, "to_numpy and get_corner", """
    logits, cache = model.run_with_cache(text)
    array = utils.to_numpy(cache["pattern", 0])
    corner = utils.get_corner(cache["pattern", 0][0], 3)
    # check
    assert isinstance(array, np.ndarray) and array.shape == tuple(cache["pattern", 0].shape)
    assert corner.shape == (3, 3, 3)
""")
idiom(UNCHANGED, "padding side via the tokenizer", """
    model.tokenizer.padding_side = "left"
    tokens = model.to_tokens(["The cat sat on the mat", "Hi"])
    logits = model(tokens)
    model.tokenizer.padding_side = "right"
    # check
    assert tokens[1, 0] == model.tokenizer.pad_token_id
    short = model.to_tokens("Hi")
    torch.testing.assert_close(logits[1, -short.shape[1]:], model(short)[0], rtol=0, atol=1e-5)
""")

# ---- usages that do not run unchanged: what happens, and the gemma_lab equivalent ------------

idiom(DIFFERENT, "W_pos (Gemma has RoPE, no learned positions)", """
    with pytest.raises(AttributeError, match="RoPE"):
        model.W_pos
    # equivalent: positions act through rotations of q and k
    _, cache = model.run_with_cache(text)
    assert cache["rot_q", 0].shape == cache["q", 0].shape
""")
idiom(DIFFERENT, "attention pattern by hand from q and k (RoPE, GQA, query_pre_attn_scalar)", """
    logits, cache = model.run_with_cache(text, remove_batch_dim=True)
    q, k = cache["q", 0], cache["k", 0]
    with pytest.raises(RuntimeError):  # GQA: k has n_kv_heads, so the GPT-2 einsum does not even apply
        einops.einsum(q, k, "seqQ n h, seqK n h -> n seqQ seqK")
    # equivalent: rotated q/k, kv heads repeated, Gemma's scale, the local window
    q, k = cache["rot_q", 0], cache["rot_k", 0].repeat_interleave(model.cfg.n_heads // model.cfg.n_key_value_heads, dim=1)
    scores = einops.einsum(q, k, "seqQ n h, seqK n h -> n seqQ seqK") / model.cfg.attn_scale
    seq = scores.shape[-1]
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)
    pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(pattern, cache["pattern", 0], rtol=1e-4, atol=1e-5)
""")
idiom(DIFFERENT, "start_at_layer", """
    tokens = model.to_tokens(text)
    resid = model(tokens, stop_at_layer=2)
    with pytest.raises(NotImplementedError, match="hook_resid_pre"):
        model(resid, start_at_layer=2)
    # equivalent: replace the residual stream entering block 2 in a hook
    def set_resid(x, hook):
        return resid
    torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=[("blocks.2.hook_resid_pre", set_resid)]), model(tokens))
""")
idiom(DIFFERENT, "from transformer_lens import patching (not a dependency)", """
    clean_tokens, corrupted_tokens = model.to_tokens(clean_prompt), model.to_tokens(corrupted_prompt)
    _, clean_cache = model.run_with_cache(clean_tokens)
    def metric(logits):
        return logits[0, -1, model.to_single_token(" Mary")] - logits[0, -1, model.to_single_token(" John")]
    # patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric) runs when
    # transformer-lens is installed (test_tl_oracle.py); without it, gemma_lab's own:
    result = interp.patch_by_layer(model, corrupted_tokens, clean_cache, metric, activation="resid_pre", progress=False)
    assert result.shape == (model.cfg.n_layers,)
""")
idiom(DIFFERENT, "cache['scale', L] without naming the norm", """
    _, cache = model.run_with_cache(text)
    with pytest.raises(KeyError, match="norm's name"):
        cache["scale", 0]
    assert cache["scale", 0, "ln1"].shape[-1] == 1  # TL also needs the norm: cache["scale", 0, "ln1"]
""")


# ---- the runner ---------------------------------------------------------------------------------------------

TEXT = "The cat sat on the mat. The cat sat on the mat."
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def model() -> HookedGemma:
    return HookedGemma.from_pretrained("tiny")


def run(code: str, model: HookedGemma) -> None:
    namespace = {"model": model, "utils": utils, "FactoredMatrix": FactoredMatrix, "HookPoint": HookPoint,
                 "ActivationCache": TLActivationCache, "torch": torch, "t": torch, "einops": einops, "np": np,
                 "functools": functools, "pytest": pytest, "gemma_lab": gemma_lab, "interp": interp,
                 "text": TEXT, "clean_prompt": CLEAN, "corrupted_prompt": CORRUPTED}
    torch.manual_seed(0)
    # Forward-only idioms run without gradients, as TransformerLens notebooks set themselves up.
    needs_grad = "backward" in code or "incl_bwd" in code
    try:
        with torch.set_grad_enabled(needs_grad):
            exec(compile(code, "<idiom>", "exec"), namespace)  # noqa: S102 (the idioms written above)
    finally:
        model.reset_hooks(including_permanent=True)
        for switch in ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in"):
            setattr(model.cfg, switch, False)
    assert not any(point.has_hooks for point in model.model.hook_dict.values())


@pytest.mark.parametrize("name", list(UNCHANGED))
def test_transformerlens_idiom_runs_unchanged(name, model):
    assert "# check" in UNCHANGED[name], "every idiom checks its numbers"
    run(UNCHANGED[name], model)


@pytest.mark.parametrize("name", list(DIFFERENT))
def test_usage_that_differs_has_a_working_equivalent(name, model):
    run(DIFFERENT[name], model)


def test_share_of_usages_that_run_unchanged():
    share = len(UNCHANGED) / (len(UNCHANGED) + len(DIFFERENT))
    print(f"\n{len(UNCHANGED)} of {len(UNCHANGED) + len(DIFFERENT)} TransformerLens usages run unchanged ({share:.0%})")
    assert share >= 0.9
