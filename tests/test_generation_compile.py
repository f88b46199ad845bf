"""The compiled decode step: fixed shapes, equal to the eager step, hooks see the eager pass, and a
compiler that fails falls back to eager with one warning.

``compile="eager"`` (torch.compile's tracing without code generation) keeps these tests fast and
free of a C++ toolchain; ``compile=True`` (inductor) runs the same traced graph through a compiler
and is measured by ``python -m tools.bench decode`` (docs/performance.md).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hf_checkpoints import hf_model
from test_generation import GEMMA3_HF_LAYOUT, REL_TOL, random_model, random_tokens, rel_diff

import gemma_lab
from gemma_lab import generation
from gemma_lab.generation import decode_step, generate, prefill

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def uncompiled(model, token_ids, cache):
    """The function torch.compile would trace, run as it is: the fixed-shape path without a compiler."""
    return generation._one_token_forward(model, token_ids, cache)


@pytest.mark.parametrize("family", [2, 3])
def test_fixed_shape_step_equals_the_eager_step_far_past_the_window(family):
    """Writing at a tensor index and attending to the whole buffer (empty slots masked) gives the
    logits of the usual step, for a left-padded batch, on sliding-window and global layers."""
    model = random_model(family, seed=40 + family)
    window = model.cfg.sliding_window
    tokens = random_tokens((2, 4 + 5 * window), seed=family)
    mask = torch.ones_like(tokens)
    mask[1, :2] = 0  # row 1 is left-padded by two
    with torch.no_grad():
        _, eager_cache = prefill(model, tokens[:, :4], attention_mask=mask[:, :4], max_len=tokens.shape[1])
        _, fixed_cache = prefill(model, tokens[:, :4], attention_mask=mask[:, :4], max_len=tokens.shape[1])
        for i in range(4, tokens.shape[1]):
            eager = decode_step(model, tokens[:, i], eager_cache)
            fixed = generation._fixed_shape_step(model, "none", uncompiled, tokens[:, i:i + 1], fixed_cache, True)
            assert rel_diff(fixed, eager) <= REL_TOL, f"step {i}"
    assert fixed_cache.length == eager_cache.length == tokens.shape[1]
    assert torch.equal(fixed_cache.seen, eager_cache.seen)
    assert fixed_cache.write_index is None  # only set for the duration of one pass
    with pytest.raises(ValueError, match="KVCache is full"):
        generation._fixed_shape_step(model, "none", uncompiled, tokens[:, :1], fixed_cache, True)


@pytest.mark.slow
def test_compiled_generate_equals_eager_and_transformers(tmp_path):
    """Traced by torch.compile (fullgraph: no graph break), greedy tokens equal the eager path's and
    transformers' own; a sliding window of 8 is passed many times over."""
    # Two layers, one sliding (window 8) and one global: tracing time grows with the layers.
    layout = dict(GEMMA3_HF_LAYOUT, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    hf = hf_model(3, **layout)
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(0.2)  # as separated_hf_model: a clear argmax at each step
    hf.save_pretrained(tmp_path)
    ours = gemma_lab.load_pretrained(tmp_path, progress=False)
    prompt = random_tokens((1, 6), seed=3, vocab=hf.config.vocab_size)[0]
    with torch.no_grad():
        expected = hf.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]), max_new_tokens=30,
                               do_sample=False, eos_token_id=None)[0, 6:].tolist()
    eager = generate(ours, prompt, max_new_tokens=30, stop=[]).token_ids
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn: the compiled path really ran
        compiled = generate(ours, prompt, max_new_tokens=30, stop=[], compile="eager").token_ids
    assert generation._COMPILED[ours]["eager"] is not None
    assert compiled == eager == expected
    assert len(set(expected)) >= 3  # not one token repeated


class FakeCompiler:
    """Stands in for torch.compile: counts the compiled calls, or fails as a missing compiler would."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.calls = fail, 0

    def __call__(self, fn, **options):
        assert options == {"backend": "inductor", "fullgraph": True}

        def compiled(*args):
            self.calls += 1
            if self.fail:
                raise RuntimeError("simulated: InvalidCxxCompiler: No working C++ compiler found\nmore detail")
            return fn(*args)
        return compiled


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch):
    model = random_model(2, seed=50)
    prompt = random_tokens((7,), seed=50).tolist()
    expected = generate(model, prompt, max_new_tokens=12, stop=[]).token_ids
    fake = FakeCompiler(fail=True)
    monkeypatch.setattr(torch, "compile", fake)
    with pytest.warns(RuntimeWarning) as caught:
        got = generate(model, prompt, max_new_tokens=12, stop=[], compile=True).token_ids
        again = generate(model, prompt, max_new_tokens=12, stop=[], compile=True).token_ids
    assert got == again == expected
    assert fake.calls == 1  # tried once; every later step runs eagerly
    messages = [str(w.message) for w in caught]
    assert messages == ["compile='inductor': decoding without torch.compile "
                        "(RuntimeError: simulated: InvalidCxxCompiler: No working C++ compiler found)"]


def test_hooks_see_the_eager_pass_and_the_compiled_step_runs_only_unwatched(monkeypatch):
    model = random_model(3, seed=51)
    prompt = random_tokens((5,), seed=51).tolist()
    fake = FakeCompiler(fail=False)
    monkeypatch.setattr(torch, "compile", fake)
    expected = generate(model, prompt, max_new_tokens=10, stop=[]).token_ids
    assert generate(model, prompt, max_new_tokens=10, stop=[], compile=True).token_ids == expected
    assert fake.calls == 9  # every decode step (the prompt pass is never compiled)
    fired = []
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: fired.append(hook.step))]):
        watched = generate(model, prompt, max_new_tokens=10, stop=[], compile=True).token_ids
    assert watched == expected
    assert fired == list(range(10)) and fake.calls == 9  # the hook fired at every step, eagerly


def test_compile_argument_is_checked():
    model = random_model(1)
    with pytest.raises(TypeError, match="compile must be True, False or a torch.compile backend name"):
        generate(model, [2, 5], max_new_tokens=2, compile=3)
