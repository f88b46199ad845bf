"""Solutions to the exercises of notebook 18 (train your own tiny Gemma).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""


def next_token_loss(logits, tokens):
    """[batch, pos, vocab], [batch, pos] -> []: mean cross-entropy of predicting tokens[:, t + 1] from logits[:, t]."""
    import torch.nn.functional as F

    predictions = logits[:, :-1].flatten(0, 1).float()  # [batch * (pos - 1), vocab]
    targets = tokens[:, 1:].flatten()                   # [batch * (pos - 1)]
    return F.cross_entropy(predictions, targets)


def lr_schedule(total, peak, warmup, floor):
    """The learning rate of each of `total` steps: linear warm-up, then cosine decay to floor * peak."""
    import math

    rates = []
    for step in range(total):
        if step < warmup:
            rates.append(peak * (step + 1) / warmup)
        else:
            progress = (step - warmup) / max(1, total - warmup)
            rates.append(peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))))
    return rates


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One AdamW step (step counts from 1): returns (new_param, new_exp_avg, new_exp_avg_sq)."""
    param = param * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad ** 2
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), exp_avg, exp_avg_sq
