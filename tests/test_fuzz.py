"""Fuzzing bad input: every case ends in a clear error (naming the field, file, tensor or limit) or a
correct result; never a bare KeyError/TypeError from deep inside, a silent garbage result or a hang.

Property tests over config.json fields, checkpoint file corruptions, prompt strings, sampling
parameters and hook specs. ``FUZZ_EXAMPLES`` sets how many cases each property tries.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import torch
from hf_checkpoints import write_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gemma_lab
from gemma_lab import CheckpointError, sampling

FUZZ_EXAMPLES = int(os.environ.get("GEMMA_LAB_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError)  # CheckpointError is a ValueError

json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.sampled_from([0, 1, 2, -1, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 4.7, -3.0, 1e-300, 1e300]),
    st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                   st.integers(), max_size=2))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("fuzz"), 3, seed=2)


@pytest.fixture(scope="module")
def base_config(checkpoint) -> dict:
    return json.loads((checkpoint / "config.json").read_text())


def assert_clear(error: BaseException, *names: str) -> None:
    """A clear error: an expected type, and a message that names one of ``names``."""
    assert isinstance(error, CLEAR_ERRORS), f"unclear error type {type(error).__name__}: {error}"
    assert any(name in str(error) for name in names), f"message names none of {names}: {error}"


# ---- config.json fields -------------------------------------------------------------------------------

FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "sliding_window",
          "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping", "layer_types",
          "rope_parameters", "hidden_activation", "model_type", "sliding_window_pattern"]


@FUZZ
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_fuzzed_config_fields(base_config, field, value):
    config = {**base_config, field: value}
    try:
        cfg = gemma_lab.GemmaConfig.from_hf(config)
    except Exception as error:  # noqa: BLE001 - the point is to classify whatever comes out
        assert_clear(error, field, "config", "GemmaConfig.", "RoPE", "layer_types")
        return
    # Accepted: every number the model will use must be usable, and a small model must compute.
    assert all(getattr(cfg, n) >= 1 for n in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_mlp"))
    assert cfg.norm_eps > 0 and math.isfinite(cfg.norm_eps) and cfg.rope_theta > 0
    assert cfg.final_softcap is None or cfg.final_softcap > 0
    if cfg.n_params() < 3_000_000:
        model = gemma_lab.init_weights(gemma_lab.Gemma(cfg), seed=0)
        logits = model(torch.tensor([[1, 2, 3]]) % cfg.vocab_size)
        assert torch.isfinite(logits).all()


# ---- checkpoint files -----------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_fuzzed_safetensors_files(checkpoint, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("corrupt")
    for file in checkpoint.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    target = folder / "model.safetensors"
    raw = bytearray(target.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    how = data.draw(st.sampled_from(["truncate", "flip_header", "new_header", "length"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip_header":
        at = data.draw(st.integers(8, 8 + header_len - 1))
        raw[at] = data.draw(st.integers(0, 255))
    elif how == "new_header":
        header = json.dumps(data.draw(json_values)).encode()
        raw = bytearray(len(header).to_bytes(8, "little") + header + raw[8 + header_len:])
    else:
        raw[:8] = data.draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    target.write_bytes(bytes(raw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN from a flipped data byte is a warning
            gemma_lab.load_pretrained(folder)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "model.safetensors", "config.json")


@FUZZ
@given(index=json_values)
def test_fuzzed_index_files(checkpoint, tmp_path_factory, index):
    folder = tmp_path_factory.mktemp("index")
    for file in checkpoint.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    with pytest.raises(CLEAR_ERRORS) as raised:
        gemma_lab.load_pretrained(folder)
    assert_clear(raised.value, "model.safetensors.index.json")


# ---- strings ----------------------------------------------------------------------------------------------

@FUZZ
@given(text=st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40))
def test_fuzzed_prompt_strings(text):
    tokenizer = gemma_lab.load_tokenizer("tiny")
    try:
        ids = tokenizer.encode(text)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "lone surrogate")
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        return
    assert ids[0] == tokenizer.bos_id and all(0 <= i < tokenizer.vocab_size for i in ids)


# ---- sampling and generation arguments -------------------------------------------------------------------

@FUZZ
@given(name=st.sampled_from(["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed",
                             "max_new_tokens"]),
       value=json_values)
def test_fuzzed_generation_arguments(name, value):
    model = gemma_lab.load_pretrained("tiny")
    kwargs = {"max_new_tokens": 2, "temperature": 1.0, name: value}
    try:
        result = gemma_lab.generate(model, [2, 100, 200], **kwargs)
    except Exception as error:  # noqa: BLE001
        assert_clear(error, name)
        return
    assert len(result.token_ids) <= kwargs["max_new_tokens"]
    assert all(0 <= t < model.cfg.vocab_size for t in result.token_ids)


@FUZZ
@given(logits=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=8),
       temperature=st.sampled_from([0.0, 0.5, 1.0]))
def test_fuzzed_logits(logits, temperature):
    tensor = torch.tensor(logits)
    try:
        token = int(sampling.sample(tensor, temperature=temperature, generator=sampling.make_generator(0)))
    except Exception as error:  # noqa: BLE001
        assert_clear(error, "NaN", "+inf", "-inf")
        return
    assert 0 <= token < len(logits) and not math.isnan(logits[token])


# ---- hook specs -------------------------------------------------------------------------------------------

@FUZZ
@given(spec=st.one_of(json_values, st.tuples(json_values, json_values),
                      st.lists(st.tuples(json_values, st.just(lambda x, hook: None)), max_size=2)))
def test_fuzzed_hook_specs(spec):
    model = gemma_lab.load_pretrained("tiny")
    try:
        model.run_with_hooks(torch.tensor([[2, 5, 6]]), fwd_hooks=spec)
    except Exception as error:  # noqa: BLE001
        assert isinstance(error, (TypeError, KeyError)), f"{type(error).__name__}: {error}"
        assert "fwd_hooks" in str(error) or "names_filter" in str(error) or "no hook point" in str(error)
