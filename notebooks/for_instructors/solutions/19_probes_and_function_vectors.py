"""Solutions to the exercises of notebook 19 (probes and function vectors).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""


def train_probe(acts, labels, n_classes, steps, lr):
    """[n, d], [n] -> (W [d, n_classes], b [n_classes]): full-batch gradient descent on the mean cross-entropy."""
    import torch
    import torch.nn.functional as F

    W = torch.zeros(acts.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    with torch.enable_grad():  # the lesson turns gradients off globally
        for _ in range(steps):
            loss = F.cross_entropy(acts.float() @ W + b, labels)  # the mean over examples
            grad_W, grad_b = torch.autograd.grad(loss, (W, b))
            with torch.no_grad():  # torch.optim.SGD([W, b], lr=lr) takes the same step
                W -= lr * grad_W
                b -= lr * grad_b
    return W.detach(), b.detach()


def steer_resid(resid, direction, coeff, position):
    """[batch, pos, d_model] with coeff * direction added at `position` (None: everywhere), as a new tensor."""
    shift = (coeff * direction.float()).to(resid.dtype)
    if position is None:
        return resid + shift
    steered = resid.clone()
    steered[:, position] += shift
    return steered
