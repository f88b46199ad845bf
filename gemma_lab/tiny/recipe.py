"""The training recipe of the bundled tiny Gemma: the settings ``train.py`` uses and ``card.py`` reports.

Changing one changes the next model trained; the shipped model's own values are recorded in its
``train_log.json`` and model card. Imports nothing but ``pathlib``.
"""

from pathlib import Path

#: Where the bundled model lives in the repository (``python -m gemma_lab.tiny.train`` writes there).
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "data" / "tiny-gemma"
#: One document in this many is a span of random token ids written twice instead of corpus text.
RANDOM_SPAN_EVERY = 20
#: Lengths of those random spans: up to 110 so that induction works across most of the context.
RANDOM_SPAN_LENGTHS = (8, 110)
#: Share of the segments in a repeat row (``repeat_row``) that alternate two random tokens, and how
#: many times such a pair is written.
ALTERNATIONS = 0.5
ALTERNATION_REPEATS = (4, 16)
#: Share of training rows built whole by ``repeat_row`` (the rest are cut from packed documents).
REPEAT_ROWS = 0.3
#: Starting gain of the post-attention and post-MLP norms (``damp_block_outputs``).
POST_NORM_GAIN = 0.1
#: Corpus kinds always trained on (IOI and repeated spans pay for the circuits the notebooks study);
#: the others (stories, facts, sequences, chat) are kept with probability KEEP_OTHERS.
KEEP_ALWAYS = ("ioi", "repeat")
KEEP_OTHERS = 0.5
