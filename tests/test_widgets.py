"""The widgets, driven headless: set controls, click buttons, and check the numbers then shown.

Every test runs under the ``widget_outputs`` fixture (conftest.py): ``with out:`` records what an
Output widget shows and lets exceptions through, so a redraw that raises fails the test at the
line that triggered it. The model is a random-weight ``test-gemma3`` (6 layers, 4 heads, 2 kv
heads, sliding window 8 on layers 0-4, global layer 5) with a 512-piece Gemma-style tokenizer
trained here; the bundled tiny model is checked too once it exists.

What "the numbers shown" are compared with: an independent ``model.run_with_cache`` of the same
tokens (``torch.equal``: the widget must show the model's own activations, not a recomputation),
``sampling`` and ``interp`` functions called directly, and ``tokenizer.encode``.
"""

from __future__ import annotations

import html

import pytest
import torch

import gemma_lab
from gemma_lab import bundled, interp, sampling, viz
from gemma_lab.widgets import (
    AttentionExplorer,
    InferenceStepper,
    LogitLensExplorer,
    PatchingExplorer,
    SamplingPlayground,
    TokenizerExplorer,
)
from gemma_lab.widgets import stepper as stepper_module
from gemma_lab.widgets._common import cached_names

pytestmark = pytest.mark.usefixtures("widget_outputs", "one_torch_thread")

TEXT = "the dog saw the cat and the dog"  # 16 tokens: longer than the window
WINDOW = 8  # test-gemma3's sliding window
LOCAL_LAYERS = [0, 1, 2, 3, 4]  # layer 5 is global


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A Gemma-style SentencePiece tokenizer (512 pieces, byte fallback) trained on the synthetic corpus."""
    from gemma_lab.tiny import corpus, tokenizer_training

    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer_training.train_tokenizer(corpus.generate_corpus(n_documents=1500), folder, vocab_size=512)
    return gemma_lab.load_tokenizer(folder)


@pytest.fixture(scope="module")
def model():
    return gemma_lab.init_weights(gemma_lab.Gemma(gemma_lab.GemmaConfig.from_preset("test-gemma3"))).eval()


@pytest.fixture(scope="module")
def reference(model, tokenizer):
    """An independent forward pass over TEXT, every activation the widgets cache."""
    tokens = torch.tensor([tokenizer.encode(TEXT)])
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names_filter=cached_names)
    return tokens, logits, cache


@pytest.fixture
def stepper(model, tokenizer):
    return InferenceStepper(model, tokenizer, text=TEXT)


# ---------------------------------------------------------------------------------------------
# InferenceStepper
# ---------------------------------------------------------------------------------------------


def test_stepper_lists_the_stages_of_one_forward_pass_in_order(stepper):
    assert stepper.stages == [
        "text", "tokens", "embedding", "embed_scale",
        "pre_attn_norm", "q", "k", "v", "qk_norm", "rotary", "scores", "mask", "pattern", "z", "attn_out",
        "resid_mid", "pre_mlp_norm", "gate", "up", "geglu", "mlp_out", "resid_post",
        "final_norm", "logits", "probs", "next_token", "kv_cache",
    ]  # fmt: skip
    assert stepper.current_stage == "text"
    assert stepper.shown_tensor is None
    assert TEXT in html.unescape(str(stepper.out.recorded))


def test_stepper_pattern_for_layer_1_head_2_is_exactly_the_cached_pattern(stepper, reference, widget_outputs):
    _, _, cache = reference
    stepper.go("pattern", layer=1, head=2)
    assert stepper.shown_hook == "blocks.1.attn.hook_pattern"
    assert torch.equal(stepper.shown_tensor, cache["pattern", 1][0, 2])
    n = cache["pattern", 1].shape[-1]
    assert f"[batch=1, head=4, q_pos={n}, k_pos={n}]" in stepper.caption.value
    assert len(widget_outputs.pngs(stepper.out)) == 1
    # The picture is the data: the heatmap holds the pattern itself.
    image = stepper.figure.axes[0].images[0].get_array()
    assert torch.equal(torch.as_tensor(image.data, dtype=torch.float32), stepper.shown_tensor)


@pytest.mark.parametrize(
    ("stage", "hook", "index"),
    [
        ("pre_attn_norm", "blocks.3.ln1.hook_normalized", (0,)),
        ("q", "blocks.3.attn.hook_q", (0, slice(None), 3)),
        ("k", "blocks.3.attn.hook_k", (0, slice(None), 1)),  # head 3 reads kv_head 3 // 2 = 1
        ("v", "blocks.3.attn.hook_v", (0, slice(None), 1)),
        ("qk_norm", "blocks.3.attn.q_norm.hook_normalized", (0, slice(None), 3)),
        ("rotary", "blocks.3.attn.hook_rot_q", (0, slice(None), 3)),
        ("scores", "blocks.3.attn.hook_attn_scores_pre_softcap", (0, 3)),
        ("mask", "blocks.3.attn.hook_attn_scores", (0, 3)),
        ("z", "blocks.3.attn.hook_z", (0, slice(None), 3)),
        ("attn_out", "blocks.3.hook_attn_out", (0,)),
        ("resid_mid", "blocks.3.hook_resid_mid", (0,)),
        ("pre_mlp_norm", "blocks.3.ln2.hook_normalized", (0,)),
        ("gate", "blocks.3.mlp.hook_pre", (0,)),
        ("up", "blocks.3.mlp.hook_pre_linear", (0,)),
        ("geglu", "blocks.3.mlp.hook_post", (0,)),
        ("mlp_out", "blocks.3.hook_mlp_out", (0,)),
        ("resid_post", "blocks.3.hook_resid_post", (0,)),
        ("embed_scale", "hook_embed", (0,)),
        ("final_norm", "ln_final.hook_normalized", (0,)),
        ("logits", "hook_logits", (0, 4)),
    ],
)
def test_each_stage_shows_a_slice_of_the_cached_activation(stepper, reference, widget_outputs, stage, hook,
                                                           index):
    _, _, cache = reference
    stepper.go(stage, layer=3, head=3, pos=4)
    assert stepper.current_stage == stage
    assert stepper.shown_hook == hook
    assert torch.equal(stepper.shown_tensor, cache[hook][index])
    assert widget_outputs.pngs(stepper.out), f"stage {stage} drew no picture"
    assert hook in stepper.caption.value


def test_tokens_and_embedding_stages_show_the_ids_and_the_embedding_rows(stepper, model, tokenizer):
    ids = tokenizer.encode(TEXT)
    stepper.go("tokens")
    assert torch.equal(stepper.shown_tensor, torch.tensor([ids]))
    shown = html.unescape(str(stepper.out.recorded))
    assert all(f">{i}<" in shown for i in ids)  # every id is in the table
    stepper.go("embedding")
    assert torch.equal(stepper.shown_tensor, model.embed.weight.detach()[ids])
    assert "d_model=64" in stepper.caption.value


def test_mask_stage_shows_the_causal_and_sliding_window_mask(stepper, reference):
    _, _, cache = reference
    n = cache["pattern", 0].shape[-1]
    assert n > WINDOW, "the prompt must be longer than the window for this test"
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    stepper.go("mask", layer=0, head=1)  # a sliding-window layer
    assert torch.equal(stepper.shown_tensor, cache["attn_scores", 0][0, 1])
    assert torch.equal(stepper.shown_mask, (k > q) | (q - k >= WINDOW))
    assert "sliding-window" in stepper.caption.value
    stepper.go("mask", layer=5)  # the global layer
    assert torch.equal(stepper.shown_mask, k > q)
    assert "global layer" in stepper.caption.value


def test_next_and_back_walk_stages_and_layers(stepper, reference):
    _, _, cache = reference
    stepper.next_button.click()
    assert stepper.current_stage == "tokens"
    stepper.back_button.click()
    assert stepper.current_stage == "text" and stepper.back_button.disabled

    stepper.go("resid_post", layer=0)
    stepper.next_button.click()  # past a layer's last stage: the next layer's first stage
    assert (stepper.current_stage, stepper.layer_slider.value) == ("pre_attn_norm", 1)
    assert torch.equal(stepper.shown_tensor, cache["blocks.1.ln1.hook_normalized"][0])
    stepper.back_button.click()
    assert (stepper.current_stage, stepper.layer_slider.value) == ("resid_post", 0)

    stepper.go("resid_post", layer=5)
    stepper.next_button.click()  # after the last layer: the final norm
    assert stepper.current_stage == "final_norm"

    stepper.stage_list.value = "z"  # clicking the list
    stepper.layer_slider.value = 2  # and moving a selector redraw at once
    stepper.head_slider.value = 1
    assert torch.equal(stepper.shown_tensor, cache["z", 2][0, :, 1])

    stepper.go("kv_cache")
    assert stepper.next_button.disabled


def test_probabilities_and_choice_follow_the_sampling_controls(stepper, reference):
    _, logits, _ = reference
    last = logits[0, -1]
    stepper.go("probs")
    stepper.temperature_slider.value = 0.7
    stepper.top_k_slider.value = 5
    assert torch.equal(stepper.shown_tensor, sampling.logits_to_probs(last, temperature=0.7, top_k=5))
    assert int((stepper.shown_tensor > 0).sum()) == 5
    assert "top_k removed 507" in stepper.caption.value
    stepper.top_p_slider.value = 0.5
    expected = sampling.logits_to_probs(last, temperature=0.7, top_k=5, top_p=0.5)
    assert torch.equal(stepper.shown_tensor, expected)

    stepper.seed_box.value = 3
    stepper.go("next_token")
    drawn = sampling.sample(last, temperature=0.7, top_k=5, top_p=0.5, generator=sampling.make_generator(3))
    assert stepper.chosen_token == int(drawn) and torch.equal(stepper.shown_tensor, drawn)
    stepper.temperature_slider.value = 0.0
    assert stepper.chosen_token == int(last.argmax())


def test_append_token_grows_the_kv_cache_by_one_row_per_layer(stepper, model, reference):
    tokens, logits, _ = reference
    n = tokens.shape[1]
    stepper.temperature_slider.value = 0.0  # greedy: the chosen token is the argmax
    first = int(logits[0, -1].argmax())
    stepper.append_button.click()
    assert stepper.current_stage == "kv_cache"
    assert stepper.tokens[0].tolist() == tokens[0].tolist() + [first]
    assert stepper.cache_lengths() == [min(n + 1, WINDOW)] * 5 + [n + 1]
    assert "L5 " + str(n + 1) in stepper.kv_status.value

    # The pass shown now is the decode step: one query position, keys from the cache.
    full = stepper.tokens
    with torch.inference_mode():
        full_logits, full_cache = model.run_with_cache(full, names_filter=cached_names)
    assert stepper.pass_tokens.tolist() == [[first]]
    torch.testing.assert_close(stepper.logits[0, -1], full_logits[0, -1], atol=1e-5, rtol=1e-5)
    stepper.go("kv_cache", layer=5, head=2)  # head 2 reads kv_head 1
    assert stepper.shown_tensor.shape == (n + 1, 16)
    assert torch.equal(stepper.shown_tensor[-1], stepper.cache["rot_k", 5][0, 0, 1])  # the new row
    torch.testing.assert_close(stepper.shown_tensor, full_cache["rot_k", 5][0, :, 1], atol=1e-5, rtol=1e-5)
    stepper.go("pattern", layer=0, head=1)  # sliding window: the query sees the last 8 keys
    assert stepper.shown_tensor.shape == (1, WINDOW)
    assert torch.equal(stepper.shown_tensor, stepper.cache["pattern", 0][0, 1])
    torch.testing.assert_close(stepper.shown_tensor[0], full_cache["pattern", 0][0, 1, -1, -WINDOW:],
                               atol=1e-5, rtol=1e-5)

    stepper.append_button.click()
    assert stepper.cache_lengths() == [WINDOW] * 5 + [n + 2]
    assert len(stepper.generated) == 2


def test_new_text_reruns_and_resets_the_cache(stepper, tokenizer):
    stepper.append_button.click()
    stepper.text_box.value = "the cat sat"
    assert stepper.tokens[0].tolist() == tokenizer.encode("the cat sat")
    assert stepper.cache_lengths() == [] and stepper.generated == []
    stepper.go("pattern", layer=0)
    assert stepper.shown_tensor.shape == (len(tokenizer.encode("the cat sat")),) * 2

    stepper.text_box.value = "word " * 200  # too long to draw: a message, not an exception
    assert "at most" in stepper.caption.value


def test_an_exception_inside_a_redraw_fails_the_test(stepper, monkeypatch):
    """The fixture's promise, checked on a real widget: a broken picture raises at the click."""

    def broken(*args, **kwargs):
        raise RuntimeError("broken picture")

    monkeypatch.setattr(stepper_module.viz, "tensor_card", broken)
    stepper.go("tokens")
    with pytest.raises(RuntimeError, match="broken picture"):
        stepper.next_button.click()  # the embedding stage draws a tensor card


# ---------------------------------------------------------------------------------------------
# Explorers
# ---------------------------------------------------------------------------------------------


def test_attention_explorer_shows_what_a_chosen_token_attends_to(model, tokenizer, reference):
    _, _, cache = reference
    explorer = AttentionExplorer(model, tokenizer, text=TEXT)
    explorer.layer_slider.value = 2
    explorer.head_slider.value = 3
    explorer.token_picker.value = 5
    pattern = cache["pattern", 2][0, 3]
    assert torch.equal(explorer.pattern, pattern)
    assert torch.equal(explorer.shown_row, pattern[5, :])
    assert torch.equal(explorer.shown_column, pattern[:, 5])
    image = explorer.figure.axes[0].images[0].get_array()
    assert torch.equal(torch.as_tensor(image.data, dtype=torch.float32), pattern)
    token = html.escape(explorer.str_tokens[5].replace(" ", "␣"))
    assert token in explorer.details.value

    labels = [label for label, _ in explorer.token_picker.options]
    assert len(set(labels)) == len(labels)  # repeated tokens get distinct labels (the browser needs them)
    shown = [label.replace("\u200b", "") for label in labels]
    assert shown == [viz.readable_token(s) for s in explorer.str_tokens]

    explorer.all_heads.value = True
    assert len([ax for ax in explorer.figure.axes if ax.images]) == 4  # one panel per head


def test_logit_lens_explorer_grid_and_cell_are_interp_logit_lens(model, tokenizer, reference):
    tokens, logits, _ = reference
    explorer = LogitLensExplorer(model, tokenizer, text=TEXT)
    lens = interp.logit_lens(model, tokens, k=10)
    assert torch.equal(explorer.grid, lens.top_probs[..., 0])
    drawn = explorer.figure.axes[0].images[0].get_array().data
    assert torch.equal(torch.as_tensor(drawn, dtype=torch.float32), explorer.grid.float())
    # Default cell: the last layer at the last position, i.e. the model's own prediction.
    assert int(explorer.cell_top_ids[0]) == int(logits[0, -1].argmax())
    torch.testing.assert_close(explorer.cell_top_probs, logits[0, -1].softmax(-1).topk(10).values)

    explorer.row_select.value = "embed"
    explorer.pos_slider.value = 3
    assert torch.equal(explorer.cell_top_ids, lens.top_tokens[0, 3])
    assert torch.equal(explorer.cell_top_probs, lens.top_probs[0, 3])
    bars = [patch.get_width() for patch in explorer.figures[1].axes[0].patches]
    torch.testing.assert_close(torch.tensor(bars), lens.top_probs[0, 3].double(), check_dtype=False)

    tracked = tokenizer.encode(" the", add_bos=False)
    assert len(tracked) == 1
    explorer.track_box.value = " the"
    torch.testing.assert_close(explorer.grid[-1], logits[0].softmax(-1)[:, tracked[0]])


def test_sampling_playground_top_k_3_keeps_exactly_3_tokens(model, tokenizer, reference):
    tokens, _, _ = reference
    with torch.inference_mode():
        last = model(tokens)[0, -1]  # what generation samples from (no hooks: the fused attention path)
    playground = SamplingPlayground(model, tokenizer, text=TEXT)
    assert torch.equal(playground.logits, last)
    playground.top_k_slider.value = 3
    assert int((playground.probs > 0).sum()) == 3
    assert torch.equal(playground.probs, sampling.logits_to_probs(last, temperature=1.0, top_k=3))
    assert len(playground.removed["top_k"]) == last.shape[-1] - 3
    # the right-hand bars are the filtered distribution, largest first, and only the tokens it kept
    bars = [patch.get_width() for patch in playground.figure.axes[1].patches]
    torch.testing.assert_close(torch.tensor(bars), playground.probs.topk(3).values.double(),
                               check_dtype=False)

    playground.top_k_slider.value = 0
    playground.temperature_slider.value = 1.5
    playground.top_p_slider.value = 0.3
    playground.min_p_slider.value = 0.9
    report = sampling.filter_report(last, temperature=1.5, top_p=0.3, min_p=0.9)
    assert torch.equal(playground.probs, report.probs)
    for name, mask in report.removed.items():
        assert playground.removed[name] == mask.nonzero()[:, 0].tolist()
    assert "top_p removed" in playground.summary.value

    playground.seed_box.value = 7
    playground.sample_button.click()
    expected = sampling.sample(last, temperature=1.5, top_p=0.3, min_p=0.9,
                               generator=sampling.make_generator(7))
    assert playground.samples == [int(expected)] and playground.seed_box.value == 8

    playground.temperature_slider.value = 0.0
    assert torch.equal(playground.probs, torch.nn.functional.one_hot(last.argmax(), last.shape[-1]).float())


def test_tokenizer_explorer_ids_are_tokenizer_encode(tokenizer):
    explorer = TokenizerExplorer(tokenizer, text="the cat")
    text = "The naïve dog 🦙<eos>"
    explorer.text_area.value = text
    assert explorer.ids == tokenizer.encode(text)
    assert explorer.pieces == [tokenizer.id_to_piece(i) for i in explorer.ids]
    assert explorer.kinds[0] == "special" and explorer.kinds[-1] == "special"  # <bos> ... <eos>
    assert explorer.kinds.count("byte") >= 4  # the llama's four UTF-8 bytes are not in a 512-piece vocabulary
    messages = [{"role": "user", "content": text}]
    assert explorer.chat_ids == tokenizer.apply_chat_template(messages, tokenize=True)
    assert "&lt;start_of_turn&gt;user" in str(explorer.out.recorded)
    explorer.add_bos.value = False
    assert explorer.ids == tokenizer.encode(text, add_bos=False)


def test_patching_explorer_restores_the_clean_run_where_the_prompts_differ(model, tokenizer):
    clean, corrupted = "Then the dog saw the", "Then a dog saw the"
    clean_ids, corrupted_ids = tokenizer.encode(clean), tokenizer.encode(corrupted)
    assert len(clean_ids) == len(corrupted_ids)
    differ = [p for p, (a, b) in enumerate(zip(clean_ids, corrupted_ids)) if a != b]
    assert len(differ) == 1
    explorer = PatchingExplorer(model, tokenizer, clean=clean, corrupted=corrupted, answer=" the", wrong=" a")
    assert explorer.error is None
    n_layers, n_pos = model.cfg.n_layers, len(clean_ids)
    assert explorer.by_pos.shape == (n_layers, n_pos) and explorer.by_head.shape == (n_layers, 4)

    def metric(ids):
        with torch.inference_mode():
            last = model(torch.tensor([ids]))[0, -1]
        return float(last[explorer.answer_id] - last[explorer.wrong_id])

    assert explorer.clean_metric == pytest.approx(metric(clean_ids), abs=1e-6)
    assert explorer.corrupted_metric == pytest.approx(metric(corrupted_ids), abs=1e-6)
    # Patching the embedding where the prompts differ turns the corrupted run into the clean run;
    # elsewhere it copies identical values and changes nothing.
    p = differ[0]
    assert explorer.by_pos[0, p] == pytest.approx(explorer.clean_metric, abs=1e-5)
    others = [q for q in range(n_pos) if q != p]
    unchanged = torch.full((n_pos - 1,), explorer.corrupted_metric)
    torch.testing.assert_close(explorer.by_pos[0, others], unchanged)
    assert torch.equal(explorer.shown_by_pos, explorer.by_pos - explorer.corrupted_metric)
    image = explorer.figure.axes[0].images[0].get_array().data
    torch.testing.assert_close(torch.as_tensor(image, dtype=torch.float32), explorer.shown_by_pos.float())

    explorer.normalize.value = True
    assert explorer.shown_by_pos[0, p] == pytest.approx(1.0, abs=1e-4)

    explorer.corrupted_box.value = "Then a big dog saw the"  # inputs apply on Run
    explorer.run_button.click()
    assert "same number of tokens" in explorer.summary.value
    explorer.corrupted_box.value = corrupted
    explorer.answer_box.value = " elephant"
    explorer.run_button.click()
    assert "exactly one" in explorer.summary.value


# ---------------------------------------------------------------------------------------------
# Defaults: the bundled tiny model
# ---------------------------------------------------------------------------------------------


def _bundled_model_exists() -> bool:
    try:
        folder = bundled.tiny_model_dir()
    except FileNotFoundError:
        return False
    return (folder / "model.safetensors").is_file()


@pytest.mark.skipif(not _bundled_model_exists(), reason="the bundled tiny model has not been built yet")
def test_widgets_default_to_the_bundled_tiny_model(monkeypatch):
    monkeypatch.delenv("GEMMA_LAB_MODEL", raising=False)
    stepper = InferenceStepper()
    tiny = gemma_lab.load_pretrained("tiny")
    assert stepper.cfg == tiny.cfg
    tokens = torch.tensor([gemma_lab.load_tokenizer("tiny").encode(stepper.text_box.value)])
    with torch.inference_mode():
        _, cache = tiny.run_with_cache(tokens, names_filter=cached_names)
    stepper.go("pattern", layer=tiny.cfg.n_layers - 1, head=0)
    assert torch.equal(stepper.shown_tensor, cache["pattern", tiny.cfg.n_layers - 1][0, 0])
    assert AttentionExplorer().model is stepper.model  # loaded once, shared


# ---------------------------------------------------------------------------------------------
# Bad settings: a message in the widget, never a traceback and never a silent clamp
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, setting, used", [
    (lambda m, t: LogitLensExplorer(m, t, text=TEXT, k=0), "k=0", lambda w: w.k == 10),
    (lambda m, t: SamplingPlayground(m, t, text=TEXT, bars=-1), "bars=-1", lambda w: w.bars == 12),
    (lambda m, t: SamplingPlayground(m, t, text=TEXT, seed=2**70), "seed=1180591620717411303424",
     lambda w: w.seed_box.value == 0),
    (lambda m, t: SamplingPlayground(m, t, text=TEXT, temperature=-1), "temperature=-1",
     lambda w: w.temperature_slider.value == 1.0),
    (lambda m, t: AttentionExplorer(m, t, text=TEXT, layer=99), "layer=99", lambda w: w.layer_slider.value == 0),
    (lambda m, t: InferenceStepper(m, t, text=TEXT, head=-2, top_p=7.0), "head=-2",
     lambda w: w.head_slider.value == 0 and w.top_p_slider.value == 1.0),
])
def test_out_of_range_settings_are_shown_in_the_widget(model, tokenizer, make, setting, used):
    widget = make(model, tokenizer)
    assert setting in widget.notice.value and "cannot be used" in widget.notice.value
    assert widget.notice in widget.widget.children  # shown, above the controls
    assert used(widget)


def test_a_checkpoint_name_where_a_model_is_expected_is_loaded():
    widget = AttentionExplorer("tiny", text="Mary and John")
    assert widget.cfg == gemma_lab.load_pretrained("tiny").cfg and widget.pattern is not None


def test_the_tokenizer_explorer_caps_long_text_and_shows_bad_text(tokenizer):
    from gemma_lab.widgets._common import MAX_TOKENIZER_CHARS

    explorer = TokenizerExplorer(tokenizer, text="ab " * 100_000)
    assert len(explorer.ids) <= MAX_TOKENIZER_CHARS + 1
    explorer.text_area.value = "bad \ud800 text"  # drives the observer: must not raise
    assert explorer.ids == [] and explorer.redraws >= 2


def test_the_sampling_playground_refuses_a_typed_seed_out_of_range(model, tokenizer):
    playground = SamplingPlayground(model, tokenizer, text=TEXT)
    playground.seed_box.value = 2**40
    playground.sample_button.click()
    assert "outside 0 to" in playground.summary.value and playground.samples == []


def test_sampling_playground_titles_colours_and_axes_read_cleanly(model, tokenizer):
    """What a browser showed wrong once: float noise in titles, one colour with two meanings,
    zero-probability bars padding the filtered side, a probability axis running past 1."""
    import matplotlib.colors as mcolors

    from gemma_lab.widgets import explorers

    playground = SamplingPlayground(model, tokenizer, text=TEXT)
    playground.top_p_slider.value = 0.9
    playground.temperature_slider.value = 0.7
    left, right = playground.figure.axes[:2]
    assert "top_p=0.9," in right.get_title() and "temperature=0.7," in right.get_title()
    assert "0000000" not in right.get_title()
    assert "\n" in left.get_title() and "\n" in right.get_title()  # two short lines each: no overlap
    for ax in (left, right):
        assert ax.get_xlim()[1] <= 1.0

    playground.top_k_slider.value = 2
    kept = int((playground.probs > 0).sum())
    assert kept == 2
    left, right = playground.figure.axes[:2]
    assert len(right.patches) == kept and all(p.get_width() > 0 for p in right.patches)
    removed = mcolors.to_hex(explorers.REMOVED_COLOUR)
    sampled = mcolors.to_hex(explorers.SAMPLED_COLOUR)
    assert removed != sampled
    left_colours = [mcolors.to_hex(p.get_facecolor()) for p in left.patches]
    assert left_colours[:2] != [removed] * 2 and left_colours[2:] == [removed] * (len(left_colours) - 2)
    playground.sample_button.click()
    right = playground.figure.axes[1]
    drawn = playground.samples[-1]
    colours = {tick.get_text(): mcolors.to_hex(p.get_facecolor())
               for tick, p in zip(right.get_yticklabels(), right.patches)}
    assert colours[viz.readable_token(playground._label(drawn))] == sampled
    assert removed not in colours.values()


@pytest.mark.skipif(not bundled.tiny_model_dir().joinpath("model.safetensors").is_file(),
                    reason="the bundled tiny model is not there")
def test_sampling_playground_opens_on_a_prompt_the_tiny_model_is_unsure_of():
    playground = SamplingPlayground()
    top = float(playground.probs.max())
    assert 0.3 < top < 0.95, f"the default prompt's top token has p = {top:.3f}: the controls would show little"


def test_text_boxes_stretch_instead_of_overflowing(model, tokenizer, stepper):
    explorer = PatchingExplorer(model, tokenizer, clean="Then the dog saw the", corrupted="Then a dog saw the",
                                answer=" the", wrong=" a")
    for box in (stepper.text_box, explorer.clean_box, explorer.corrupted_box,
                AttentionExplorer(model, tokenizer, text=TEXT).text_box):
        assert box.layout.width == "auto" and box.layout.align_self == "stretch"


def test_patching_explorer_drops_its_heatmaps_when_the_inputs_are_wrong(model, tokenizer, widget_outputs):
    explorer = PatchingExplorer(model, tokenizer, clean="Then the dog saw the", corrupted="Then a dog saw the",
                                answer=" the", wrong=" a")
    assert len(widget_outputs.pngs(explorer.out)) == 2
    explorer.answer_box.value = " elephant"
    explorer.run_button.click()
    assert "exactly one" in explorer.summary.value
    assert widget_outputs.pngs(explorer.out) == [] and explorer.figures == []
    assert "No patching results" in str(explorer.out.recorded)  # a message replaces the old pictures
    assert explorer.by_pos is None and explorer.shown_by_head is None


def test_stepper_names_the_layer_in_its_stage_list_and_shows_appended_text(stepper, tokenizer):
    labels = dict((value, label) for label, value in stepper.stage_list.options)
    assert "layer 0 · " in labels["z"] and "layer" not in labels["tokens"]
    stepper.go("z", layer=3)
    labels = dict((value, label) for label, value in stepper.stage_list.options)
    assert "layer 3 · " in labels["z"] and stepper.current_stage == "z"
    stepper.layer_slider.value = 4
    assert stepper.current_stage == "z" and "layer 4 · " in dict(
        (value, label) for label, value in stepper.stage_list.options)["z"]

    stepper.temperature_slider.value = 0.0
    stepper.append_button.click()
    stepper.append_button.click()
    assert stepper.text_box.value == tokenizer.decode(stepper.tokens[0].tolist())
    assert len(stepper.generated) == 2 and stepper.cache_lengths()  # writing the box did not rerun the prompt
    assert stepper.current_stage == "kv_cache"

    stepper.text_box.value = "word " * 200  # an error: the picture is replaced by a message
    assert stepper.figures == [] and "Nothing to show" in str(stepper.out.recorded)
