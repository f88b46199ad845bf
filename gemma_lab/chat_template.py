"""A checkpoint's own chat template: found in its folder and rendered the way transformers renders it.

Role: instruction-tuned checkpoints ship their chat format as a Jinja template (``chat_template.jinja``,
or the ``"chat_template"`` entry of ``tokenizer_config.json`` in older folders). Gemma 4's template
differs between sizes (a system turn that switches thinking on with ``<|think|>``, an empty thought
channel in the generation prompt of some sizes), so the only faithful rendering is the template the
checkpoint carries. This module reads it and renders it under the same conventions as transformers'
``apply_chat_template``, so the text and ids equal transformers' for the same files.

Must not import: torch, the model, plotting or widgets. It imports only ``jinja2`` (a sandbox: a
template from the hub is untrusted code).

The conventions that decide equality with transformers (``utils/chat_template_utils.py``):
``trim_blocks`` and ``lstrip_blocks`` on; the ``loopcontrols`` extension; a ``{% generation %}`` block
tag (renders its body); ``tojson`` without HTML escaping; globals ``raise_exception`` and
``strftime_now``; the template sees ``messages``, ``tools``, ``documents``, ``add_generation_prompt``,
the special tokens by name (``bos_token``...) and any extra keyword (``enable_thinking=...``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: Where a checkpoint folder keeps its template, in the order transformers prefers them.
TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# The names a message's reasoning arrives under; templates read "reasoning_content" (some "thinking").
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplate:
    """A Jinja chat template and where it came from; ``render(messages, ...)`` gives the prompt text."""

    def __init__(self, source: str, origin: str = "<memory>"):
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"the chat template from {origin} is empty or not a string")
        self.source = source
        self.origin = origin
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(f"the chat template in {origin} is not valid Jinja "
                             f"(line {error.lineno}: {error.message})") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(from {self.origin!r}, {len(self.source)} characters)"

    def render(self, messages: list[dict], *, add_generation_prompt: bool, special_tokens: dict[str, str],
               tools: list[dict] | None = None, documents: list[dict] | None = None, **template_kwargs) -> str:
        """The prompt text for ``messages``; errors the template raises name the template's file."""
        if tools is not None and not all(isinstance(tool, dict) for tool in tools):
            raise TypeError("tools must be JSON-schema dicts (a function's schema, not the function itself)")
        if documents is not None and not all(isinstance(document, dict) for document in documents):
            raise TypeError("documents must be dicts with 'title' and 'text' keys")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise TypeError(f"message {index} is a {type(message).__name__}, not a dict with role and content")
        variables = {**special_tokens, **template_kwargs}  # keywords override special tokens, as in transformers
        try:
            return self._template.render(messages=[_with_reasoning_aliases(m) for m in messages], tools=tools,
                                         documents=documents, add_generation_prompt=add_generation_prompt,
                                         **variables)
        except jinja2.TemplateError as error:
            raise ValueError(f"the chat template in {self.origin} refused this conversation: {error}") from None


def find_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The chat template a checkpoint folder ships, or None when it has none (a base model's folder).

    ``chat_template.jinja`` wins over ``tokenizer_config.json``'s ``"chat_template"``, as in transformers;
    a list of named templates there gives the one named ``"default"``.
    """
    folder = Path(folder)
    template_file = folder / TEMPLATE_FILE
    if template_file.is_file():
        return ChatTemplate(template_file.read_text(encoding="utf-8"), origin=str(template_file))
    config_file = folder / TOKENIZER_CONFIG_FILE
    if not config_file.is_file():
        return None
    try:
        entry = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a JSON object: {error}") from None
    if entry is None:
        return None
    if isinstance(entry, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {item.get("name"): item.get("template") for item in entry if isinstance(item, dict)}
        if "default" not in named:
            raise ValueError(f"{config_file}'s chat_template lists {sorted(map(str, named))} but no 'default'")
        entry = named["default"]
    return ChatTemplate(entry, origin=f"{config_file} (chat_template)")


def _with_reasoning_aliases(message: dict) -> dict:
    # transformers passes a message's reasoning under every name templates read it by.
    reasoning = next((message[key] for key in _REASONING_KEYS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks the assistant's tokens for training masks; here
    it only renders its body (the mask itself is a training concern this package does not need)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; chat templates need the plain JSON text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return environment
