"""The synthetic training corpus of the bundled tiny Gemma, and its tokenizer.

Role
----
The tiny model in ``data/tiny-gemma/`` is trained from scratch on text generated here, so every
notebook has a model whose behaviour we can explain. Each *kind* of document pays for one lesson
that the interpretability notebooks look for (``KIND_WEIGHTS`` gives the mix):

* ``ioi`` (30 %): "When Mary and John went to the store, John gave a drink to Mary." inside a
  short story, in both name orders (ABBA and BABA): indirect-object identification.
* ``story`` (8 %): plain sentences about one or two people, so names are common, ordinary tokens.
* ``repeat`` (22 %): a random span of words, letters, digits, made-up words or names, written again
  ("k d w p | k d w p"): previous-token heads, induction heads, in-context copying.
* ``fact`` (20 %): capitals, colours of things, animal sounds, opposites: factual recall.
* ``sequence`` (10 %): "1 2 3 4 5", "Monday Tuesday ...", "a b c d": counting and patterns.
* ``chat`` (10 %): ``<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n...`` exchanges.

Design
------
* **Deterministic and random-access.** Document ``i`` of ``(seed, split)`` is drawn from its own
  ``random.Random`` seeded with a string naming all three, so ``iter_documents`` is an endless
  stream that any worker can resume at any index, and ``generate_corpus`` is its first ``n``.
  Python seeds ``random.Random`` from a string through SHA-512, so this is stable across runs and
  machines (unlike ``hash()``).
* **A held-out split that measures generalisation, not memory.** An unordered name pair is held out
  when a SHA-256 of the pair says so (about one pair in five), and ``HELDOUT_TEMPLATES`` are never
  used in training. No training document ever contains both names of a held-out pair, in any kind
  of text; held-out IOI prompts therefore pair names the model never saw together, and half of them
  also use a sentence frame it never saw.
* **Short documents** (a few sentences, well under 256 tokens) so a small context suffices, and no
  ``<bos>``/``<eos>`` in the text: the training loop adds them.
* **Names are written after a space.** With no dummy prefix, ``" Mary"`` (``▁Mary``) and ``"Mary"``
  are different tokens; IOI sentences never start with a name, so the answer token is always the
  spaced form, which the tokenizer learns as one piece (checked by the tests).

The tokenizer (``tokenizer_training.train_tokenizer``) is a SentencePiece BPE model laid out like Gemma's: ``<pad>``=0,
``<eos>``=1, ``<bos>``=2, ``<unk>``=3, ``<mask>``=4, then ``<start_of_turn>``=5, ``<end_of_turn>``=6
and ``"\\n"``=7 (Gemma 1/2 keep ids 5-105 for unused slots and put the turn markers at 106/107; a
3072-piece vocabulary cannot spare a hundred untrained rows, and gemma_lab's tokenizer finds the
special ids by piece name), then the 256 byte pieces, then merges. Like Gemma: byte fallback, no
dummy prefix, digits split, whitespace kept as written, identity normalisation.

The word tables and frames are in ``tables.py``, the tokenizer's training in ``tokenizer_training.py``.
This module imports only the standard library and ``tables``: never the model, torch, plotting or
widgets. The lesson and the IOI templates follow Wang et al.,
"Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small" (2022);
induction heads follow Olsson et al., "In-context Learning and Induction Heads" (2022).
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from gemma_lab.tiny.tables import (  # the word tables and templates every generator draws from
    ANIMAL_SOUNDS,
    CAPITALS,
    COLOURS_OF_THINGS,
    COMMON_WORDS,
    DAYS,
    DEFAULT_VOCAB_SIZE,
    GIVE_VERBS,
    HELDOUT_TEMPLATES,
    KIND_WEIGHTS,
    LETTERS,
    MONTHS,
    NAMES,
    NUMBER_WORDS,
    OBJECTS,
    OPPOSITES,
    ORDINALS,
    PLACES,
    SPECIAL_PIECES,
    SPLITS,
    STORY_OPENERS,
    TRAIN_TEMPLATES,
)

__all__ = [
    "ANIMAL_SOUNDS",
    "CAPITALS",
    "COLOURS_OF_THINGS",
    "DEFAULT_VOCAB_SIZE",
    "HELDOUT_TEMPLATES",
    "KIND_WEIGHTS",
    "NAMES",
    "OBJECTS",
    "OPPOSITES",
    "PLACES",
    "SPECIAL_PIECES",
    "SPLITS",
    "TRAIN_TEMPLATES",
    "chat_document",
    "corpus_statistics",
    "fact_document",
    "generate_corpus",
    "ioi_document",
    "ioi_prompts",
    "is_heldout_pair",
    "iter_documents",
    "iter_tagged_documents",
    "repeat_document",
    "repeated_random_tokens",
    "sequence_document",
    "story_document",
]

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _document_rng(seed: int, split: str, index: int) -> random.Random:
    """The random stream of one document: a function of (seed, split, index) only."""
    return random.Random(f"gemma_lab.corpus/{split}/{seed}/{index}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _with_article(noun: str) -> str:
    """'apple' -> 'an apple', 'drink' -> 'a drink' (good enough for these word lists)."""
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _capitalise(text: str) -> str:
    """Upper-case the first letter only ('the sky is blue' -> 'The sky is blue')."""
    return text[:1].upper() + text[1:]


def is_heldout_pair(name_a: str, name_b: str) -> bool:
    """True when the unordered pair {name_a, name_b} is reserved for held-out evaluation.

    About one pair in five, chosen by a hash so that the rule needs no stored table and does not
    depend on the order of ``NAMES``.
    """
    first, second = sorted((name_a, name_b))
    digest = hashlib.sha256(f"{first}|{second}".encode()).digest()
    return digest[0] % 5 == 0


def _sample_names(rng: random.Random, count: int, split: str, already: Sequence[str] = ()) -> list[str]:
    """``count`` new, different names that may share a document with ``already`` and each other.

    In training no two names in one document may form a held-out pair. The held-out split has no
    such rule here: its IOI pairs come from ``_sample_pair``.
    """
    chosen: list[str] = []
    while len(chosen) < count:
        candidate = rng.choice(NAMES)
        group = [*already, *chosen]
        if candidate in group:
            continue
        if split == "train" and any(is_heldout_pair(candidate, other) for other in group):
            continue
        chosen.append(candidate)
    return chosen


def _sample_pair(rng: random.Random, split: str, already: Sequence[str] = ()) -> tuple[str, str]:
    """Two names for an IOI sentence: a training pair, or in the held-out split a held-out pair."""
    if split == "train":
        io_name, s_name = _sample_names(rng, 2, "train", already)
        return io_name, s_name
    while True:
        io_name, s_name = rng.sample(NAMES, 2)
        if is_heldout_pair(io_name, s_name) and io_name not in already and s_name not in already:
            return io_name, s_name


# --------------------------------------------------------------------------------------------
# Generators, one per kind of document: a random stream and a split in, one document out.
# --------------------------------------------------------------------------------------------


def _fill_ioi(rng: random.Random, frame: str, io_name: str, s_name: str, order: str) -> tuple[str, str]:
    """Fill an IOI frame; return (the whole sentence, the prompt: the sentence up to the answer).

    ``order`` is "ABBA" (the indirect object is introduced first) or "BABA" (the subject is).
    """
    first, second = (io_name, s_name) if order == "ABBA" else (s_name, io_name)
    obj = rng.choice(OBJECTS)
    slots = {
        "first": first,
        "second": second,
        "S": s_name,
        "place": rng.choice(PLACES),
        "obj": _with_article(obj) if rng.random() < 0.75 else "the " + obj,
        "noun": obj,
        "gave": rng.choice(GIVE_VERBS),
    }
    before_answer, after_answer = frame.split(" {IO}")
    prompt = before_answer.format(**slots)
    return f"{prompt} {io_name}{after_answer}", prompt


def ioi_document(rng: random.Random, split: str = "train") -> str:
    """One or two IOI sentences inside a short story: "When Mary and John went to the store, ..."."""
    _check_split(split)
    frames = list(TRAIN_TEMPLATES.values())
    if split == "heldout":
        frames += HELDOUT_TEMPLATES.values()
    sentences = []
    if rng.random() < 0.5:
        sentences.append(rng.choice(STORY_OPENERS))
    names_in_document: list[str] = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        io_name, s_name = _sample_pair(rng, split, already=names_in_document)
        names_in_document += [io_name, s_name]
        order = rng.choice(("ABBA", "BABA"))
        sentence, _ = _fill_ioi(rng, rng.choice(frames), io_name, s_name, order)
        sentences.append(sentence)
        if rng.random() < 0.4:
            closing = rng.choice(("{} was happy.", "{} said thank you.", "{} smiled."))
            sentences.append(closing.format(io_name))
    if rng.random() < 0.3:
        sentences.append(rng.choice(("It was a good day.", "The end.", "Then they went home.")))
    return " ".join(sentences)


ONE_NAME_SENTENCES = (
    "{A} lives near the {place}.",
    "{A} likes to read books about animals.",
    "Every morning, {A} walks to the {place}.",
    "{A} bought {obj} at the {place}.",
    "{A} lost {obj} at the {place}.",
    "{A} found {obj} under the table.",
    "{A} works at the {place}.",
    "{A} was tired after a long day.",
    "{A} opened the door and looked outside.",
    "{A} keeps {obj} in a drawer.",
    "{A} is learning to play the guitar.",
    "{A} wanted to visit the {place}.",
    "On Sunday, {A} stayed at home.",
    "{A} made a cake for the party.",
    "In the evening, {A} cooked dinner.",
    "{A} laughed at the joke.",
)

TWO_NAME_SENTENCES = (
    "{A} and {B} are friends.",
    "{A} and {B} live in the same street.",
    "{A} is older than {B}.",
    "{A} called {B} on the phone.",
    "{A} met {B} at the {place}.",
    "{A} and {B} played in the {place} all afternoon.",
    "{A} helped {B} with the homework.",
    "{A} and {B} walked home together.",
    "{A} waited for {B} at the {place}.",
    "{A} and {B} like the same music.",
)


def story_document(rng: random.Random, split: str = "train") -> str:
    """Plain sentences about one or two people, so that names are frequent, ordinary tokens."""
    _check_split(split)
    if rng.random() < 0.5:
        names = _sample_names(rng, 1, split)
    else:
        names = list(_sample_pair(rng, split))
    # Mostly open with a name-free sentence: a name right after <bos> has no space before it, so
    # it is not the "▁Mary" token that every other lesson uses.
    sentences = [rng.choice(STORY_OPENERS)] if rng.random() < 0.75 else []
    patterns = list(ONE_NAME_SENTENCES)
    if len(names) == 2:
        patterns += TWO_NAME_SENTENCES
    for pattern in rng.sample(patterns, rng.randint(2, 4)):  # no sentence twice
        rng.shuffle(names)
        sentences.append(
            pattern.format(
                A=names[0],
                B=names[-1],
                place=rng.choice(PLACES),
                obj=_with_article(rng.choice(OBJECTS)),
            )
        )
    return " ".join(sentences)


#: The vocabulary of random spans: ordinary words plus the corpus's own nouns (no names).
REPEAT_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        COMMON_WORDS + PLACES + OBJECTS + tuple(ANIMAL_SOUNDS) + tuple(OPPOSITES) + tuple(OPPOSITES.values())
    )
)


def _nonsense_word(rng: random.Random) -> str:
    """A pronounceable made-up word ("tobirak"): it splits into rare sub-word tokens."""
    syllables = [rng.choice("bcdfghjklmnprstvwz") + rng.choice("aeiou") for _ in range(rng.randint(1, 3))]
    ending = rng.choice("kmnrst") if rng.random() < 0.5 else ""
    return "".join(syllables) + ending


def repeat_document(rng: random.Random, split: str = "train") -> str:
    """A random span written two or three times, the food of previous-token and induction heads."""
    _check_split(split)
    form = rng.choices(("words", "letters", "digits", "names", "nonsense"), weights=(5, 2, 2, 2, 1))[0]
    length = rng.randint(4, 16)
    if form == "names":
        names = _sample_names(rng, rng.randint(3, 7), split)
        listing = ", ".join(names[:-1]) + " and " + names[-1]
        lead = rng.choice(("The guests were", "The team is", "The winners were", "In the photo are"))
        return f"{lead} {listing}. Once more: {listing}."
    if form == "words":
        items = rng.choices(REPEAT_WORDS, k=length)
    elif form == "letters":
        items = rng.choices(LETTERS, k=length)
    elif form == "digits":
        items = rng.choices("0123456789", k=length)
    else:
        items = [_nonsense_word(rng) for _ in range(rng.randint(3, 10))]
    span = " ".join(items)
    lead = rng.choice(("", "", "Repeat after me: ", "Copy: ", "Say it again: ", "Remember this: "))
    if rng.random() < 0.25:  # something unrelated between the copies: induction must look back
        return f"{lead}{span}. {rng.choice(STORY_OPENERS)} {span}"
    between = rng.choice((" ", ". ", " | ", " ... ", "\n", " -> "))
    return lead + between.join([span] * rng.choice((2, 2, 3)))


def _capital_sentence(rng: random.Random, country: str, capital: str) -> str:
    form = rng.choices(range(6), weights=(5, 2, 1, 1, 1, 1))[0]
    return (
        f"The capital of {country} is {capital}.",
        f"{capital} is the capital of {country}.",
        f"{_capitalise(country)}'s capital is {capital}.",
        f"The capital city of {country} is {capital}.",
        f"Q: What is the capital of {country}? A: {capital}.",
        f"What is the capital of {country}? The capital of {country} is {capital}.",
    )[form]


def _colour_sentence(rng: random.Random, thing: str, colour: str) -> str:
    spelling = rng.choice(("colour", "color"))
    form = rng.choices(range(4), weights=(4, 3, 1, 1))[0]
    return (
        f"The {spelling} of {thing} is {colour}.",
        f"{_capitalise(thing)} is {colour}.",
        f"What {spelling} is {thing}? {_capitalise(thing)} is {colour}.",
        f"What {spelling} is {thing}? It is {colour}.",
    )[form]


def _sound_sentence(rng: random.Random, animal: str, sound: str, verb: str) -> str:
    a_animal = _with_article(animal)
    form = rng.choices(range(5), weights=(3, 2, 1, 1, 1))[0]
    return (
        f"{_capitalise(a_animal)} says {sound}.",
        f"The {animal} says {sound}.",
        f"{_capitalise(a_animal)} goes {sound}.",
        f"What does {a_animal} say? {_capitalise(a_animal)} says {sound}.",
        f"The {animal} {verb}.",
    )[form]


def _opposite_sentence(rng: random.Random, word: str, opposite: str) -> str:
    form = rng.choices(range(3), weights=(4, 1, 1))[0]
    return (
        f"The opposite of {word} is {opposite}.",
        f"{_capitalise(opposite)} is the opposite of {word}.",
        f"What is the opposite of {word}? It is {opposite}.",
    )[form]


def _random_fact(rng: random.Random, topic: str) -> str:
    if topic == "capital":
        return _capital_sentence(rng, *rng.choice(list(CAPITALS.items())))
    if topic == "colour":
        return _colour_sentence(rng, *rng.choice(list(COLOURS_OF_THINGS.items())))
    if topic == "sound":
        animal, (sound, verb) = rng.choice(list(ANIMAL_SOUNDS.items()))
        return _sound_sentence(rng, animal, sound, verb)
    word, opposite = rng.choice(list(OPPOSITES.items()))
    if rng.random() < 0.5:
        word, opposite = opposite, word
    return _opposite_sentence(rng, word, opposite)


def fact_document(rng: random.Random, split: str = "train") -> str:
    """One to four facts on one topic: capitals, colours of things, animal sounds or opposites."""
    _check_split(split)
    topic = rng.choices(("capital", "colour", "sound", "opposite"), weights=(4, 3, 1.5, 1.5))[0]
    return " ".join(_random_fact(rng, topic) for _ in range(rng.randint(1, 4)))


def _cycle_slice(rng: random.Random, items: Sequence[str], min_len: int, max_len: int) -> list[str]:
    """A run of consecutive items starting anywhere, wrapping around (Saturday, Sunday, Monday)."""
    start = rng.randrange(len(items))
    return [items[(start + i) % len(items)] for i in range(rng.randint(min_len, max_len))]


def _random_sequence(rng: random.Random) -> str:
    """One run: numbers, number words, ordinals, days, months or letters, in order."""
    form = rng.choices(
        ("count", "step", "countdown", "number_words", "ordinals", "days", "months", "letters"),
        weights=(4, 2, 1, 2, 1, 2, 2, 2),
    )[0]
    separator = rng.choice((" ", " ", ", "))
    if form == "count":
        start = rng.choice((1, 1, 1, 0, rng.randint(2, 40)))
        return separator.join(str(n) for n in range(start, start + rng.randint(5, 15)))
    if form == "step":
        step = rng.choice((2, 5, 10, 3))
        start = step * rng.randint(0, 3)
        return separator.join(str(start + step * i) for i in range(rng.randint(5, 10)))
    if form == "countdown":
        top = rng.randint(5, 12)
        return separator.join(str(n) for n in range(top, 0, -1)) + rng.choice(("", "!", " Go!"))
    if form == "number_words":
        start = rng.randint(0, 10)
        return separator.join(NUMBER_WORDS[start : start + rng.randint(4, 10)])
    if form == "ordinals":
        return separator.join(ORDINALS[: rng.randint(4, 10)])
    if form == "days":
        return separator.join(_cycle_slice(rng, DAYS, 3, 9))
    if form == "months":
        return separator.join(_cycle_slice(rng, MONTHS, 3, 12))
    start = rng.randrange(20)  # the remaining form: letters
    run = LETTERS[start : start + rng.randint(4, 12)]
    return separator.join(run.upper() if rng.random() < 0.3 else run)


def _what_comes_after(rng: random.Random) -> str:
    """One sentence naming a successor: "The day after Monday is Tuesday."."""
    what = rng.choice(("number", "day", "month", "letter"))
    if what == "number":
        n = rng.randint(0, 30)
        return f"The number after {n} is {n + 1}."
    if what == "day":
        i = rng.randrange(7)
        return f"The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}."
    if what == "month":
        i = rng.randrange(12)
        return f"The month after {MONTHS[i]} is {MONTHS[(i + 1) % 12]}."
    i = rng.randrange(25)
    return f"The letter after {LETTERS[i]} is {LETTERS[i + 1]}."


def sequence_document(rng: random.Random, split: str = "train") -> str:
    """Counting and simple sequences: "1 2 3 4 5", "Monday Tuesday ...", "a b c d"."""
    _check_split(split)
    if rng.random() < 0.2:
        return " ".join(_what_comes_after(rng) for _ in range(rng.randint(1, 3)))
    lead = rng.choice(("", "", "", "Counting: ", "Here is a sequence: ", "Keep going: "))
    return lead + "\n".join(_random_sequence(rng) for _ in range(rng.randint(1, 2)))


def _chat_exchange(rng: random.Random, split: str, allow_name: bool) -> tuple[str, str]:
    """One (user message, model reply) pair."""
    kinds = ["greeting", "capital", "colour", "sound", "opposite", "count", "next_day", "repeat", "thanks"]
    if allow_name:
        kinds.append("name")
    kind = rng.choice(kinds)
    if kind == "greeting":
        return (
            rng.choice(("Hello!", "Hi!", "Hi there!", "Good morning!", "Hey!")),
            rng.choice(("Hello! How can I help you today?", "Hi! What can I do for you?")),
        )
    if kind == "capital":
        country, capital = rng.choice(list(CAPITALS.items()))
        return f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    if kind == "colour":
        thing, colour = rng.choice(list(COLOURS_OF_THINGS.items()))
        return f"What {rng.choice(('colour', 'color'))} is {thing}?", f"{_capitalise(thing)} is {colour}."
    if kind == "sound":
        animal, (sound, _) = rng.choice(list(ANIMAL_SOUNDS.items()))
        a_animal = _with_article(animal)
        return f"What sound does {a_animal} make?", f"{_capitalise(a_animal)} says {sound}."
    if kind == "opposite":
        word, opposite = rng.choice(list(OPPOSITES.items()))
        return f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."
    if kind == "count":
        top = rng.randint(3, 10)
        return f"Count from 1 to {top}.", " ".join(str(n) for n in range(1, top + 1))
    if kind == "next_day":
        i = rng.randrange(7)
        return f"What day comes after {DAYS[i]}?", f"The day after {DAYS[i]} is {DAYS[(i + 1) % 7]}."
    if kind == "repeat":
        words = " ".join(rng.choices(REPEAT_WORDS, k=rng.randint(3, 6)))
        return f"Please repeat these words: {words}", words
    if kind == "thanks":
        return rng.choice(("Thank you!", "Thanks!")), rng.choice(("You are welcome!", "Happy to help!"))
    (name,) = _sample_names(rng, 1, split)
    return (
        rng.choice((f"My name is {name}.", f"Hi, I am {name}.")),
        rng.choice((f"Nice to meet you, {name}!", f"Hello, {name}! How can I help you?")),
    )


def chat_document(rng: random.Random, split: str = "train") -> str:
    """One to three user/model exchanges in Gemma's chat format (no ``<bos>``: the loader adds it)."""
    _check_split(split)
    turns = []
    for turn in range(rng.choice((1, 1, 2, 3))):
        user, model = _chat_exchange(rng, split, allow_name=turn == 0)  # one name per conversation
        turns.append(
            f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{model}<end_of_turn>\n"
        )
    return "".join(turns)


GENERATORS = {
    "ioi": ioi_document,
    "story": story_document,
    "repeat": repeat_document,
    "fact": fact_document,
    "sequence": sequence_document,
    "chat": chat_document,
}

# --------------------------------------------------------------------------------------------
# The corpus: an endless deterministic stream and its finite prefix
# --------------------------------------------------------------------------------------------


def iter_tagged_documents(seed: int = 0, split: str = "train", start: int = 0) -> Iterator[tuple[str, str]]:
    """Endless ``(kind, text)`` pairs; document ``i`` depends only on ``(seed, split, i)``.

    ``start`` resumes the stream at any index (e.g. one offset per data-loader worker).
    """
    _check_split(split)
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    for index in itertools.count(start):
        rng = _document_rng(seed, split, index)
        kind = rng.choices(kinds, weights=weights)[0]
        yield kind, GENERATORS[kind](rng, split)


def iter_documents(seed: int = 0, split: str = "train", start: int = 0) -> Iterator[str]:
    """Endless stream of document texts (see ``iter_tagged_documents``)."""
    for _, text in iter_tagged_documents(seed, split, start):
        yield text


def generate_corpus(
    seed: int = 0, n_documents: int = 20_000, split: str = "train", with_kinds: bool = False
) -> list[str] | list[tuple[str, str]]:
    """The first ``n_documents`` of the stream: texts, or ``(kind, text)`` pairs if ``with_kinds``.

    20 000 documents are about 2 MB of text: enough to train the tokenizer, and a fixed set to
    quote in the model card; training itself can keep reading ``iter_documents``.
    """
    stream = iter_tagged_documents(seed, split)
    pairs = list(itertools.islice(stream, n_documents))
    return pairs if with_kinds else [text for _, text in pairs]


def ioi_prompts(seed: int = 0, n: int = 200, split: str = "heldout") -> list[dict]:
    """IOI evaluation prompts: each ends just before the answer, which is ``" " + io_name``.

    Returns dicts with ``prompt``, ``answer``, ``io_name``, ``s_name``, ``template`` (its name),
    ``template_seen`` (False for ``HELDOUT_TEMPLATES``) and ``order`` ("ABBA" or "BABA", which
    alternate). With ``split="heldout"`` every name pair is a held-out pair, never together in any
    training document, and half of the prompts use a held-out template; with ``split="train"``
    pairs and templates are drawn as in training (for an in-distribution comparison).
    """
    _check_split(split)
    rng = random.Random(f"gemma_lab.corpus/ioi_prompts/{split}/{seed}")
    prompts = []
    for i in range(n):
        template_seen = split == "train" or i % 2 == 1
        template = rng.choice(list(TRAIN_TEMPLATES if template_seen else HELDOUT_TEMPLATES))
        io_name, s_name = _sample_pair(rng, split)
        order = ("ABBA", "BABA")[(i // 2) % 2]  # with the template rule above: all four mixes
        frame = TRAIN_TEMPLATES[template] if template_seen else HELDOUT_TEMPLATES[template]
        _, prompt = _fill_ioi(rng, frame, io_name, s_name, order)
        prompts.append(
            {
                "prompt": prompt,
                "answer": " " + io_name,
                "io_name": io_name,
                "s_name": s_name,
                "template": template,
                "template_seen": template_seen,
                "order": order,
            }
        )
    return prompts


def repeated_random_tokens(
    seed: int, index: int, low: int, high: int, span: int, n_repeats: int = 2
) -> list[int]:
    """A span of uniformly random token ids in ``[low, high)``, written ``n_repeats`` times.

    Text alone never shows the model its tokens in a random order, and a third of a BPE vocabulary
    is pieces that text rarely or never produces (the steps on the way to whole words, "▁Chr" for
    "▁Christopher"); induction is measured on exactly such sequences, so the training loop should
    mix some in at the token level, with ``low = len(SPECIAL_PIECES)`` and ``high`` = the vocabulary
    size. This also gives every embedding row a gradient. Deterministic in ``(seed, index)``.
    """
    rng = random.Random(f"gemma_lab.corpus/tokens/{seed}/{index}")
    ids = [rng.randrange(low, high) for _ in range(span)]
    return ids * n_repeats


# --------------------------------------------------------------------------------------------
# Statistics for the model card
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+")


def corpus_statistics(docs: Iterable[str] | Iterable[tuple[str, str]], tokenizer=None) -> dict:
    """Counts for the model card: documents, characters, kinds, names, words, and tokens.

    ``docs`` holds texts or ``(kind, text)`` pairs (the kinds are counted only for pairs).
    ``tokenizer`` is optional: anything with ``encode(text) -> list[int]``, such as a
    ``sentencepiece.SentencePieceProcessor``.
    """
    kinds: Counter[str] = Counter()
    names: Counter[str] = Counter()
    words: set[str] = set()
    name_set = set(NAMES)
    lengths = []
    token_counts = []
    for doc in docs:
        if isinstance(doc, tuple):
            kind, text = doc
            kinds[kind] += 1
        else:
            text = doc
        lengths.append(len(text))
        for word in _WORD.findall(text):
            words.add(word)
            if word in name_set:
                names[word] += 1
        if tokenizer is not None:
            token_counts.append(len(tokenizer.encode(text)))
    n_docs = len(lengths)
    stats = {
        "documents": n_docs,
        "characters": sum(lengths),
        "mean_characters": round(sum(lengths) / max(n_docs, 1), 1),
        "max_characters": max(lengths, default=0),
        "unique_words": len(words),
        "unique_names": len(names),
        "name_mentions": sum(names.values()),
    }
    if kinds:
        stats["kinds"] = {kind: kinds[kind] for kind in KIND_WEIGHTS if kind in kinds}
        stats["kind_fractions"] = {kind: round(count / n_docs, 3) for kind, count in stats["kinds"].items()}
    if tokenizer is not None:
        stats["tokens"] = sum(token_counts)
        stats["mean_tokens"] = round(sum(token_counts) / max(n_docs, 1), 1)
        stats["max_tokens"] = max(token_counts, default=0)
    return stats
