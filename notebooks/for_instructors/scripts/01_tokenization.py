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
# **[Open in Colab](https://colab.research.google.com/github/gemma-lab/gemma_lab/blob/main/notebooks/01_tokenization.ipynb)**
#
# # 01 · Tokenization
#
# **Time:** about 30 minutes. **Before this:** notebook 00 (the tour).
#
# A language model reads and writes integers. The tokenizer is the dictionary between text and
# those integers: it cuts text into **pieces** from a fixed vocabulary and gives each piece its id.
# Gemma's tokenizer is a SentencePiece BPE model with a few habits worth knowing, because they
# show up everywhere later: in the attention patterns of lesson 09, in the prompts of lesson 11,
# and whenever a prediction looks odd.
#
# **Learning goals.** By the end you can
#
# 1. encode text to ids and read the pieces, including the `▁` that marks a space;
# 2. explain why `"Mary"` and `" Mary"` are different tokens (no dummy prefix), and how digits and
#    runs of whitespace are cut;
# 3. explain byte fallback: how any character at all becomes tokens, and how bytes become text again;
# 4. say what `<bos>`, `<eos>` and the turn markers are for, and render a chat with the chat template;
# 5. write the decoder yourself: from pieces back to text.

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

import gemma_lab.exercises.lesson01_tokenization  # noqa: F401  (registers this lesson's exercises)
from gemma_lab import viz
from gemma_lab.exercises import check, solution  # noqa: F401
from gemma_lab.notebook import describe, load_lesson_model
from gemma_lab.widgets import TokenizerExplorer

torch.set_grad_enabled(False)
model, tokenizer = load_lesson_model()
print(describe(model))
print(tokenizer)


def show_tokens(text, add_bos=True):
    """Print each token of `text`: position, id and vocabulary piece."""
    for pos, token_id in enumerate(tokenizer.encode(text, add_bos=add_bos)):
        print(f"{pos:>4} {token_id:>8}  {tokenizer.id_to_piece(token_id)!r}")


# %% [markdown]
# ## 1. Pieces and ids
#
# `tokenizer.encode(text)` returns the ids; `tokenizer.id_to_piece(id)` the vocabulary entry behind
# one id. SentencePiece writes a space as `▁` (U+2581, "lower one eighth block") inside pieces, so that
# a space is an ordinary, visible character of the vocabulary: `"▁Mary"` is *space + Mary*.

# %%
show_tokens("When Mary and John went to the store")

# %% [markdown]
# Position 0 is `<bos>`, added by `encode` (more on it in section 4). Frequent words are one piece,
# with their leading space; rarer words are cut into several pieces. The vocabulary has
# `tokenizer.vocab_size` entries, and the model's embedding matrix has (at least) one row per id.
# How long are the pieces? The histogram counts characters per piece over the whole vocabulary.

# %%
pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
lengths = [len(piece) for piece in pieces]
n_bytes = sum(piece.startswith("<0x") and len(piece) == 6 for piece in pieces)
n_spaced = sum(piece.startswith("▁") for piece in pieces)
print(f"{tokenizer.vocab_size:,} pieces: {n_spaced:,} start with '▁', {n_bytes} are byte pieces <0x00>..<0xFF>")

fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(lengths, bins=range(1, min(max(lengths), 30) + 2), color="C0")
ax.set_xlabel("characters in the piece")
ax.set_ylabel("pieces")
ax.set_title("piece lengths over the vocabulary")
plt.show()

# %% [markdown]
# ## 2. No dummy prefix; digits; whitespace
#
# Many tokenizers silently add a space in front of the text ("dummy prefix"), so that a word at the
# start looks like a word in the middle. **Gemma does not.** `"Mary"` at the very start and `" Mary"`
# after a space are different tokens with different ids. This matters when you build prompts by
# gluing strings together: `"... gave a drink to"` + `" Mary"` is not `"... gave a drink to "` + `"Mary"`.

# %%
show_tokens("Mary", add_bos=False)
print()
show_tokens(" Mary", add_bos=False)

# %% [markdown]
# Numbers are split into single **digits**, so the model sees `2024` as four tokens and every number
# is spelled with the same ten digit tokens. Whitespace is kept exactly as written: spaces and
# newlines are tokens too (Gemma's own vocabulary even has single pieces for runs of them), so code
# and poetry survive tokenization unchanged.

# %%
show_tokens("In 2024:\n\n  indented", add_bos=False)

# %% [markdown]
# ## 3. Byte fallback: every character has a spelling
#
# What about a character that is not in the vocabulary at all? SentencePiece with **byte fallback**
# spells it as the bytes of its UTF-8 encoding, using 256 reserved pieces `<0x00>` … `<0xFF>`. So
# nothing is ever unknown: any text, in any script, becomes ids. The character below, ꙮ (Cyrillic
# "multiocular O", used once in a 15th-century manuscript), is rare enough to be spelled in bytes by
# most vocabularies (a large vocabulary may still have a piece for it).

# %%
rare = "ꙮ"
print("UTF-8 bytes:", [f"0x{b:02X}" for b in rare.encode("utf-8")])
show_tokens(f"an {rare}!", add_bos=False)

# %% [markdown]
# Decoding has to undo this: consecutive byte pieces are collected and decoded *together* as UTF-8
# (a single byte like `0xEA` is not a character on its own). You will write exactly that decoder in
# section 5.
#
# ## 4. Special tokens: `<bos>`, `<eos>`, turns
#
# A few ids are not text:
#
# * `<bos>` (beginning of sequence) starts every input. Gemma was trained that way and behaves
#   badly without it: attention heads use the first position as a resting place when they have
#   nothing to look at (lesson 09 shows this). `encode` adds it; `decode` drops it.
# * `<eos>` (end of sequence) is what a model emits to say it is done; generation stops there.
# * `<pad>` fills the unused positions of a padded batch.
# * `<start_of_turn>` and `<end_of_turn>` frame the turns of a conversation for the
#   instruction-tuned models.
#
# Their ids differ between tokenizers (Gemma 3 moved the turn markers down by one), so always ask the
# tokenizer instead of writing numbers into code:

# %%
for name in ("pad_id", "eos_id", "bos_id", "unk_id", "start_of_turn_id", "end_of_turn_id"):
    token_id = getattr(tokenizer, name)
    piece = tokenizer.id_to_piece(token_id) if token_id is not None else "-"
    print(f"{name:>16} = {token_id!s:>6}  {piece}")

# %% [markdown]
# Special tokens written as text are read as those tokens: `"<eos>"` in a string encodes to the one
# `eos_id`, not to the characters `<`, `e`, `o`, ... (so be careful with untrusted text).
#
# **The chat template.** Instruction-tuned Gemmas were trained on conversations written in one fixed
# format. `apply_chat_template` renders a list of messages in it; with
# `add_generation_prompt=True` it ends with the opening of the model's turn, so that what the model
# writes next is its answer. Gemma has no "system" role in Gemma 1 and 2; Gemma 3 folds a system
# message into the first user turn.

# %%
messages = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(chat)
chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
print(chat_ids[:12], "...")
print("one <bos>:", chat_ids.count(tokenizer.bos_id) == 1)

# %% [markdown]
# The rendered text already starts with `<bos>`. Encoding it again with `encode(chat)` would add a
# second one; use `tokenize=True` (or `encode(chat, add_bos=False)`).
#
# ## 5. Exercise: from pieces back to text
#
# Write `decode_pieces`: given the vocabulary pieces of a sequence, return the text, exactly as
# `tokenizer.decode` would:
#
# * `"▁"` stands for a space (anywhere in a piece; and a leading one is a real space, since there is no
#   dummy prefix to remove);
# * a run of byte pieces `"<0xNN>"` is the UTF-8 encoding of some characters: collect the bytes of the
#   run, then decode them together (`bytes(...).decode("utf-8", errors="replace")`);
# * `<bos>`, `<eos>` and `<pad>` carry no text and vanish; any other special token (such as
#   `<start_of_turn>`) appears by name.
#
# `check` runs your function on random piece lists and compares it with the package's decoder.

# %% exercise="decode_pieces" tags=["exercise"]
def decode_pieces(pieces: list[str]) -> str:
    """The text that a list of vocabulary pieces stands for, e.g. ["<bos>", "▁caf", "<0xC3>", "<0xA9>"] -> " café"."""
    raise NotImplementedError  # your code here


# %%
check("decode_pieces", decode_pieces)

# %%
# solution("decode_pieces")  # uncomment to see one way to write it

# %% [markdown]
# Once it passes, try it on real ids: it should agree with the tokenizer's own `decode` on any text.

# %%
sample_ids = tokenizer.encode(f"When Mary met {rare}, she said: 'naïve café!'") + [tokenizer.eos_id]
sample_pieces = [tokenizer.id_to_piece(i) for i in sample_ids]
print(sample_pieces)
try:
    mine = decode_pieces(sample_pieces)
    print(repr(mine))
    print("same as tokenizer.decode:", mine == tokenizer.decode(sample_ids))
except NotImplementedError:
    print("(write decode_pieces above to see your decoder on these pieces)")

# %% [markdown]
# ## 6. Explore
#
# Type anything into the `TokenizerExplorer`: it shows each token's id and piece, marks byte pieces and
# special tokens, and with "chat" ticked renders the text as a user turn of the chat template. Try
# numbers, several spaces, emoji, another script, and special-token names such as `<eos>`.

# %%
TokenizerExplorer(tokenizer)

# %% [markdown]
# **Takeaways.** Text becomes pieces from a fixed vocabulary; `▁` is a space and there is no dummy
# prefix, so `"Mary"` ≠ `" Mary"`; digits are single tokens; byte fallback spells anything in UTF-8
# bytes; every sequence starts with `<bos>`; ask the tokenizer for special ids. Next, lesson 02 turns
# each id into a vector: the embedding.
