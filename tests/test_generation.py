"""Generation: cached decoding equals recomputation, greedy equals transformers, and the loop's contract.

* prefill + decode_step give, at every step, the logits of a full forward pass over the whole
  sequence so far: all three families, far past the sliding window, with hooks attached, and for
  a left-padded batch.
* Greedy ``generate`` equals transformers' greedy ``generate`` token for token on checkpoints it
  wrote itself.
* Seeds, batches, stop rules, errors, ``run_context.step``, ``stream`` records and text.
"""

from __future__ import annotations

import pytest
import torch
from hf_checkpoints import hf_model

import gemma_lab
from gemma_lab import generation
from gemma_lab.config import PRESETS
from gemma_lab.tiny.corpus import generate_corpus
from gemma_lab.tiny.tokenizer_training import train_tokenizer
from gemma_lab.generation import decode_step, default_stop_ids, prefill
from gemma_lab.model import Gemma, init_weights
from gemma_lab.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = {1: "test-gemma", 2: "test-gemma2", 3: "test-gemma3"}  # window 8 on Gemma 2 and 3
STEPS = 60  # decode steps: seven and a half sliding windows
REL_TOL = 1e-5  # max |difference| over the largest |logit|; fp32 reorderings give ~1e-6

# A Gemma 3 layout with a global layer among the local ones, and linear RoPE scaling on it.
GEMMA3_HF_LAYOUT = dict(
    num_hidden_layers=7,
    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                     "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}},
)


def random_model(family: int, seed: int = 0, **changes) -> Gemma:
    cfg = PRESETS[FAMILIES[family]]
    if changes:
        cfg = cfg.replace(**changes)
    return init_weights(Gemma(cfg), seed=seed, std=0.1).eval()


def random_tokens(shape, seed=0, vocab=512, low=3):
    return torch.randint(low, vocab, shape, generator=torch.Generator().manual_seed(seed))


def rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def teacher_forced(model, tokens, prompt_len, attention_mask=None):
    """Logits [batch, n, vocab] predicting positions prompt_len.. of ``tokens``, via prefill + decode_step."""
    logits, cache = prefill(model, tokens[:, :prompt_len], attention_mask=attention_mask,
                            max_len=tokens.shape[1])
    steps = [logits]
    for i in range(prompt_len, tokens.shape[1]):
        steps.append(decode_step(model, tokens[:, i], cache))
    assert cache.length == tokens.shape[1]
    return torch.stack(steps, dim=1)


# ---- cached decoding equals full recomputation --------------------------------------------------


@pytest.mark.parametrize("family", [1, 2, 3])
def test_cached_decoding_equals_full_recomputation(family):
    model = random_model(family, seed=family)
    tokens = random_tokens((2, 5 + STEPS), seed=family)
    with torch.no_grad():
        full = model(tokens)  # causal: position i of one pass is the recomputation at step i
        cached = teacher_forced(model, tokens, prompt_len=5)
    assert cached.shape == (2, STEPS + 1, model.cfg.vocab_size)
    for step in range(STEPS + 1):
        assert rel_diff(cached[:, step], full[:, 4 + step]) <= REL_TOL, f"step {step}"


@pytest.mark.parametrize("family", [1, 2, 3])
def test_cached_decoding_with_hooks_equals_full_recomputation(family):
    model = random_model(family, seed=10 + family)
    tokens = random_tokens((1, 3 + 45), seed=family)
    seen_steps = []

    def ablate_half_the_neurons(x, hook):  # not a rescaling, which Gemma 2/3's post-MLP norm would undo
        x = x.clone()
        x[..., : x.shape[-1] // 2] = 0
        return x

    def record_pattern(x, hook):  # also forces the explicit einsum attention path
        seen_steps.append(x.shape[-1])

    hooks = [("blocks.1.mlp.hook_post", ablate_half_the_neurons), (lambda n: n.endswith("hook_pattern"), record_pattern)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        full = model(tokens)
        cached = teacher_forced(model, tokens, prompt_len=3)
    assert rel_diff(cached[0], full[0, 2:]) <= REL_TOL
    with torch.no_grad():
        assert rel_diff(model(tokens), full) > 1e-3  # the hook really changed the logits
    assert seen_steps  # the explicit path ran


@pytest.mark.parametrize("family", [2, 3])
def test_cache_far_past_the_window_and_chunked_prefill(family):
    model = random_model(family, seed=20 + family)
    window = model.cfg.sliding_window
    tokens = random_tokens((1, 12 * window), seed=family)
    with torch.no_grad():
        full = model(tokens)
        cached = teacher_forced(model, tokens, prompt_len=window + 3)
        # A prompt fed in chunks of several tokens, the ring already wrapped, then decoding.
        cache = gemma_lab.KVCache.for_model(model, 1, tokens.shape[1])
        chunks = [model(tokens[:, a:b], kv_cache=cache) for a, b in [(0, 5), (5, 19), (19, 22), (22, 40)]]
    assert rel_diff(cached[0], full[0, window + 2:]) <= REL_TOL
    assert rel_diff(torch.cat(chunks, dim=1), full[:, :40]) <= REL_TOL
    # Sliding-window layers keep only the window, oldest first.
    local = model.cfg.layer_types.index("local")
    kv = cache.layer_kv(local)
    assert kv.positions[0].tolist() == list(range(40 - window, 40))


def test_prefill_into_a_fresh_cache_equals_the_plain_forward_pass():
    for family in (1, 2, 3):
        model = random_model(family)
        tokens = random_tokens((2, 19), seed=family)
        with torch.no_grad():
            last, cache = prefill(model, tokens)
            assert torch.allclose(last, model(tokens)[:, -1], rtol=1e-5, atol=1e-5)
        assert cache.length == 19 and cache.max_len == min(256, 19 + generation.DEFAULT_PREFILL_ROOM)


@pytest.mark.parametrize("family", [1, 2, 3])
def test_left_padded_batch_decodes_like_each_row_alone(family):
    model = random_model(family, seed=30 + family)
    prompts = [random_tokens((n,), seed=n).tolist() for n in (3, 11, 6)]
    continuation = random_tokens((3, 40), seed=99)
    prompt_tokens, mask = generation.left_pad(prompts)
    width = prompt_tokens.shape[1]
    tokens = torch.cat([prompt_tokens, continuation], dim=1)
    with torch.no_grad():
        cached = teacher_forced(model, tokens, prompt_len=width, attention_mask=mask)
        for row, prompt in enumerate(prompts):
            alone = model(torch.cat([torch.tensor(prompt), continuation[row]])[None])[0]
            assert rel_diff(cached[row], alone[len(prompt) - 1:]) <= REL_TOL, f"row {row}"


def test_fast_decode_reads_the_ring_in_place_and_equals_the_watched_path():
    """Nobody looking: a full sliding-window ring is attended to as it lies (no copy per token).
    A hook attached: keys oldest first. Both give the same logits, so the same greedy tokens."""
    model = random_model(3, seed=41)
    local = model.cfg.layer_types.index("local")
    prompt = random_tokens((1, 5), seed=41)
    handed_over = []

    def record(original):
        def update(layer, *args):
            seen = original(layer, *args)
            if layer == local:
                handed_over.append((seen.keys.data_ptr() == cache.keys[layer].data_ptr(), seen.positions[0].tolist()))
            return seen
        return update

    runs = {}
    for watched in (False, True):
        handed_over.clear()
        hooks = [("blocks.0.hook_resid_pre", lambda x, hook: None)] if watched else []
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits, cache = prefill(model, prompt, max_len=40)
            cache.update = record(cache.update)
            steps, token = [logits], logits.argmax(-1)
            for _ in range(30):
                steps.append(decode_step(model, token, cache))
                token = steps[-1].argmax(-1)
        runs[watched] = torch.stack(steps, dim=1), list(handed_over)
    (fast, fast_kv), (watched, watched_kv) = runs[False], runs[True]
    assert torch.equal(fast.argmax(-1), watched.argmax(-1))
    assert rel_diff(fast, watched) <= REL_TOL
    window = model.cfg.sliding_window
    assert all(in_place for in_place, _ in fast_kv[window:])  # wrapped: the buffer itself
    assert not any(in_place for in_place, _ in watched_kv[window:])  # copied into order
    assert all(positions == sorted(positions) for _, positions in watched_kv)
    assert sorted(fast_kv[-1][1]) == watched_kv[-1][1]  # the same keys either way


def test_generation_checks_token_ids_once_per_call_not_per_step(monkeypatch):
    model = random_model(1, seed=3)
    checked = []
    original = model._check_tokens
    monkeypatch.setattr(model, "_check_tokens", lambda tokens, check_ids=True: (
        checked.append(check_ids), original(tokens, check_ids=check_ids))[1])
    gemma_lab.generate(model, [2, 5, 9], max_new_tokens=6, stop=[])
    assert checked == [True] + [False] * 5  # the prompt pass checks; the sampler's tokens need no check
    with pytest.raises(ValueError, match="outside the vocabulary"):  # decode_step itself still checks
        _, cache = prefill(model, torch.tensor([[2, 5]]))
        decode_step(model, [model.cfg.vocab_size], cache)


def test_decode_step_checks_the_batch():
    model = random_model(1)
    _, cache = prefill(model, random_tokens((2, 4)))
    with pytest.raises(ValueError, match="3 token ids for a cache of batch 2"):
        decode_step(model, [5, 6, 7], cache)


# ---- greedy decoding equals transformers ----------------------------------------------------------


def separated_hf_model(family: int, seed: int = 0):
    """A transformers model whose greedy path visits many tokens with a clear argmax at each step.

    With tied embeddings and full-size embedding rows a random model keeps predicting its input
    token; shrinking the embedding lets attention and the MLPs decide the next token.
    """
    model = hf_model(family, seed=seed, **(GEMMA3_HF_LAYOUT if family == 3 else {}))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(0.2)
    return model


@pytest.mark.parametrize("family", [1, 2, 3])
@pytest.mark.parametrize("repetition_penalty", [None, 1.3])
def test_greedy_generation_equals_transformers(tmp_path, family, repetition_penalty):
    hf = separated_hf_model(family)
    hf.save_pretrained(tmp_path)
    prompt = random_tokens((1, 6), seed=family, vocab=hf.config.vocab_size)
    extra = {"repetition_penalty": repetition_penalty} if repetition_penalty else {}
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True, **extra)
    expected = out.sequences[0, 6:].tolist()
    assert len(expected) == 30  # prompt + generation (36) span four and a half windows of 8
    # The test means something only if no step is a near-tie.
    scores = torch.stack(out.scores)[:, 0]
    top2 = scores.topk(2, dim=-1).values
    assert ((top2[:, 0] - top2[:, 1]) / scores.abs().amax(dim=-1)).min() > 1e-4

    model = gemma_lab.load_pretrained(tmp_path)
    result = gemma_lab.generate(model, prompt[0], max_new_tokens=30, stop=[], repetition_penalty=repetition_penalty)
    assert result.token_ids == expected
    assert result.stop_reason == "max_new_tokens"
    if repetition_penalty is None:
        assert len(set(expected)) >= 3 or family == 1  # Gemma 1 without post-norms loops soonest


# ---- sampling, batches, stopping -----------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = random_model(3, seed=5)
    prompt = random_tokens((4,), seed=1).tolist()
    kwargs = dict(max_new_tokens=30, temperature=1.0, top_k=50, stop=[])
    first = gemma_lab.generate(model, prompt, seed=123, **kwargs).token_ids
    again = gemma_lab.generate(model, prompt, seed=123, **kwargs).token_ids
    other = gemma_lab.generate(model, prompt, seed=124, **kwargs).token_ids
    assert first == again
    assert first != other
    assert len(first) == 30


def test_batch_rows_equal_their_unbatched_generation():
    model = random_model(2, seed=7)
    prompts = [random_tokens((n,), seed=n).tolist() for n in (2, 12, 5)]
    for kwargs in (dict(), dict(temperature=0.9, top_p=0.95, seed=11), dict(repetition_penalty=1.2)):
        batch = gemma_lab.generate(model, prompts, max_new_tokens=25, stop=[], **kwargs)
        assert batch.batched and batch.prompt_ids == prompts
        for row, prompt in enumerate(prompts):
            alone = gemma_lab.generate(model, prompt, max_new_tokens=25, stop=[], **kwargs)
            assert batch.token_ids[row] == alone.token_ids, (kwargs, row)
    # A padded 2-D tensor with its mask (padding on either side) means the same rows.
    greedy = gemma_lab.generate(model, prompts, max_new_tokens=25, stop=[]).token_ids
    tokens, mask = generation.left_pad(prompts)
    assert gemma_lab.generate(model, tokens, attention_mask=mask, max_new_tokens=25, stop=[]).token_ids == greedy
    right_tokens, right_mask = torch.zeros_like(tokens), torch.zeros_like(mask)
    for row, prompt in enumerate(prompts):
        right_tokens[row, : len(prompt)] = torch.tensor(prompt)
        right_mask[row, : len(prompt)] = 1
    from_right = gemma_lab.generate(model, right_tokens, attention_mask=right_mask, max_new_tokens=25, stop=[])
    assert from_right.token_ids == greedy and from_right.prompt_ids == prompts
    # Per-row seeds: different samples of one prompt.
    same = gemma_lab.generate(model, [prompts[0]] * 2, max_new_tokens=20, temperature=1.0, seed=[1, 2], stop=[])
    assert same.token_ids[0] != same.token_ids[1]


def test_stop_tokens_end_each_row_on_its_own():
    model = random_model(3, seed=8)
    prompts = [random_tokens((n,), seed=40 + n).tolist() for n in (3, 7)]
    free = gemma_lab.generate(model, prompts, max_new_tokens=20, temperature=1.0, seed=3, stop=[])
    stop_id = free.token_ids[0][4]
    first = free.token_ids[0].index(stop_id)
    stopped = gemma_lab.generate(model, prompts, max_new_tokens=20, temperature=1.0, seed=3, stop=[stop_id])
    assert stopped.token_ids[0] == free.token_ids[0][: first + 1]  # the stop token is kept
    assert stopped.stop_reason[0] == "stop_token"
    if stop_id in free.token_ids[1]:
        assert stopped.token_ids[1] == free.token_ids[1][: free.token_ids[1].index(stop_id) + 1]
    else:
        assert stopped.token_ids[1] == free.token_ids[1] and stopped.stop_reason[1] == "max_new_tokens"
    # A single id works as well as a list.
    single = gemma_lab.generate(model, prompts[0], max_new_tokens=20, temperature=1.0, seed=3, stop=stop_id)
    assert single.token_ids == stopped.token_ids[0]


def test_default_stop_ids():
    assert default_stop_ids(random_model(1)) == [1, 107]
    assert default_stop_ids(random_model(2)) == [1, 107]
    assert default_stop_ids(random_model(3)) == [1, 106]
    assert default_stop_ids(random_model(1, vocab_size=100)) == [1]  # 107 is not in this vocabulary


def boost(token_id: int, from_step: int = 0):
    """A hook on hook_logits that makes ``token_id`` the likeliest token from decode step ``from_step`` on."""

    def hook(logits, hook):
        if hook.step is not None and hook.step >= from_step:
            logits = logits.clone()
            logits[..., token_id] = logits.max() + 10
            return logits

    return ("hook_logits", hook)


def test_default_stop_ends_generation_at_eos():
    model = random_model(1, seed=2)
    with model.hooks(fwd_hooks=[boost(1, from_step=3)]):
        result = gemma_lab.generate(model, [2, 5, 9], max_new_tokens=10)
        assert len(result.token_ids) == 4 and result.token_ids[-1] == 1
        assert result.stop_reason == "stop_token"
        assert len(gemma_lab.generate(model, [2, 5, 9], max_new_tokens=10, stop=[]).token_ids) == 10
    for family, end_of_turn in ((2, 107), (3, 106)):
        with model.hooks(fwd_hooks=[boost(end_of_turn)]):
            assert gemma_lab.generate(random_model(family), [2, 5], max_new_tokens=10).token_ids != [end_of_turn]
        model_f = random_model(family)
        with model_f.hooks(fwd_hooks=[boost(end_of_turn)]):
            assert gemma_lab.generate(model_f, [2, 5], max_new_tokens=10).token_ids == [end_of_turn]


def test_max_new_tokens_zero_and_result_fields():
    model = random_model(1)
    result = gemma_lab.generate(model, torch.tensor([2, 7, 9]), max_new_tokens=0)
    assert result.token_ids == [] and result.prompt_ids == [2, 7, 9] and result.text is None
    assert result.stop_reason == "max_new_tokens" and not result.batched


def test_clear_errors():
    model = random_model(1)  # max_seq_len 256
    cases = [
        (dict(prompt=[]), "empty"),
        (dict(prompt=torch.tensor([], dtype=torch.long)), "empty"),
        (dict(prompt=[[2, 5], []]), r"row 1\) is empty"),
        (dict(prompt="hello"), "needs a tokenizer"),
        (dict(prompt=[2] * 200, max_new_tokens=57), "exceeds the model's max_seq_len of 256"),
        (dict(prompt=[2, 5], max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
        (dict(prompt=[2, 5], temperature=-0.5), "temperature must be"),
        (dict(prompt=[2, 5], top_p=1.5), "top_p must be"),
        (dict(prompt=[2, 5], top_k=0), "top_k must be"),
        (dict(prompt=[2, 5], stop=["\n"]), "stop string .* needs a tokenizer"),
        (dict(prompt=[2, 5], stop=[9999]), "stop token id 9999 is outside"),
        (dict(prompt=[2, 600]), "prompt token id 600 is outside"),
        (dict(prompt=[[2, 5]], seed=[1, 2], temperature=1.0), "seed has 2 entries for 1 prompts"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            gemma_lab.generate(model, **kwargs)
    assert gemma_lab.generate(model, [2] * 200, max_new_tokens=56).stop_reason  # exactly fits


def test_run_context_step_is_set_during_generation_and_reset_after():
    model = random_model(2)
    steps = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: steps.append((hook.step, hook.positions.tolist())))]):
        gemma_lab.generate(model, [2, 5, 9], max_new_tokens=4, stop=[])
    assert steps == [(0, [[0, 1, 2]]), (1, [[3]]), (2, [[4]]), (3, [[5]])]
    assert model.run_context.step is None

    def fail(x, hook):
        if hook.step == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), model.hooks(fwd_hooks=[("hook_embed", fail)]):
        gemma_lab.generate(model, [2, 5, 9], max_new_tokens=4, stop=[])
    assert model.run_context.step is None


# ---- stream ---------------------------------------------------------------------------------------


def test_stream_records_match_generate():
    model = random_model(3, seed=4)
    prompt = [2, 17, 33, 8]
    kwargs = dict(max_new_tokens=12, temperature=0.8, top_k=20, seed=9, stop=[])
    records = list(gemma_lab.stream(model, prompt, top_k_candidates=4, **kwargs))
    result = gemma_lab.generate(model, prompt, **kwargs)
    assert [r.token_id for r in records] == result.token_ids
    assert [r.step for r in records] == list(range(12))
    assert [r.position for r in records] == list(range(4, 16))
    assert [r.stop_reason for r in records] == [None] * 11 + ["max_new_tokens"]
    for record in records:
        probs = [c.prob for c in record.candidates]
        assert len(record.candidates) == 4 and probs == sorted(probs, reverse=True)
        assert record.token_id in [c.token_id for c in record.candidates] or probs[-1] > 0
        assert 0 < record.candidates[0].model_prob <= 1 and record.activations is None
    # Greedy: the chosen token is the first candidate, with all the filtered mass.
    greedy = list(gemma_lab.stream(model, prompt, max_new_tokens=3, stop=[]))
    for record in greedy:
        assert record.candidates[0].token_id == record.token_id and record.candidates[0].prob == 1.0
        assert record.candidates[1].prob == 0.0 and record.candidates[1].model_prob > 0


def test_stream_captures_activations_with_positions():
    model = random_model(2, seed=6)  # layer 0 is local (window 8), layer 1 global
    prompt = random_tokens((5,), seed=2).tolist()
    names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    records = list(gemma_lab.stream(model, prompt, max_new_tokens=10, stop=[], names_filter=names))
    first, later = records[0], records[9]
    assert first.activations["pattern", 0].shape == (1, 4, 5, 5)
    assert first.positions.tolist() == [0, 1, 2, 3, 4]
    assert first.activations["blocks.1.hook_resid_post"].shape == (1, 5, 64)
    # Step 9 feeds position 13: the local layer sees the last 8 keys, the global layer all 14.
    assert later.positions.tolist() == [13]
    assert later.activations["pattern", 0].shape == (1, 4, 1, 8)
    assert later.activations["pattern", 1].shape == (1, 4, 1, 14)
    assert later.key_positions[0].tolist() == list(range(6, 14))
    assert later.key_positions[1].tolist() == list(range(14))
    # The captured pattern is the one a full forward pass computes for that query.
    tokens = torch.tensor(prompt + [r.token_id for r in records[:9]])
    _, cache = model.run_with_cache(tokens, names_filter=names[:2])
    full_local = cache["pattern", 0][0, :, -1, 6:14]
    assert torch.allclose(later.activations["pattern", 0][0, :, 0], full_local, atol=1e-6)
    assert torch.allclose(later.activations["pattern", 1][0, :, 0], cache["pattern", 1][0, :, -1], atol=1e-6)
    assert not any(point.has_hooks for point in model.hook_dict.values())


def test_a_suspended_stream_holds_no_hooks_and_no_step():
    """Between records (and after leaving early) the stream's capture hooks and step are gone, so an
    unrelated forward pass is neither captured nor labelled with a stale step."""
    model = random_model(1)
    records = gemma_lab.stream(model, [2, 3, 4], max_new_tokens=10, names_filter="hook_embed", stop=[])
    first = next(records)
    assert first.step == 0 and "hook_embed" in first.activations
    assert model.run_context.step is None and not model.hook_dict["hook_embed"].has_hooks
    steps_seen = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: steps_seen.append(hook.step))]):
        model(torch.tensor([[5, 6]]))
    assert steps_seen == [None]
    second = next(records)
    assert second.step == 1 and second.activations["hook_embed"].shape[1] == 1  # its own pass, one token
    records.close()
    assert model.run_context.step is None and not model.hook_dict["hook_embed"].has_hooks


def test_stream_checks_its_arguments_when_called():
    model = random_model(1)
    with pytest.raises(ValueError, match="stream takes one prompt"):
        gemma_lab.stream(model, [[2, 3], [2, 4]])
    with pytest.raises(ValueError, match="empty"):
        gemma_lab.stream(model, [])
    with pytest.raises(ValueError, match="top_k_candidates"):
        gemma_lab.stream(model, [2], top_k_candidates=-1)
    with pytest.raises(KeyError, match="no hook point named"):
        gemma_lab.stream(model, [2], names_filter=["blocks.0.hook_nothing"])


# ---- text, with a tokenizer trained here ----------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    return load_tokenizer(train_tokenizer(generate_corpus(seed=0, n_documents=300), folder, vocab_size=400))


@pytest.fixture(scope="module")
def text_model(tokenizer):
    return random_model(3, seed=12, vocab_size=tokenizer.vocab_size)


def test_text_prompts_and_text_results(tokenizer, text_model):
    result = gemma_lab.generate(text_model, "Mary went to", tokenizer=tokenizer, max_new_tokens=15, stop=[])
    assert result.prompt_ids == tokenizer.encode("Mary went to")
    assert result.text == tokenizer.decode(result.token_ids)
    # A rendered chat template starts with "<bos>" and gets no second one.
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert gemma_lab.generate(text_model, chat, tokenizer=tokenizer, max_new_tokens=1).prompt_ids == \
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    batch = gemma_lab.generate(text_model, ["Mary went to", "The"], tokenizer=tokenizer, max_new_tokens=15, stop=[])
    assert batch.text[0] == result.text and len(batch.text) == 2
    with pytest.raises(ValueError, match="empty text"):
        gemma_lab.generate(text_model, "", tokenizer=tokenizer)


def test_default_stops_come_from_the_tokenizer(tokenizer, text_model):
    assert default_stop_ids(text_model, tokenizer) == [tokenizer.eos_id, tokenizer.end_of_turn_id]
    assert tokenizer.end_of_turn_id not in (106, 107)  # the trained layout puts the turn tokens elsewhere
    with text_model.hooks(fwd_hooks=[boost(tokenizer.end_of_turn_id, from_step=5)]):
        result = gemma_lab.generate(text_model, "The", tokenizer=tokenizer, max_new_tokens=40,
                                    temperature=1.0, seed=0)
    assert len(result.token_ids) == 6 and result.token_ids[-1] == tokenizer.end_of_turn_id
    assert result.stop_reason == "stop_token"
    assert result.text == tokenizer.decode(result.token_ids[:-1])  # the stop token is not text
    assert "<end_of_turn>" not in result.text


def test_stop_strings_cut_the_text_and_stream_holds_them_back(tokenizer, text_model):
    kwargs = dict(tokenizer=tokenizer, max_new_tokens=40, temperature=1.0, seed=1)
    free = gemma_lab.generate(text_model, "Mary", stop=[], **kwargs)
    assert len(free.text) > 12
    stop = free.text[8:11]
    start = free.text.index(stop)
    result = gemma_lab.generate(text_model, "Mary", stop=[stop, "never appears in it"], **kwargs)
    assert result.stop_reason == "stop_string"
    assert result.text == free.text[:start]
    assert result.token_ids == free.token_ids[: len(result.token_ids)]
    assert stop in tokenizer.decode(result.token_ids) and stop not in tokenizer.decode(result.token_ids[:-1])
    pieces = [r.text for r in gemma_lab.stream(text_model, "Mary", stop=[stop], **kwargs)]
    assert "".join(pieces) == result.text
    assert "".join(r.text for r in gemma_lab.stream(text_model, "Mary", stop=[], **kwargs)) == free.text


def test_streamed_text_never_splits_a_character(tokenizer):
    text = "Mary 生活的真谛 ok"
    ids = tokenizer.encode(text, add_bos=False)
    assert any(tokenizer.id_to_piece(i).startswith("<0x") for i in ids)  # byte fallback pieces
    tracker = generation._TextTracker(tokenizer, [])
    pieces = []
    for token_id in ids:
        tracker.add(token_id)
        pieces.append(tracker.take())
    tracker.finish()
    pieces.append(tracker.take())
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_stream_candidates_show_pieces(tokenizer, text_model):
    record = next(gemma_lab.stream(text_model, "Mary", tokenizer=tokenizer, top_k_candidates=3))
    assert [c.piece for c in record.candidates] == [
        tokenizer.id_to_piece(c.token_id).replace("▁", " ") for c in record.candidates]
    assert record.text is not None


def test_prefill_takes_a_cache_or_a_size_never_an_int_as_the_cache():
    model = init_weights(Gemma(PRESETS["test-gemma"]))
    tokens = torch.tensor([[2, 5, 7]])
    with pytest.raises(TypeError, match="max_len"):
        prefill(model, tokens, kv_cache=16)
    _, cache = prefill(model, tokens, max_len=16)
    assert cache.max_len == 16
    with pytest.raises(ValueError, match="not both"):
        prefill(model, tokens, kv_cache=cache, max_len=16)


@pytest.mark.parametrize("seed, error, message", [("abc", TypeError, "seed must be an integer, or a list"),
                                                  (1.5, TypeError, "seed must be an integer, or a list"),
                                                  (2**64, ValueError, "seed must lie in 0 to 2"),
                                                  ([1, 2], ValueError, "seed has 2 entries for 1 prompts")])
def test_unusable_seeds_are_named(seed, error, message):
    with pytest.raises(error, match=message):
        gemma_lab.generate(random_model(1), [2, 3], max_new_tokens=2, temperature=1.0, seed=seed)
