"""Solutions to the exercises of notebook 15 (superposition and sparse autoencoders).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def jumprelu_encode(x, W_enc, b_enc, threshold):
    """[..., d_in] -> [..., d_sae]: relu(pre) * (pre > threshold), with pre = x @ W_enc + b_enc."""
    pre = x @ W_enc + b_enc  # [..., d_sae]
    return torch.relu(pre) * (pre > threshold)


def l0_norm(acts):
    """[..., d_sae] -> []: the mean over tokens of how many features fire (are > 0)."""
    return (acts > 0).float().sum(dim=-1).mean()


def fvu(recons, target):
    """[n, d], [n, d] -> []: sum |recons - target|^2 / sum |target - mean over tokens|^2."""
    return (recons - target).pow(2).sum() / (target - target.mean(dim=0)).pow(2).sum()


def run_with_feature_ablated(model, sae, tokens, feature):
    """Logits [batch, pos, vocab] with `feature` set to 0 at every position; everything else unchanged."""

    def zero_feature(acts, hook):  # acts: [batch, pos, d_sae]
        acts = acts.clone()
        acts[..., feature] = 0.0
        return acts

    sae.use_error_term = True  # the SAE's error passes through, so only the feature's part changes
    return model.run_with_hooks(tokens, saes=[sae],
                                fwd_hooks=[(f"{sae.cfg.hook_name}.hook_sae_acts_post", zero_feature)])
