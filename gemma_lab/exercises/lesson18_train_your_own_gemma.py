"""Exercises of lesson 18, training a tiny Gemma (``notebooks/18_train_your_own_gemma.ipynb``).

Exercises: next_token_loss, lr_schedule, adamw_update. Each has its reference (the loss and schedule
of ``gemma_lab.tiny.train``, torch's AdamW arithmetic written out), its trial inputs, and its usual
mistakes written out as the wrong functions they describe.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gemma_lab.exercises.checking import exercise, randint, trial_number

__all__ = [
    "next_token_loss_inputs",
    "next_token_loss_reference",
    "lr_schedule_inputs",
    "lr_schedule_reference",
    "adamw_update_inputs",
    "adamw_update_reference",
]

NOTEBOOK = "18_train_your_own_gemma"


# ---- next_token_loss ------------------------------------------------------------------------------

def next_token_loss_inputs(generator: torch.Generator) -> tuple:
    batch, pos, vocab = randint(generator, 1, 4), randint(generator, 2, 9), randint(generator, 5, 40)
    logits = torch.randn((batch, pos, vocab), generator=generator) * 3.0
    tokens = torch.randint(0, vocab, (batch, pos), generator=generator)
    return logits, tokens


def next_token_loss_reference(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, t + 1]`` from ``logits[:, t]``: ``[batch, pos, vocab],
    [batch, pos] -> []`` (``gemma_lab.tiny.train.lm_loss`` on a model's logits)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def _loss_not_shifted(logits, tokens):
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())


def _loss_shifted_backwards(logits, tokens):
    return F.cross_entropy(logits[:, 1:].flatten(0, 1).float(), tokens[:, :-1].flatten())


def _loss_softmax_over_positions(logits, tokens):
    log_probs = logits[:, :-1].float().log_softmax(dim=1)
    return -log_probs.gather(-1, tokens[:, 1:, None]).mean()


def _loss_summed(logits, tokens):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="sum")


def _loss_of_probabilities(logits, tokens):
    probs = logits[:, :-1].float().softmax(dim=-1)
    return -probs.gather(-1, tokens[:, 1:, None]).mean()


exercise(
    "next_token_loss",
    make_inputs=next_token_loss_inputs,
    reference=next_token_loss_reference,
    mistakes={
        "Position t predicts token t + 1: compare logits[:, :-1] with tokens[:, 1:]. Without the shift "
        "the model is scored on copying the token it already sees.": _loss_not_shifted,
        "The shift goes the other way: logits[:, :-1] (every position but the last) against "
        "tokens[:, 1:] (every token but the first).": _loss_shifted_backwards,
        "Softmax over the vocabulary (dim=-1), not over positions: each position's prediction is a "
        "distribution over tokens.": _loss_softmax_over_positions,
        "Take the mean over the predictions, not the sum: a sum grows with the batch and the context, "
        "and the learning rate would have to shrink with them.": _loss_summed,
        "The loss is minus the *log* probability of the right token (log_softmax, or "
        "F.cross_entropy on the raw logits).": _loss_of_probabilities,
    },
    notebook=NOTEBOOK,
)


# ---- lr_schedule ----------------------------------------------------------------------------------

def lr_schedule_inputs(generator: torch.Generator) -> tuple:
    total = randint(generator, 8, 60)
    warmup = randint(generator, 1, total // 2)
    peak = (1e-3, 3e-3, 0.01, 0.5)[trial_number(generator) % 4]
    floor = (0.1, 0.0, 0.25)[trial_number(generator) % 3]
    return total, peak, warmup, floor


def lr_schedule_reference(total: int, peak: float, warmup: int, floor: float) -> torch.Tensor:
    """``[total]`` float64 learning rates, one per step: linear warm-up to ``peak`` (step ``s`` gets
    ``peak * (s + 1) / warmup``), then half a cosine down to ``floor * peak`` at the last step. The
    same numbers as ``gemma_lab.tiny.train.lr_at`` (which this layer may not import; lesson 18
    compares the two)."""
    return _schedule(total, peak, warmup, floor)


def _as_rates(rates) -> torch.Tensor:
    return torch.as_tensor(rates, dtype=torch.float64).flatten()


def _same_rates(got, expected) -> bool:
    try:
        got = _as_rates(got)
    except (TypeError, ValueError, RuntimeError):
        return False
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-9, atol=1e-12)


def _schedule(total, peak, warmup, floor, *, first=1, progress_from=None, final=None, shape="cosine"):
    rates = []
    for step in range(total):
        if step < warmup:
            rates.append(peak * (step + first) / warmup)
            continue
        start = warmup if progress_from is None else progress_from
        progress = min((step - start) / max(1, total - start), 1.0)
        low = floor if final is None else final
        fall = 0.5 * (1 + math.cos(math.pi * progress)) if shape == "cosine" else 1 - progress
        rates.append(peak * (low + (1 - low) * fall))
    return torch.tensor(rates, dtype=torch.float64)


exercise(
    "lr_schedule",
    make_inputs=lr_schedule_inputs,
    reference=lr_schedule_reference,
    mistakes={
        "Step 0 is the first step and should already train: the warm-up rate at step s is "
        "peak * (s + 1) / warmup, reaching the peak on the last warm-up step.":
            lambda total, peak, warmup, floor: _schedule(total, peak, warmup, floor, first=0),
        "The cosine decays to floor * peak, not to zero: lr = peak * (floor + (1 - floor) * "
        "(1 + cos(pi * progress)) / 2).":
            lambda total, peak, warmup, floor: _schedule(total, peak, warmup, floor, final=0.0),
        "The decay's progress counts from the end of the warm-up: (step - warmup) / (total - warmup), "
        "so it starts at the peak.":
            lambda total, peak, warmup, floor: _schedule(total, peak, warmup, floor, progress_from=0),
        "After the warm-up the rate follows half a cosine, (1 + cos(pi * progress)) / 2, not a straight line.":
            lambda total, peak, warmup, floor: _schedule(total, peak, warmup, floor, shape="linear"),
    },
    compare=_same_rates,
    notebook=NOTEBOOK,
)


# ---- adamw_update -------------------------------------------------------------------------------

def adamw_update_inputs(generator: torch.Generator) -> tuple:
    shape = (randint(generator, 1, 5), randint(generator, 1, 6))
    param = torch.randn(shape, generator=generator)
    grad = torch.randn(shape, generator=generator) * 0.1
    first_step = trial_number(generator) < 2
    exp_avg = torch.zeros(shape) if first_step else torch.randn(shape, generator=generator) * 0.05
    exp_avg_sq = torch.zeros(shape) if first_step else torch.rand(shape, generator=generator) * 0.01
    step = 1 if first_step else randint(generator, 2, 50)
    lr = (1e-3, 3e-3, 0.01)[trial_number(generator) % 3]
    weight_decay = (0.05, 0.1, 0.0)[trial_number(generator) % 3] if trial_number(generator) < 5 else 0.5
    eps = 1e-8 if trial_number(generator) == 0 else 1e-3  # a large eps on most trials, so its place shows
    return param, grad, exp_avg, exp_avg_sq, step, lr, 0.9, 0.95, eps, weight_decay


def adamw_update_reference(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step as ``torch.optim.AdamW`` takes it (``step`` counts from 1, this step included):
    returns ``(new_param, new_exp_avg, new_exp_avg_sq)``; the inputs are left as they are."""
    param = param * (1 - lr * weight_decay)  # decoupled weight decay: shrink the weights, not the gradient
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), exp_avg, exp_avg_sq


def _adamw_no_bias_correction(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    param = param * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    return param - lr * exp_avg / (exp_avg_sq.sqrt() + eps), exp_avg, exp_avg_sq


def _adam_l2(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    grad = grad + weight_decay * param  # Adam with L2: the decay goes through the moments
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), exp_avg, exp_avg_sq


def _adamw_eps_inside(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    param = param * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat + eps).sqrt(), exp_avg, exp_avg_sq


def _adamw_betas_swapped(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    param = param * (1 - lr * weight_decay)
    exp_avg = (1 - beta1) * exp_avg + beta1 * grad
    exp_avg_sq = (1 - beta2) * exp_avg_sq + beta2 * grad * grad
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), exp_avg, exp_avg_sq


exercise(
    "adamw_update",
    make_inputs=adamw_update_inputs,
    reference=adamw_update_reference,
    mistakes={
        "Divide the moments by (1 - beta ** step) before using them: both start at zero, and without "
        "the bias correction the first steps are far too small.": _adamw_no_bias_correction,
        "That is Adam with L2 regularisation: AdamW shrinks the weights directly, param * (1 - lr * "
        "weight_decay), and leaves the gradient (and so the moments) alone.": _adam_l2,
        "eps goes outside the square root: m_hat / (sqrt(v_hat) + eps).": _adamw_eps_inside,
        "The moving averages keep beta of the old value: exp_avg = beta1 * exp_avg + (1 - beta1) * grad.":
            _adamw_betas_swapped,
    },
    notebook=NOTEBOOK,
)
