"""Solutions to the exercises of notebook 12 (steering).

One function per exercise, named like it; the notebook tests paste each one into its exercise cell.
"""


def steering_vector(acts_a, acts_b):
    """[n_a, d_model], [n_b, d_model] -> [d_model]: mean(acts_a) - mean(acts_b) over prompts."""
    return acts_a.mean(dim=0) - acts_b.mean(dim=0)
