"""Solutions to the exercises of notebook 08 (hooks and caching).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""


def run_with_head_ablated(model, tokens, layer, head):
    """Logits [batch, pos, vocab] of `model` on `tokens` with head `head` of block `layer` zeroed."""

    def silence_head(z, hook):  # z: [batch, pos, head, d_head]
        z = z.clone()  # leave the original tensor alone; return the edited copy
        z[:, :, head, :] = 0.0
        return z

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", silence_head)])
