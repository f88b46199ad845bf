"""The tokenizer gives transformers' ids, round-trips text, and renders Gemma's chat templates exactly.

No Gemma file is downloaded: a small SentencePiece model is trained here with Gemma's piece layout
(specials at Gemma's ids, whitespace runs as user-defined pieces, byte fallback, no dummy prefix, split
digits), and transformers' own ``GemmaTokenizer`` built from the same file is the oracle.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import sentencepiece
import torch
import transformers
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gemma_lab.bundled
from gemma_lab.tokenizer import GemmaTokenizer, load_tokenizer, readable_piece

# Ids 4 and up, in Gemma's order (reference §4.2). Gemma 1/2: turn tokens at 106/107; Gemma 3: 105/106.
UNUSED = [f"<unused{i}>" for i in range(99)]
GEMMA_SPECIALS = ["<mask>", "<2mass>", "[@BOS@]", *UNUSED, "<start_of_turn>", "<end_of_turn>"]
GEMMA3_SPECIALS = ["<mask>", "[multimodal]", *UNUSED, "<start_of_turn>", "<end_of_turn>"]
# Like Gemma's vocabulary, runs of newlines and spaces (literal spaces, not "▁") are user-defined pieces.
WHITESPACE_PIECES = ["\n" * n for n in range(1, 32)] + [" " * n for n in range(2, 32)] + ["\t\t", "\t\t\t\t"]

NAMES = ["Alice", "Bob", "Zoë", "José", "Müller", "Ødegaard", "李雷", "Ольга", "Nguyễn", "Siobhán"]
WORDS = (
    "the quick brown fox jumps over lazy dog model token layer attention residual stream head "
    "value query key embedding logit softmax norm hello world test this is a"
).split()

TRICKY_TEXTS = [
    "",
    "The quick brown fox jumps over the lazy dog.",
    " Hello",
    "Hi  Hello",
    "   leading spaces",
    "trailing spaces   ",
    " " * 7,
    " " * 40,  # longer than the longest space piece
    "\n",
    "\n\n",
    "line one\nline two\n\n\n\nend\n",
    "a\tb\t\tc\t\t\t\td",
    "\r\n windows line",
    "1234",
    "3.14159 and 2,718 and x=007",
    "生活的真谛是",
    "😀 👍🏽 emoji",
    "Zoë, José and Ødegaard met Ольга",
    "Hey<eos>.",
    "<bos>twice<bos>",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    "<unk><pad><mask><unused7>",
    "<<eos>> <eos <eos>",
    "a ▁ literal ▁▁ lower one-eighth block",
    "\x00 control \x07 chars",
]


def make_corpus(seed: int = 0, n_lines: int = 600) -> list[str]:
    """Sentences with names, numbers, punctuation, newlines, space runs, tabs and some non-ASCII."""
    rng = random.Random(seed)
    lines = []
    for index in range(n_lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        line = f"{rng.choice(NAMES)} said: {words}, {rng.randint(0, 99_999)} times!"
        if index % 3 == 0:
            line += f" (ok?) x={rng.random():.4f};"
        if index % 5 == 0:
            line = "    " + line + "   end"
        if index % 7 == 0:
            line = line.replace(" ", "\t", 2)
        if index % 11 == 0:
            line += "\n\n" + rng.choice(NAMES) + ":\n  - item"
        lines.append(line)
    return lines


def train_gemma_like(folder: Path, specials: list[str]) -> Path:
    """Train a small SentencePiece BPE model with Gemma's settings; returns its tokenizer.model."""
    folder.mkdir(parents=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(make_corpus()),
        model_prefix=str(folder / "tokenizer"),
        model_type="bpe",
        vocab_size=700,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=specials + WHITESPACE_PIECES,
        byte_fallback=True,
        add_dummy_prefix=False,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    (folder / "tokenizer.vocab").unlink()
    return folder / "tokenizer.model"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Gemma 1/2 and Gemma 3 layouts as tokenizer.model, plus transformers' tokenizer.json of the first."""
    root = tmp_path_factory.mktemp("tokenizers")
    gemma_model = train_gemma_like(root / "gemma", GEMMA_SPECIALS)
    gemma3_model = train_gemma_like(root / "gemma3", GEMMA3_SPECIALS)
    oracle = transformers.GemmaTokenizer.from_pretrained(gemma_model.parent, add_bos_token=True)
    oracle.save_pretrained(root / "gemma-json")
    return {
        "gemma_model": gemma_model,
        "gemma3_model": gemma3_model,
        "gemma_json": root / "gemma-json" / "tokenizer.json",
        "oracle": oracle,
        "oracle3": transformers.GemmaTokenizer.from_pretrained(gemma3_model.parent, add_bos_token=True),
    }


@pytest.fixture(scope="module")
def tok(files) -> GemmaTokenizer:
    return load_tokenizer(files["gemma_model"])


@pytest.fixture(scope="module")
def tok_json(files) -> GemmaTokenizer:
    return load_tokenizer(files["gemma_json"])


@pytest.fixture(scope="module")
def tok3(files) -> GemmaTokenizer:
    return load_tokenizer(files["gemma3_model"])


# ---------------------------------------------------------------- ids equal transformers'


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_ids_match_transformers(text, files, tok, tok_json, tok3):
    expected = files["oracle"](text).input_ids
    assert expected[0] == 2  # the oracle adds <bos>, as Gemma's tokenizer_config.json asks
    assert tok.encode(text) == expected
    assert tok_json.encode(text) == expected
    assert tok.encode(text, add_bos=False) == expected[1:]
    assert tok3.encode(text) == files["oracle3"](text).input_ids


def test_gemma_normalisation_behaviour(tok):
    """The §4.4 behaviours, stated on pieces: no dummy prefix, space runs kept, digits split, bytes."""
    def pieces(text):
        return [tok.id_to_piece(i) for i in tok.encode(text, add_bos=False)]

    assert not pieces("the")[0].startswith("▁") and pieces(" the")[0].startswith("▁")
    assert "  " in pieces("Hi  Hello") and "\n\n" in pieces("a\n\nb")
    assert pieces("1234") == ["1", "2", "3", "4"]
    assert pieces("生") == ["<0xE7>", "<0x94>", "<0x9F>"]
    hey, dot = tok.encode("Hey", add_bos=False), tok.encode(".", add_bos=False)
    assert tok.encode("Hey<eos>.", add_bos=False) == [*hey, tok.eos_id, *dot]


# Fragments that stress the places where tokenizers disagree: names of special tokens (also broken ones),
# runs of spaces and newlines, the "▁" character itself, digits, bytes.
FRAGMENTS = [
    "<eos>", "<bos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<unused12>", "<eos", "eos>",
    " ", "  ", " " * 33, "\n", "\n\n\n", "\t", "▁", "▁▁", "12", "生", "😀", "é", "Bob", " the", "<",
]
mixed_texts = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(FRAGMENTS)), max_size=12).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mixed_texts)
def test_ids_match_transformers_on_generated_text(text, files, tok, tok_json):
    expected = files["oracle"](text).input_ids
    assert tok.encode(text) == expected
    assert tok_json.encode(text) == expected


# ---------------------------------------------------------------- decoding


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40))
def test_decode_inverts_encode(text, tok, tok_json):
    # decode drops <bos>/<eos>/<pad> wherever they are, and "▁" decodes to a space, as in transformers.
    assume(not any(name in text for name in ("<bos>", "<eos>", "<pad>", "▁")))
    assert tok.decode(tok.encode(text)) == text
    assert tok_json.decode(tok_json.encode(text)) == text


def test_decode_matches_transformers(files, tok, tok_json):
    oracle = files["oracle"]
    byte_ids = [oracle.convert_tokens_to_ids(f"<0x{b:02X}>") for b in "生".encode()]
    rng = random.Random(0)
    id_lists = [
        byte_ids,
        byte_ids[:2],  # a cut-off character: one "�" per byte
        byte_ids[1:] + byte_ids,
        [tok.unk_id, tok.start_of_turn_id, tok.end_of_turn_id, 4, 5],
    ] + [[rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 15))] for _ in range(300)]
    for ids in id_lists:
        kept = [i for i in ids if i not in (tok.bos_id, tok.eos_id, tok.pad_id)]
        assert tok.decode(ids) == oracle.decode(kept), ids
        assert tok_json.decode(ids) == oracle.decode(kept), ids


def test_decode_accepts_lists_tensors_and_keeps_turn_tokens(tok):
    ids = tok.encode("<start_of_turn>user\nhi<end_of_turn><eos>")
    expected = "<start_of_turn>user\nhi<end_of_turn>"
    assert tok.decode(ids) == expected
    assert tok.decode(tuple(ids)) == expected
    assert tok.decode(torch.tensor(ids)) == expected
    assert tok.decode(torch.tensor(tok.start_of_turn_id)) == "<start_of_turn>"
    with pytest.raises(TypeError, match="batch"):
        tok.decode([ids, ids])


# ---------------------------------------------------------------- pieces and special ids


def test_special_ids_are_read_from_the_file(tok, tok_json, tok3):
    for t in (tok, tok_json, tok3):
        assert (t.pad_id, t.eos_id, t.bos_id, t.unk_id) == (0, 1, 2, 3)
    assert (tok.start_of_turn_id, tok.end_of_turn_id) == (106, 107)
    assert (tok_json.start_of_turn_id, tok_json.end_of_turn_id) == (106, 107)
    assert (tok3.start_of_turn_id, tok3.end_of_turn_id) == (105, 106)
    assert tok.chat_format == tok_json.chat_format == "gemma"
    assert tok3.chat_format == "gemma3"


def test_pieces_and_vocab_size(files, tok, tok_json):
    assert tok.vocab_size == tok_json.vocab_size == len(files["oracle"])
    for t in (tok, tok_json):
        assert t.id_to_piece(2) == "<bos>"
        assert t.piece_to_id("<end_of_turn>") == 107
        assert t.piece_to_id("  ") == files["oracle"].convert_tokens_to_ids("  ")
        with pytest.raises(KeyError, match="no-such-piece"):
            t.piece_to_id("no-such-piece")
        with pytest.raises(IndexError):
            t.id_to_piece(t.vocab_size)


def test_to_str_tokens_is_readable(tok):
    expected = ["<bos>", "\\n", "  ", "<0xE7>", "<0x94>", "<0x9F>", "\\t"]
    assert tok.to_str_tokens("\n  生\t") == expected
    ids = tok.encode("\n  生\t")
    assert tok.to_str_tokens(ids) == expected
    assert tok.to_str_tokens(torch.tensor(ids)) == expected
    # Without newlines or bytes, the shown pieces spell the text: "▁" is shown as a space.
    assert "".join(tok.to_str_tokens("Bob said: the  model", add_bos=False)) == "Bob said: the  model"
    assert readable_piece("▁the\r\n") == " the\\r\\n"


# ---------------------------------------------------------------- chat templates (reference §4.6)

CONVERSATION = [
    {"role": "user", "content": " Hi "},
    {"role": "assistant", "content": "Yo"},
    {"role": "user", "content": "Q"},
]


def test_gemma_chat_template(tok):
    assert tok.apply_chat_template(CONVERSATION) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
        "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n"
    )
    assert tok.apply_chat_template(CONVERSATION, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
        "<start_of_turn>user\nQ<end_of_turn>\n"
    )


def test_gemma3_chat_template_folds_the_system_message(tok3):
    messages = [{"role": "system", "content": "S"}, *CONVERSATION]
    assert tok3.apply_chat_template(messages) == (
        "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
        "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize("which", ["tok", "tok3"])
def test_tokenized_chat_has_one_bos(which, request, files):
    t = request.getfixturevalue(which)
    oracle = files["oracle" if which == "tok" else "oracle3"]
    ids = t.apply_chat_template(CONVERSATION, tokenize=True)
    text = t.apply_chat_template(CONVERSATION)
    assert ids[0] == t.bos_id and ids.count(t.bos_id) == 1
    assert ids.count(t.start_of_turn_id) == 4 and ids.count(t.end_of_turn_id) == 3
    assert ids == oracle(text, add_special_tokens=False).input_ids


def test_chat_template_errors(tok, tok3):
    with pytest.raises(ValueError, match="System role not supported"):
        tok.apply_chat_template([{"role": "system", "content": "S"}, *CONVERSATION])
    for t in (tok, tok3):
        with pytest.raises(ValueError, match="alternate"):
            t.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        with pytest.raises(ValueError, match="alternate"):
            t.apply_chat_template([{"role": "assistant", "content": "a"}])


def test_chat_format_can_be_chosen(files):
    tok = load_tokenizer(files["gemma_model"], chat_format="gemma3")
    rendered = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "x"}])
    assert rendered == "<bos><start_of_turn>user\nS\n\nx<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ValueError, match="chat_format"):
        load_tokenizer(files["gemma_model"], chat_format="llama")


# ---------------------------------------------------------------- loading


def test_folder_prefers_tokenizer_model(files, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(files["gemma_json"].read_bytes())
    assert load_tokenizer(folder).source == str(folder / "tokenizer.json")
    (folder / "tokenizer.model").write_bytes(files["gemma_model"].read_bytes())
    assert load_tokenizer(folder).source == str(folder / "tokenizer.model")


def test_tiny_name_loads_the_bundled_folder(files, tmp_path, monkeypatch):
    folder = tmp_path / "tiny-gemma"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(files["gemma_model"].read_bytes())
    monkeypatch.setattr(gemma_lab.bundled, "tiny_model_dir", lambda: folder)
    tok = load_tokenizer("tiny")
    assert tok.source == str(folder / "tokenizer.model")
    assert tok.encode("Hey<eos>.") == files["oracle"]("Hey<eos>.").input_ids


def test_loading_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_tokenizer(tmp_path)
    corrupt_model = tmp_path / "tokenizer.model"
    corrupt_model.write_bytes(b"this is not a SentencePiece model")
    with pytest.raises(ValueError, match=re.escape(str(corrupt_model))):
        load_tokenizer(tmp_path)  # the folder's tokenizer.model, named in the error
    corrupt_json = tmp_path / "broken.json"
    corrupt_json.write_text("{ not json")
    with pytest.raises(ValueError, match=re.escape(str(corrupt_json))):
        load_tokenizer(corrupt_json)



@pytest.mark.parametrize("text", ["a\ud800", "\udcff tail", "ok \udce9t\udce9"])
def test_text_that_is_not_valid_unicode_gets_a_clear_error(text):
    tok = load_tokenizer("tiny")
    with pytest.raises(ValueError, match="lone surrogate that is not valid Unicode"):
        tok.encode(text)


def test_the_chat_format_follows_the_checkpoint_config_beside_the_tokenizer(tmp_path):
    """The tiny model is a Gemma 3: its small vocabulary must not make it a Gemma 1/2 chat."""
    assert load_tokenizer("tiny").chat_format == "gemma3"
    folder = tmp_path / "g2"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes((gemma_lab.bundled.tiny_model_dir() / "tokenizer.model").read_bytes())
    (folder / "config.json").write_text('{"model_type": "gemma2"}')
    assert load_tokenizer(folder).chat_format == "gemma"
    assert load_tokenizer(folder, chat_format="gemma3").chat_format == "gemma3"


# ---------------------------------------------------------------- a checkpoint's own chat template


def test_a_shipped_chat_template_is_rendered_as_transformers_renders_it(files, tmp_path):
    """A Gemma 3 folder whose tokenizer_config.json carries the template (older hub folders) and one
    with chat_template.jinja (what transformers 5 writes): the same text and ids as transformers'
    apply_chat_template, the built-in format no longer consulted, keywords passed to the template."""
    template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                "else m['role'] }}\n{{ m['content'] | trim }}{% if shout %}!{% endif %}<end_of_turn>\n{% endfor %}"
                "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    oracle = transformers.GemmaTokenizer.from_pretrained(files["gemma3_model"].parent, add_bos_token=True)
    oracle.chat_template = template
    oracle.save_pretrained(tmp_path / "jinja")
    legacy = tmp_path / "legacy"
    shutil.copytree(tmp_path / "jinja", legacy)
    (legacy / "chat_template.jinja").unlink()
    config = json.loads((legacy / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": template}, {"name": "tool_use", "template": "x"}]
    (legacy / "tokenizer_config.json").write_text(json.dumps(config))
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "jinja")
    messages = [{"role": "system", "content": "S"}, *CONVERSATION]
    for folder in ("jinja", "legacy"):
        ours = load_tokenizer(tmp_path / folder)
        assert ours.chat_template is not None
        for shout in (False, True):
            expected = reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, shout=shout)
            assert ours.apply_chat_template(messages, shout=shout) == expected
            assert ours.apply_chat_template(messages, tokenize=True, shout=shout) == reloaded.encode(
                expected, add_special_tokens=False)
        assert "<start_of_turn>system" in ours.apply_chat_template(messages)  # the template's, not the fold


def test_chat_template_files_that_are_wrong_are_named(files, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    shutil.copy(files["gemma3_model"], folder / "tokenizer.model")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ValueError, match=r"chat_template\.jinja is not valid Jinja \(line 1"):
        load_tokenizer(folder)
    (folder / "chat_template.jinja").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}]}))
    with pytest.raises(ValueError, match=r"tokenizer_config\.json's chat_template lists \['tool_use'\] but no 'default'"):
        load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ raise_exception('no tools here') if tools }}ok"}))
    ours = load_tokenizer(folder)
    assert ours.apply_chat_template(CONVERSATION) == "ok"
    with pytest.raises(ValueError, match=r"tokenizer_config\.json \(chat_template\) refused this conversation: no tools here"):
        ours.apply_chat_template(CONVERSATION, tools=[{"name": "f"}])
    with pytest.raises(TypeError, match="JSON-schema dicts"):
        ours.apply_chat_template(CONVERSATION, tools=[print])


def test_the_built_in_formats_take_no_template_keywords(tok):
    with pytest.raises(TypeError, match="enable_thinking: only a checkpoint's own chat template takes extra keywords"):
        tok.apply_chat_template(CONVERSATION, enable_thinking=True)


def test_a_template_cannot_reach_python_internals():
    """The sandbox: a hub template is untrusted code."""
    from gemma_lab.chat_template import ChatTemplate

    escape = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", origin="evil.jinja")
    with pytest.raises(ValueError, match="evil.jinja refused"):
        escape.render([], add_generation_prompt=False, special_tokens={})
