# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Widgets: one forward pass, step by step
#
# Two of gemma_lab's widgets on the lesson model: the bundled tiny Gemma, or the checkpoint that
# the environment variable `GEMMA_LAB_MODEL` names. Run all cells, then use the controls.
#
# * **InferenceStepper** walks one forward pass: press **Next ▶** (or click a stage in the list)
#   to go from the text to its tokens, the embedding, every layer's attention and MLP, the logits,
#   the probabilities and the chosen token. **Append token** feeds that token back in through the
#   KV cache. The layer, head and pos sliders choose what is shown; every number is the model's own,
#   read through hooks.
# * **AttentionExplorer** shows where each head of a layer looks; click a token to see what it
#   attends to and what attends to it.
#
# The same notebook runs as a dashboard: `voila notebooks/widgets_demo.ipynb`. The other widgets
# (logit lens, sampling, tokenizer, patching) are described in `docs/widgets.md`.

# %%
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import AttentionExplorer, InferenceStepper

model, tokenizer = load_lesson_model()
print(describe(model))

# %% [markdown]
# ## The inference stepper
#
# Start at `text` and press **Next ▶**. At a layer stage, move the **layer** and **head** sliders;
# at `probabilities`, change the temperature, top-k and top-p and watch which tokens survive.

# %%
stepper = InferenceStepper(model, tokenizer, text="When Mary and John went to the store, John gave a drink to")
stepper

# %% [markdown]
# ## Where the heads look
#
# Each row of a pattern is one token looking back at the tokens before it. Pick a token below the
# sliders: its row (what it attends to) and its column (who attends to it) are shown as coloured text.

# %%
attention = AttentionExplorer(model, tokenizer, text="When Mary and John went to the store, John gave a drink to")
attention
