"""Tests for gemma_lab.sampling: hand-worked examples, parity with transformers' logits processors,
greedy and seeded draws, parameter validation, and the per-filter report."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gemma_lab.sampling import (
    FILTER_ORDER,
    SamplingParams,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    filter_logits,
    filter_report,
    logits_to_probs,
    make_generator,
    sample,
)

INF = math.inf
BATCH, VOCAB = 3, 50


def random_logits(seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """[batch=3, vocab=50] fp32 logits, spread enough that the filters have something to cut."""
    return torch.randn(BATCH, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def random_previous_tokens(seed: int = 0, n_prev: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, n_prev), generator=torch.Generator().manual_seed(seed + 100))


def log_probs(*probs: float) -> torch.Tensor:
    return torch.tensor(probs).log()


# ----------------------------------------------------------------------------------------------
# Each filter on a hand-worked example
# ----------------------------------------------------------------------------------------------


def test_temperature_by_hand():
    logits = torch.tensor([2.0, -1.0, 0.5])
    torch.testing.assert_close(apply_temperature(logits, 0.5), torch.tensor([4.0, -2.0, 1.0]))
    torch.testing.assert_close(apply_temperature(logits, 2.0), torch.tensor([1.0, -0.5, 0.25]))
    # temperature 0: only the argmax survives, first index on ties, its logit untouched
    torch.testing.assert_close(
        apply_temperature(torch.tensor([1.0, 3.0, 3.0]), 0.0), torch.tensor([-INF, 3.0, -INF])
    )


def test_top_k_by_hand():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0], [0.0, -1.0, 5.0, 2.0]])
    expected = torch.tensor([[-INF, 4.0, -INF, 3.0], [-INF, -INF, 5.0, 2.0]])
    torch.testing.assert_close(apply_top_k(logits, 2), expected)
    # k larger than the vocab keeps everything
    torch.testing.assert_close(apply_top_k(logits, 100), logits)
    # a tie with the k-th largest survives too (a threshold on the value, as in transformers)
    torch.testing.assert_close(
        apply_top_k(torch.tensor([3.0, 1.0, 3.0, 2.0]), 1), torch.tensor([3.0, -INF, 3.0, -INF])
    )


def test_top_p_by_hand():
    # probabilities 0.5, 0.25, 0.125, 0.125 are exact in binary, so the sums below are exact too
    logits = log_probs(0.125, 0.5, 0.125, 0.25)
    # 0.5 alone reaches 0.4: keep just the top token
    assert torch.isfinite(apply_top_p(logits, 0.4)).tolist() == [False, True, False, False]
    # 0.5 < 0.6 <= 0.5 + 0.25: the token that crosses top_p is kept
    assert torch.isfinite(apply_top_p(logits, 0.6)).tolist() == [False, True, False, True]
    # exactly on the boundary: 0.5 + 0.25 == 0.75 already reaches top_p, so nothing more is kept
    assert torch.isfinite(apply_top_p(logits, 0.75)).tolist() == [False, True, False, True]
    # just past it, one of the tied 0.125s is needed; the larger id wins the tie
    assert torch.isfinite(apply_top_p(logits, 0.76)).tolist() == [False, True, True, True]
    # top_p = 1 keeps everything; a tiny top_p still keeps the top token
    torch.testing.assert_close(apply_top_p(logits, 1.0), logits)
    assert torch.isfinite(apply_top_p(logits, 1e-9)).tolist() == [False, True, False, False]


def test_top_p_ties_are_deterministic_and_match_transformers():
    flat = torch.zeros(2, 4)  # four tokens at 0.25 each
    ours = apply_top_p(flat, 0.3)
    # two tokens are needed to reach 0.3; the tie goes to the larger ids, every time
    assert torch.isfinite(ours).tolist() == [[False, False, True, True]] * 2
    torch.testing.assert_close(ours, TopPLogitsWarper(0.3)(None, flat))


def test_min_p_by_hand():
    logits = log_probs(0.5, 0.3, 0.15, 0.05)
    # bar = 0.2 * 0.5 = 0.1: the 0.05 token goes
    assert torch.isfinite(apply_min_p(logits, 0.2)).tolist() == [True, True, True, False]
    # bar = 0.5 * 0.5 = 0.25
    assert torch.isfinite(apply_min_p(logits, 0.5)).tolist() == [True, True, False, False]
    # min_p = 1 keeps only the top; min_p = 0 keeps everything
    assert torch.isfinite(apply_min_p(logits, 1.0)).tolist() == [True, False, False, False]
    torch.testing.assert_close(apply_min_p(logits, 0.0), logits)


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0], [2.0, -2.0, 1.0, -1.0]])
    previous = torch.tensor([[0, 1, 1], [3, 3, 3]])  # repeats are penalised once
    expected = torch.tensor([[1.0, -4.0, 1.0, -1.0], [2.0, -2.0, 1.0, -2.0]])
    torch.testing.assert_close(apply_repetition_penalty(logits, previous, 2.0), expected)
    # a 1-D history is shared by every row; a penalty below 1 rewards repeats
    shared = apply_repetition_penalty(logits, torch.tensor([2, 3]), 0.5)
    torch.testing.assert_close(shared, torch.tensor([[2.0, -2.0, 2.0, -0.5]] * 2))
    # an empty history changes nothing
    torch.testing.assert_close(
        apply_repetition_penalty(logits, torch.zeros(2, 0, dtype=torch.long), 2.0), logits
    )


def test_repetition_penalty_rejects_bad_token_ids():
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="previous_tokens"):
        apply_repetition_penalty(logits, torch.tensor([[0, 4]]), 1.5)
    with pytest.raises(ValueError, match="previous_tokens"):
        apply_repetition_penalty(logits, torch.tensor([[0.0, 1.0]]), 1.5)
    with pytest.raises(ValueError, match="previous_tokens"):
        apply_repetition_penalty(logits, torch.zeros(3, 2, dtype=torch.long), 1.5)  # batch of 3 vs 2
    with pytest.raises(ValueError, match="previous_tokens"):
        logits_to_probs(logits, repetition_penalty=1.5)  # a penalty with no history to apply it to


def test_logits_to_probs_by_hand():
    logits = log_probs(0.1, 0.6, 0.3)
    torch.testing.assert_close(logits_to_probs(logits), torch.tensor([0.1, 0.6, 0.3]))
    # top_k=2 drops 0.1 and renormalises 0.6 : 0.3
    torch.testing.assert_close(logits_to_probs(logits, top_k=2), torch.tensor([0.0, 2 / 3, 1 / 3]))
    # temperature 0 is a one-hot on the argmax, whatever the other filters say
    torch.testing.assert_close(
        logits_to_probs(logits, temperature=0.0, top_p=0.9), torch.tensor([0.0, 1.0, 0.0])
    )
    # bf16 logits come back as fp32 probabilities
    probs = logits_to_probs(random_logits().bfloat16(), top_k=5)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(BATCH))
    assert ((probs > 0).sum(-1) == 5).all()


# ----------------------------------------------------------------------------------------------
# Parity with transformers' processors (batch of 3, vocab 50, random logits)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 1.8])
def test_temperature_matches_transformers(temperature):
    logits = random_logits(1)
    torch.testing.assert_close(
        apply_temperature(logits, temperature), TemperatureLogitsWarper(temperature)(None, logits)
    )


@pytest.mark.parametrize("top_k", [1, 3, 10, 49, 50, 80])
def test_top_k_matches_transformers(top_k):
    logits = random_logits(2)
    torch.testing.assert_close(apply_top_k(logits, top_k), TopKLogitsWarper(top_k)(None, logits))


@pytest.mark.parametrize("top_p", [0.01, 0.3, 0.5, 0.75, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_top_p_matches_transformers(top_p, seed):
    logits = random_logits(seed)
    ours = apply_top_p(logits, top_p)
    torch.testing.assert_close(ours, TopPLogitsWarper(top_p)(None, logits))
    if top_p < 1:
        assert (~torch.isfinite(ours)).any(), "the example should actually cut something"


def test_top_p_matches_transformers_on_exact_boundary():
    logits = log_probs(0.125, 0.5, 0.125, 0.25).expand(BATCH, 4)
    for top_p in (0.5, 0.75, 0.875):
        torch.testing.assert_close(apply_top_p(logits, top_p), TopPLogitsWarper(top_p)(None, logits))


@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.1, 0.3, 0.9, 1.0])
def test_min_p_matches_transformers(min_p):
    logits = random_logits(6)
    torch.testing.assert_close(apply_min_p(logits, min_p), MinPLogitsWarper(min_p)(None, logits))


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    logits = random_logits(7)
    previous = random_previous_tokens(7)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(previous, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, previous, penalty), expected)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
        SamplingParams(temperature=1.5, top_p=0.8),
        SamplingParams(temperature=0.5, top_k=8, min_p=0.2),
        SamplingParams(temperature=1.0, repetition_penalty=0.8, top_p=0.6),
    ],
)
def test_whole_pipeline_matches_transformers_order(params):
    """The processors in generate()'s order: repetition penalty, temperature, top-k, top-p, min-p."""
    logits, previous = random_logits(8), random_previous_tokens(8)
    processors = LogitsProcessorList()
    if params.repetition_penalty is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p is not None:
        processors.append(TopPLogitsWarper(params.top_p))
    if params.min_p is not None:
        processors.append(MinPLogitsWarper(params.min_p))
    expected = processors(previous, logits.clone())
    kwargs = {**dataclasses.asdict(params), "previous_tokens": previous}
    torch.testing.assert_close(filter_logits(logits, **kwargs), expected)
    torch.testing.assert_close(logits_to_probs(logits, **kwargs), expected.softmax(-1))


def test_filter_order_is_documented_order():
    assert FILTER_ORDER == ("repetition_penalty", "temperature", "top_k", "top_p", "min_p")
    assert list(filter_report(random_logits()).removed) == list(FILTER_ORDER)


# ----------------------------------------------------------------------------------------------
# Greedy and seeded sampling
# ----------------------------------------------------------------------------------------------


def test_greedy_is_argmax():
    logits = random_logits(9)
    assert torch.equal(sample(logits), logits.argmax(-1))
    assert sample(logits).dtype == torch.long
    # first index on ties, and no randomness consumed
    tied = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert sample(tied, top_k=3, generator=make_generator(0)).tolist() == [1, 0]
    # a 1-D row gives a 0-d id
    assert sample(torch.tensor([0.1, 0.9, 0.3])).shape == ()


def test_greedy_applies_repetition_penalty():
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    assert sample(logits, repetition_penalty=2.0, previous_tokens=torch.tensor([[0]])).tolist() == [1]


def test_seeded_sampling_is_reproducible():
    logits = random_logits(10, scale=1.0)
    params = {"temperature": 1.0, "top_k": 30, "top_p": 0.95}

    def draws(seed: int) -> torch.Tensor:
        generator = make_generator(seed)
        return torch.stack([sample(logits, generator=generator, **params) for _ in range(100)])

    first = draws(1234)
    assert first.shape == (100, BATCH)
    assert torch.equal(first, draws(1234))
    assert not torch.equal(first, draws(4321))


def test_make_generator_follows_device_and_rejects_bad_seed():
    assert make_generator(0).device == torch.device("cpu")
    assert make_generator(0, random_logits().device).device.type == "cpu"
    with pytest.raises(TypeError, match="seed"):
        make_generator(1.5)


def test_sampling_frequencies_match_probs():
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    n = 20_000
    tokens = sample(probs.log().expand(n, 5), temperature=1.0, generator=make_generator(0))
    counts = torch.bincount(tokens, minlength=5).double()
    expected = probs.double() * n
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 25.0  # 4 degrees of freedom: P(chi2 > 25) is about 5e-5


def test_sampling_never_draws_a_removed_token():
    logits = random_logits(11)
    probs = logits_to_probs(logits, temperature=1.2, top_p=0.7)
    tokens = sample(logits.repeat(200, 1), temperature=1.2, top_p=0.7, generator=make_generator(5))
    assert (probs.repeat(200, 1).gather(-1, tokens[:, None]) > 0).all()


# ----------------------------------------------------------------------------------------------
# Validation: one rule set, the same error everywhere
# ----------------------------------------------------------------------------------------------

INVALID = [
    ("temperature", -0.1),
    ("temperature", math.inf),
    ("temperature", math.nan),
    ("temperature", None),
    ("top_k", 0),
    ("top_k", -3),
    ("top_k", 2.5),
    ("top_k", True),
    ("top_p", 0.0),
    ("top_p", 1.01),
    ("top_p", -0.5),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
]


@pytest.mark.parametrize("name,value", INVALID)
def test_invalid_params_raise_naming_the_parameter(name, value):
    with pytest.raises(ValueError, match=name) as caught:
        SamplingParams(**{name: value})
    assert repr(value) in str(caught.value)
    logits = random_logits()
    previous = random_previous_tokens()
    with pytest.raises(ValueError, match=name):
        logits_to_probs(logits, previous_tokens=previous, **{name: value})
    with pytest.raises(ValueError, match=name):
        sample(logits, previous_tokens=previous, **{name: value})
    with pytest.raises(ValueError, match=name):
        filter_report(logits, previous_tokens=previous, **{name: value})
    if value is not None:
        apply = {
            "temperature": lambda: apply_temperature(logits, value),
            "top_k": lambda: apply_top_k(logits, value),
            "top_p": lambda: apply_top_p(logits, value),
            "min_p": lambda: apply_min_p(logits, value),
            "repetition_penalty": lambda: apply_repetition_penalty(logits, previous, value),
        }[name]
        with pytest.raises(ValueError, match=name):
            apply()


def test_error_message_states_the_allowed_range():
    with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\].*got 1\.5"):
        SamplingParams(top_p=1.5)


def test_valid_params_are_accepted_and_frozen():
    params = SamplingParams(temperature=0.8, top_k=40, top_p=1.0, min_p=0.0, repetition_penalty=1.1)
    with pytest.raises(AttributeError):
        params.temperature = 2.0  # type: ignore[misc]
    assert SamplingParams() == SamplingParams(temperature=0.0)


# ----------------------------------------------------------------------------------------------
# filter_report
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.8, "top_k": 30, "top_p": 0.8, "min_p": 0.1, "repetition_penalty": 1.2},
        {"temperature": 1.0},
        {"temperature": 0.0, "top_k": 5},
        {"top_p": 0.5},
    ],
)
def test_filter_report_masks_agree_with_probs(kwargs):
    logits, previous = random_logits(12), random_previous_tokens(12)
    report = filter_report(logits, previous_tokens=previous, **kwargs)
    torch.testing.assert_close(report.probs, logits_to_probs(logits, previous_tokens=previous, **kwargs))
    masks = torch.stack(list(report.removed.values()))
    assert masks.dtype == torch.bool and masks.shape == (len(FILTER_ORDER), BATCH, VOCAB)
    assert (masks.sum(0) <= 1).all(), "each token is removed by at most one step"
    assert torch.equal(masks.any(0), report.probs == 0)
    assert not report.removed["repetition_penalty"].any()


def test_filter_report_attributes_each_removal_to_its_step():
    logits = log_probs(0.4, 0.3, 0.15, 0.1, 0.05)
    report = filter_report(logits, top_k=4, top_p=0.8, min_p=0.5)
    assert report.removed["top_k"].nonzero().flatten().tolist() == [4]
    assert report.removed["top_p"].nonzero().flatten().tolist() == [3]  # 0.4+0.3+0.15 of 0.95 reach 0.8
    assert report.removed["min_p"].nonzero().flatten().tolist() == [2]  # 0.15/0.85 < 0.5 * 0.4/0.85
    assert not report.removed["temperature"].any()
    # a logit that was -inf before any filter belongs to no step
    masked = torch.tensor([0.0, -INF, 1.0])
    assert not torch.stack(list(filter_report(masked, top_k=1).removed.values()))[:, 1].any()


# ----------------------------------------------------------------------------------------------
# Properties on random inputs
# ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_k=st.none() | st.integers(1, 60),
    top_p=st.none() | st.floats(0.01, 1.0),
    min_p=st.none() | st.floats(0.0, 1.0),
)
def test_probs_are_a_distribution_and_top_p_set_is_minimal(seed, temperature, top_k, top_p, min_p):
    logits = random_logits(seed)
    probs = logits_to_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    torch.testing.assert_close(probs.sum(-1), torch.ones(BATCH))
    assert ((probs > 0).sum(-1) >= 1).all()
    assert (probs.argmax(-1) == logits.argmax(-1)).all(), "no filter ever removes the most likely token"
    if top_p is not None and top_p < 1:
        # the kept set reaches top_p, and dropping its least likely member would fall short
        before = torch.softmax(logits, -1)
        kept = torch.isfinite(apply_top_p(logits, top_p))
        mass = (before * kept).sum(-1)
        smallest_kept = torch.where(kept, before, INF).amin(-1)
        assert (mass >= top_p - 1e-6).all()
        assert (mass - smallest_kept < top_p + 1e-6).all()



@pytest.mark.parametrize("kwargs", [{}, {"temperature": 1.0}, {"temperature": 0.7, "top_k": 5},
                                    {"temperature": 1.0, "top_p": 0.9}, {"temperature": 1.0, "min_p": 0.1},
                                    {"repetition_penalty": 1.3, "previous_tokens": torch.tensor([1, 2])}])
def test_sample_refuses_nan_logits_in_every_mode(kwargs):
    logits = random_logits()
    logits[..., 3] = float("nan")
    with pytest.raises(ValueError, match="logits hold NaN"):
        sample(logits, generator=make_generator(0), **kwargs)


@pytest.mark.parametrize("seed, error", [("abc", TypeError), (1.5, TypeError), (True, TypeError),
                                         (2**64, ValueError), (-1, ValueError)])
def test_make_generator_names_an_unusable_seed(seed, error):
    with pytest.raises(error, match="seed"):
        make_generator(seed)


@pytest.mark.parametrize("kwargs", [{"temperature": 1e-300},
                                    {"temperature": 1.0, "repetition_penalty": 1e-300,
                                     "previous_tokens": torch.tensor([4])}])
def test_a_scale_near_zero_gives_its_limit_not_nan(kwargs):
    """Found by tests/test_fuzz.py: logits / 1e-300 overflow to +inf and softmax gave NaN."""
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0, 2.5])
    probs = logits_to_probs(logits, **kwargs)
    expected = 4 if "repetition_penalty" in kwargs else 1  # the boosted repeat, or the argmax
    assert torch.equal(probs, torch.nn.functional.one_hot(torch.tensor(expected), 5).float())
    assert int(sample(logits, generator=make_generator(0), **kwargs)) == expected
