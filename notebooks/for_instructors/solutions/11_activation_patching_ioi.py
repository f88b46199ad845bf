"""Solutions to the exercises of notebook 11 (activation patching on indirect-object identification).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""

import torch


def logit_difference(logits, io_ids, s_ids):
    """[batch, pos, vocab], [batch], [batch] -> []: mean of logit(IO) - logit(S) at the last position."""
    last = logits[:, -1].float()  # [batch, vocab]
    io_logits = last.gather(-1, io_ids[:, None])[:, 0]  # [batch]
    s_logits = last.gather(-1, s_ids[:, None])[:, 0]  # [batch]
    return (io_logits - s_logits).mean()


def patch_residual(corrupted, clean, pos):
    """[batch, pos, d_model] x 2 -> the corrupted activation with position `pos` taken from the clean one."""
    patched = corrupted.clone()
    patched[:, pos] = clean[:, pos]
    return patched


def patch_heads(model, corrupted_tokens, clean_cache, metric):
    """[layer, head]: the metric of the corrupted run with one head's z taken from the clean run."""
    cfg = model.cfg
    results = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        clean_z = clean_cache[name]  # [batch, pos, head, d_head]
        for head in range(cfg.n_heads):
            def restore_head(z, hook, head=head):  # head=head: bind this loop's value now
                z = z.clone()  # never edit the activation in place
                z[:, :, head] = clean_z[:, :, head]
                return z

            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, restore_head)])
            results[layer, head] = float(metric(logits))
    return results


def path_patch_queries(model, clean_tokens, clean_cache, corrupted_cache, metric, sender, receiver):
    """The metric of the clean run when the sender's corrupted output reaches only the receiver's queries."""
    (sender_layer, sender_head), (receiver_layer, receiver_head) = sender, receiver
    q_name = f"blocks.{receiver_layer}.attn.hook_q"
    received = {}

    def freeze_heads(z, hook):  # every head at its clean z, except the sender: corrupted
        z = clean_cache[hook.name].clone()
        if hook.name == f"blocks.{sender_layer}.attn.hook_z":
            z[:, :, sender_head] = corrupted_cache[hook.name][:, :, sender_head]
        return z

    def record(q, hook):  # what the receiver would read in that world
        received["q"] = q.clone()

    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    model.run_with_hooks(clean_tokens, fwd_hooks=[(name, freeze_heads) for name in z_names] + [(q_name, record)])

    def receive(q, hook):  # run 2: the clean run, with only the receiver's queries replaced
        q = q.clone()
        q[:, :, receiver_head] = received["q"][:, :, receiver_head]
        return q

    return float(metric(model.run_with_hooks(clean_tokens, fwd_hooks=[(q_name, receive)])))
