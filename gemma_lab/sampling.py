"""Choosing the next token: the filters that reshape a distribution, and the draw itself.

Role. The model returns logits and nothing else; everything between those logits and the next
token id lives here, as plain functions on tensors of shape ``[..., vocab]`` (the last axis is
``vocab``; any leading axes, usually ``batch``, are carried along). Nothing here holds state:
the same logits, parameters and generator seed always give the same tokens. The generation
loop calls ``sample``; widgets call ``logits_to_probs`` and ``filter_report`` to draw what each
filter did to the distribution.

Must not import: the model, the loader, plotting or widgets (sampling sits below all of them,
and a test checks the import list).

The filters, applied in this order (``FILTER_ORDER``), which is the order transformers'
``generate`` builds its processors in (``GenerationMixin._get_logits_processor``: the repetition
penalty is a processor, then come the sampling warpers temperature, top-k, top-p, min-p):

====================  =================================================================
repetition_penalty    for every token id already in ``previous_tokens``: a positive logit
                      is divided by the penalty, a negative one multiplied by it (CTRL).
temperature           logits / temperature; temperature 0 keeps only the argmax (greedy).
top_k                 keep the k largest logits (and any logit tied with the k-th).
top_p                 keep the smallest set of most probable tokens whose probability adds
                      up to at least top_p (nucleus); the token that crosses top_p is kept.
min_p                 keep tokens whose probability is >= min_p * the largest probability.
====================  =================================================================

Every filter returns logits with the removed entries set to ``-inf``, so ``softmax`` of the
result renormalises over the survivors. All filtering in ``logits_to_probs`` / ``sample`` runs
in fp32: bf16 logits divided by a temperature and pushed through softmax lose exactly the small
probabilities a widget wants to show.

Parameters are checked in one place, ``check_sampling_param``; ``SamplingParams`` and every
function here go through it, so a bad value gets the same ``ValueError`` everywhere.

References: Keskar et al. 2019, "CTRL" (repetition penalty); Fan et al. 2018, "Hierarchical
Neural Story Generation" (top-k); Holtzman et al. 2019, "The Curious Case of Neural Text
Degeneration" (top-p); Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling" (min-p);
transformers ``generation/logits_process.py`` (the parity oracle in ``tests/test_sampling.py``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch

#: The filter steps in the order they are applied (see the module docstring).
FILTER_ORDER = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p")


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def check_sampling_param(name: str, value: object) -> None:
    """Raise ``ValueError`` naming the parameter, its value and the allowed range if ``value`` is not allowed.

    The one place the rules live. ``None`` switches a filter off and is allowed for every
    parameter except ``temperature`` (use 1.0 for "unchanged" and 0.0 for greedy).
    """
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if name == "temperature":
        allowed = "a finite number >= 0 (0 means greedy)"
        ok = is_real and 0 <= value < math.inf
    elif value is None:
        return
    elif name == "top_k":
        allowed = "an integer >= 1, or None"
        ok = is_int and value >= 1
    elif name == "top_p":
        allowed = "a number in (0, 1], or None"
        ok = is_real and 0 < value <= 1
    elif name == "min_p":
        allowed = "a number in [0, 1], or None"
        ok = is_real and 0 <= value <= 1
    elif name == "repetition_penalty":
        allowed = "a finite number > 0 (1 means no penalty), or None"
        ok = is_real and 0 < value < math.inf
    else:
        raise ValueError(f"unknown sampling parameter {name!r}; known: {', '.join(FILTER_ORDER)}")
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into a next token; the defaults mean greedy decoding."""

    temperature: float = 0.0  # 0 = greedy (argmax); 1 = the model's own distribution; >1 flatter
    top_k: int | None = None  # keep the k most likely tokens; None = off
    top_p: float | None = None  # nucleus: keep the smallest set holding >= top_p of the mass; None = off
    min_p: float | None = None  # keep tokens with prob >= min_p * max prob; None = off
    repetition_penalty: float | None = None  # CTRL penalty on tokens already seen; None or 1 = off

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for the first field outside its allowed range."""
        for field in dataclasses.fields(self):
            check_sampling_param(field.name, getattr(self, field.name))


# ----------------------------------------------------------------------------------------------
# The filters: logits [..., vocab] in, logits [..., vocab] out, removed entries at -inf
# ----------------------------------------------------------------------------------------------


def apply_repetition_penalty(
    logits: torch.Tensor, previous_tokens: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every token id that occurs in ``previous_tokens`` (CTRL; transformers' rule).

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when
    negative, so ``penalty > 1`` always makes it less likely, whatever its sign. Each id is
    penalised once, however often it occurred. ``previous_tokens`` is ``[..., n_prev]`` with the
    same leading axes as ``logits``, or ``[n_prev]`` shared by every row. Removes no token.
    """
    check_sampling_param("repetition_penalty", penalty)
    if (
        previous_tokens.is_floating_point()
        or previous_tokens.is_complex()
        or previous_tokens.dtype == torch.bool
    ):
        raise ValueError(f"previous_tokens must hold integer token ids, got dtype {previous_tokens.dtype}")
    vocab = logits.shape[-1]
    if previous_tokens.numel() > 0:
        lowest, highest = int(previous_tokens.min()), int(previous_tokens.max())
        if lowest < 0 or highest >= vocab:
            bad = lowest if lowest < 0 else highest
            raise ValueError(f"previous_tokens holds id {bad}, outside the vocab [0, {vocab})")
    leading = logits.shape[:-1]
    try:
        fits = torch.broadcast_shapes(previous_tokens.shape[:-1], leading) == leading
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"previous_tokens of shape {tuple(previous_tokens.shape)} does not match logits of shape "
            f"{tuple(logits.shape)}: want [..., n_prev] with the logits' leading axes, or [n_prev]"
        )
    previous_tokens = previous_tokens.to(logits.device, torch.long).expand(
        *leading, previous_tokens.shape[-1]
    )
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    seen.scatter_(-1, previous_tokens, True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return _overflow_to_limit(torch.where(seen, penalised, logits), logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature``; temperature 0 keeps only the argmax.

    Temperature 0 is the limit T -> 0, where all probability goes to the largest logit: every
    other token is set to ``-inf`` (on ties the first index wins, as ``torch.argmax`` does) and
    the kept logit is left as it was. This is the one filter that removes tokens only at 0.
    """
    check_sampling_param("temperature", temperature)
    if temperature == 0:
        keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        keep.scatter_(-1, logits.argmax(dim=-1, keepdim=True), True)
        return logits.masked_fill(~keep, -math.inf)
    return _overflow_to_limit(logits / temperature, logits)


def _overflow_to_limit(scaled: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """A scale near 0 (a temperature of 1e-300, a repetition penalty far below 1) can push finite
    logits to +inf, where softmax gives NaN. In that limit all probability goes to the largest of
    the overflowed logits (one tiny divisor keeps their order): keep it (first on ties, as
    temperature 0 does) and remove the rest of its row."""
    top = torch.isposinf(scaled) & torch.isfinite(original)
    if not bool(top.any()):
        return scaled
    winner = torch.where(top, original, -math.inf).argmax(dim=-1, keepdim=True)
    keep = torch.zeros_like(top).scatter_(-1, winner, True)
    return torch.where(top.any(dim=-1, keepdim=True), torch.where(keep, 0.0, -math.inf), scaled)


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row; ``top_k`` above the vocab keeps everything.

    The cut is a threshold on the value, as in transformers: every logit equal to the k-th
    largest survives too, so exact ties at the boundary can keep more than k tokens.
    """
    check_sampling_param("top_k", top_k)
    k = min(top_k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, -math.inf)


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= ``top_p``.

    Walked from the least likely token upwards, exactly as transformers does it: a token is
    removed when it and every less likely token together hold at most ``1 - top_p`` of the mass,
    i.e. when the tokens above it already reach ``top_p``. So the token whose probability carries
    the running sum to (or past) ``top_p`` is kept, and the most likely token is always kept.
    Ties: the ascending sort is stable, so among tokens with exactly equal probability the one
    with the larger id counts as more likely and is kept first (transformers' order on CPU, made
    deterministic here). ``top_p == 1`` returns the logits unchanged (transformers skips the
    warper then). Probabilities are taken in fp32 whatever the logits' dtype.
    """
    check_sampling_param("top_p", top_p)
    if top_p == 1:
        return logits
    ascending_logits, order = torch.sort(logits, dim=-1, descending=False, stable=True)
    # cumulative mass of each token together with every less likely one
    mass_at_or_below = ascending_logits.float().softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = mass_at_or_below <= 1 - top_p
    remove_sorted[..., -1] = False  # the most likely token always stays
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, -math.inf)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times the largest probability.

    The bar scales with the model's confidence: a peaked distribution keeps few tokens, a flat
    one many. The most likely token always clears it (``min_p <= 1``); ``min_p == 0`` keeps all.
    Probabilities are taken in fp32 whatever the logits' dtype.
    """
    check_sampling_param("min_p", min_p)
    probs = logits.float().softmax(dim=-1)
    bar = min_p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < bar, -math.inf)


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------


def _filter_steps(
    logits: torch.Tensor, params: SamplingParams, previous_tokens: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """fp32 logits after each step, keyed by step name in ``FILTER_ORDER``.

    A switched-off step repeats its input, so every name is always there.
    """
    if params.repetition_penalty not in (None, 1) and previous_tokens is None:
        raise ValueError(
            f"repetition_penalty={params.repetition_penalty!r} needs previous_tokens (the ids seen so far)"
        )
    x = logits.float()
    steps = {}
    if params.repetition_penalty not in (None, 1):
        x = apply_repetition_penalty(x, previous_tokens, params.repetition_penalty)
    steps["repetition_penalty"] = x
    x = apply_temperature(x, params.temperature)  # 1.0 divides by one: unchanged
    steps["temperature"] = x
    if params.top_k is not None:
        x = apply_top_k(x, params.top_k)
    steps["top_k"] = x
    if params.top_p is not None:
        x = apply_top_p(x, params.top_p)
    steps["top_p"] = x
    if params.min_p is not None:
        x = apply_min_p(x, params.min_p)
    steps["min_p"] = x
    return steps


def filter_logits(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    previous_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """All the filters in ``FILTER_ORDER``: fp32 logits ``[..., vocab]`` with removed tokens at ``-inf``."""
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    return _filter_steps(logits, params, previous_tokens)["min_p"]


def logits_to_probs(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    previous_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The distribution ``sample`` draws from: fp32 probabilities ``[..., vocab]`` after all filters.

    Removed tokens get probability exactly 0; the rest are renormalised. Temperature 0 gives a
    one-hot on the argmax (first index on ties).
    """
    filtered = filter_logits(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        previous_tokens=previous_tokens,
    )
    return filtered.softmax(dim=-1)


@dataclass(frozen=True)
class FilterReport:
    """Which tokens each filter step removed, and the distribution that is left."""

    # step name -> bool [..., vocab], in FILTER_ORDER; True where *that* step set a finite logit to -inf.
    # The masks are disjoint. repetition_penalty never removes, temperature removes only at 0, and a
    # switched-off step has an all-False mask. Logits already -inf in the input belong to no step.
    removed: dict[str, torch.Tensor]
    # fp32 [..., vocab], identical to logits_to_probs with the same arguments
    probs: torch.Tensor


def filter_report(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    previous_tokens: torch.Tensor | None = None,
) -> FilterReport:
    """Run the filters one by one and record what each removed (for the widgets' per-filter view).

    Where ``probs`` is 0, some step removed the token, except for tokens whose probability
    underflows fp32 (logits ~100 below the largest) or that were ``-inf`` to begin with.
    """
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    steps = _filter_steps(logits, params, previous_tokens)
    removed = {}
    before = logits.float()
    for name, after in steps.items():
        removed[name] = torch.isfinite(before) & torch.isneginf(after)
        before = after
    return FilterReport(removed=removed, probs=steps["min_p"].softmax(dim=-1))


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` on ``device`` (pass ``logits.device`` for GPU logits)."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed < 2**64:  # what torch.Generator can hold
        raise ValueError(f"seed must lie in 0 to 2**64 - 1, got {seed}")
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def _check_non_finite(logits: torch.Tensor) -> None:
    """-inf marks a removed token; NaN, +inf or a row with nothing left cannot give a token (argmax
    would pick the NaN's index and multinomial would fail deep inside)."""
    if bool(torch.isnan(logits).any()):
        raise ValueError("sample: the logits hold NaN, so no token can be chosen (NaN weights, or a hook "
                         "that wrote NaN into an activation?)")
    if bool(torch.isposinf(logits).any()):
        raise ValueError("sample: the logits hold +inf, so no probability can be computed")
    if bool(torch.isneginf(logits).all(dim=-1).any()):
        raise ValueError("sample: every logit of a row is -inf: no token is left to choose")


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    previous_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids, a LongTensor of shape ``logits.shape[:-1]``.

    Temperature 0 (the default) is greedy: the argmax of the (repetition-penalised) logits, the
    first index on ties; no randomness is used. Otherwise one draw per row with
    ``torch.multinomial`` from ``logits_to_probs(...)``, using ``generator`` (see
    ``make_generator``; it must live on the logits' device), so a fixed seed gives the same tokens.
    """
    if not bool(torch.isfinite(logits).all()):  # one reduction in the usual, all-finite case
        _check_non_finite(logits)
    if temperature == 0:
        # Greedy: the other filters cannot change the argmax, so skip building a one-hot
        # distribution over the whole vocabulary (eight full-vocabulary passes per token).
        SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)  # validate all the same
        if repetition_penalty is not None:
            logits = apply_repetition_penalty(logits, previous_tokens, repetition_penalty)
        return logits.argmax(dim=-1)
    probs = logits_to_probs(
        logits,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        previous_tokens=previous_tokens,
    )
    rows = probs.reshape(-1, probs.shape[-1])  # multinomial takes at most 2 axes
    drawn = torch.multinomial(rows, num_samples=1, generator=generator)
    return drawn.reshape(probs.shape[:-1])
