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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/05_mlp_and_block.ipynb)**
#
# # 05 · The GeGLU MLP and the transformer block
#
# **Time:** about 40 minutes. **Before this:** notebook 04 (attention).
#
# Attention moves information *between* positions. The **MLP** then works on each position on its
# own: most of a transformer's parameters, and much of what it "knows", sit in these layers. Gemma's
# MLP is a *gated* one, GeGLU. Attention and MLP together, each reading the residual stream and adding
# its result back, make a **transformer block**; Gemma 2 and 3 wrap each of the two in a "sandwich"
# of norms.
#
# **Learning goals.** By the end you can
#
# 1. write the GeGLU MLP, `down(gelu(gate(x)) * up(x))`, with the shapes `d_model → d_mlp → d_model`;
# 2. tell the tanh approximation of GELU (Gemma's) from the exact one, and see how close they are;
# 3. wire a block: pre-norms, sublayers, post-norms (Gemma 2/3) and the residual additions;
# 4. run one of the model's blocks through your function and watch the residual stream grow layer by layer.

# %%
# Set-up. On Google Colab this installs gemma_lab (keeping Colab's own torch) and turns on its
# widgets; anywhere else it does nothing.
import sys

if "google.colab" in sys.modules:
    import subprocess

    import torch  # Colab's build: pinned below, so pip keeps it instead of installing another

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"torch=={torch.__version__}",
                    "gemma_lab @ git+https://github.com/gemma-lab/gemma_lab"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

# %%
# Configuration: which model this lesson runs on.
# "" keeps the default: the bundled tiny Gemma, or the model $GEMMA_LAB_MODEL names.
# Real weights: a model id such as "google/gemma-2-2b" (downloaded once into the Hugging Face cache;
# accept its licence first, see notebook 14) or a checkpoint folder such as "/models/gemma-2-2b".
import os

MODEL = ""
if MODEL:
    os.environ["GEMMA_LAB_MODEL"] = MODEL

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from gemma_lab import model as gemma_model
from gemma_lab import viz
from gemma_lab.exercises import check, lesson05_mlp_and_block, solution  # noqa: F401  (lesson05_mlp_and_block: the package's answers)
from gemma_lab.notebook import describe, load_lesson_model

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
cfg = model.cfg
print(describe(model))

prompt = "When Mary and John went to the store, John gave a drink to"
tokens = torch.tensor([tokenizer.encode(prompt)])  # [batch=1, pos]
str_tokens = tokenizer.to_str_tokens(prompt)
# Only residual-stream and MLP hooks: with no hook on attention scores, attention runs exactly as in
# model(tokens) (see lesson 06), so the block below can be matched bit for bit.
logits, cache = model.run_with_cache(
    tokens, names_filter=lambda name: "resid" in name or name == "hook_embed" or name.startswith("blocks.0.ln2")
    or name.startswith("blocks.0.mlp"))

# %% [markdown]
# ## 1. The gated MLP
#
# For each position separately, with `x [batch, pos, d_model]` the normalised residual stream:
#
# $$\mathrm{MLP}(x) = W_{down}\,\big(\mathrm{GELU}(W_{gate}\,x) \odot W_{up}\,x\big)$$
#
# Two projections up to `d_mlp` (often 4 to 8 times `d_model`): the **gate** branch goes through GELU,
# the **up** branch stays linear, and their product, the `d_mlp` **neurons**, is projected back down.
# The gate decides, per neuron, how much of the up branch passes. (`d_mlp` is the width of *one*
# branch; papers sometimes count both.) The weights follow `nn.Linear`'s `[out, in]` convention, so
# `W_gate x` is `x @ w_gate.T`.

# %%
mlp0 = model.blocks[0].mlp
for name in ("gate_proj", "up_proj", "down_proj"):
    print(f"{name}.weight {tuple(getattr(mlp0, name).weight.shape)}")
share = 3 * cfg.d_model * cfg.d_mlp * cfg.n_layers / model.n_params()
print(f"d_model = {cfg.d_model}, d_mlp = {cfg.d_mlp}: the MLPs hold {share:.0%} of the parameters")

# %% [markdown]
# ## 2. GELU, approximately
#
# GELU is `x · Φ(x)` with `Φ` the standard normal CDF: smooth, near zero for negative inputs, near `x`
# for positive ones. Every Gemma was trained with its **tanh approximation**
# `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`, `F.gelu(x, approximate="tanh")`. The two differ
# by less than 0.001, invisible in a plot and far from invisible in logits compared bit for bit.

# %%
x = torch.linspace(-4, 4, 801)
exact, approx = F.gelu(x), F.gelu(x, approximate="tanh")
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
left.plot(x, exact, label="exact GELU")
left.plot(x, approx, "--", label="tanh approximation (Gemma)")
left.plot(x, torch.relu(x), ":", color="grey", label="ReLU, for comparison")
left.legend()
left.set_title("GELU")
right.plot(x, approx - exact, color="C3")
right.set_title("tanh approximation − exact")
plt.show()

# %% [markdown]
# ### Exercise: geglu
#
# Write `geglu(x, w_gate, w_up, w_down)` for `x [batch, pos, d_model]`, `w_gate, w_up [d_mlp, d_model]`
# and `w_down [d_model, d_mlp]`. Return `[batch, pos, d_model]`.

# %% exercise="geglu" tags=["exercise"]
def geglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """down(gelu_tanh(gate(x)) * up(x)) with nn.Linear weights ([out, in]): [batch, pos, d_model]."""
    raise NotImplementedError  # your code here


# %%
check("geglu", geglu)

# %%
# solution("geglu")  # uncomment to see one way to write it

# %% [markdown]
# On the model: block 0's MLP reads `blocks.0.ln2.hook_normalized`; its neurons are stored in
# `blocks.0.mlp.hook_post [batch, pos, d_mlp]`.

# %%
mlp_in = cache["blocks.0.ln2.hook_normalized"]  # [batch, pos, d_model]
expected = mlp0(mlp_in)
try:
    mine = geglu(mlp_in, mlp0.gate_proj.weight, mlp0.up_proj.weight, mlp0.down_proj.weight)
    print(f"your geglu vs blocks.0.mlp: max |difference| {(mine - expected).abs().max().item():.2g}")
except NotImplementedError:
    print("(write geglu above to compare it with the model)")

neurons = cache["blocks.0.mlp.hook_post"][0]  # [pos, d_mlp]
quiet = (neurons.abs() < 0.1 * neurons.abs().max()).float().mean().item()
print(f"{quiet:.0%} of block 0's neuron activations on this prompt are under a tenth of the largest")

# %% [markdown]
# ## 3. The block
#
# The residual stream `resid [batch, pos, d_model]` runs through all the blocks. A block does not
# replace it: each sublayer *reads* a normalised copy and *adds* its output back.
#
# ```text
# Gemma 1                                   Gemma 2 and 3 ("sandwich" norms)
# resid = resid + attn(pre_attn_norm(resid))   resid = resid + post_attn_norm(attn(pre_attn_norm(resid)))
# resid = resid + mlp(pre_mlp_norm(resid))     resid = resid + post_mlp_norm(mlp(pre_mlp_norm(resid)))
# ```
#
# The post-norms normalise what each sublayer *adds*, not the stream itself, so the stream keeps
# growing from layer to layer while each addition stays bounded. In `gemma_lab` the four norms are
# `ln1` (pre-attention), `ln1_post`, `ln2` (pre-MLP) and `ln2_post`; Gemma 1 blocks have no post-norms.
# (Careful when reading checkpoints: there Gemma 1's pre-MLP norm is called `post_attention_layernorm`.)
#
# ### Exercise: transformer_block
#
# Write one Gemma 2/3 block. `attn` and `mlp` are callables taking and returning `[batch, pos, d_model]`
# (the attention here already knows its positions), and the four norms are callables too.

# %% exercise="transformer_block" tags=["exercise"]
def transformer_block(resid, attn, mlp, pre_attn_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm):
    """One Gemma 2/3 block on resid [batch, pos, d_model]: returns the new residual stream."""
    raise NotImplementedError  # your code here


# %%
check("transformer_block", transformer_block)

# %%
# solution("transformer_block")  # uncomment to see one way to write it

# %% [markdown]
# Now one of the model's own blocks. Its attention needs the rotation angles of the prompt's
# positions; everything else is the block's own modules. For a Gemma 1 model the same function works
# with "no norm" (`nn.Identity`) as post-norms.

# %%
block = model.blocks[0]
positions = torch.arange(tokens.shape[1])[None]  # [batch, pos]
valid = torch.ones_like(positions, dtype=torch.bool)
theta, scale = cfg.rope_for_layer(0)
cos, sin = gemma_model.rotary_cos_sin(positions, cfg.d_head, theta, scale, model.dtype)


def block0_attention(x):
    """Block 0's attention sublayer on x [batch, pos, d_model] at the prompt's positions."""
    return block.attn(x, cos, sin, positions, valid)


no_norm = torch.nn.Identity()
post_attn = block.ln1_post if block.ln1_post is not None else no_norm
post_mlp = block.ln2_post if block.ln2_post is not None else no_norm
resid_pre, resid_post = cache["resid_pre", 0], cache["resid_post", 0]
package = lesson05_mlp_and_block.transformer_block(resid_pre, block0_attention, block.mlp, block.ln1, post_attn,
                                                   block.ln2, post_mlp)
print("package pieces equal blocks.0.hook_resid_post:", torch.equal(package, resid_post))
try:
    mine = transformer_block(resid_pre, block0_attention, block.mlp, block.ln1, post_attn, block.ln2, post_mlp)
    print("your transformer_block equals it:", torch.equal(mine, resid_post))
except NotImplementedError:
    print("(write transformer_block above to run block 0 with it)")

# %% [markdown]
# ## 4. The stream grows
#
# The norm of each position's residual stream after the embedding and after every block. Because each
# block *adds* to the stream, the norm typically grows with depth; the pre-norms make sure every
# sublayer still reads vectors of a sensible size. (`<bos>` often has a stream of its own size: the
# model treats the first position specially.)

# %%
layers = ["hook_embed"] + [f"blocks.{layer}.hook_resid_post" for layer in range(cfg.n_layers)]
norms = torch.stack([cache[name][0].float().norm(dim=-1) for name in layers])  # [layer, pos]
viz.residual_norms(norms, str_tokens, layer_labels=["embed"] + [str(layer) for layer in range(cfg.n_layers)])

# %% [markdown]
# **Takeaways.** The MLP works per position: `down(gelu_tanh(gate(x)) * up(x))`, up to `d_mlp` neurons
# and back. A block adds attention's and the MLP's outputs to the residual stream, each reading a
# pre-normed copy; Gemma 2 and 3 also normalise each output before adding it. Next, lesson 06 stacks
# the blocks into the whole model and checks your forward pass against the package's logits.
