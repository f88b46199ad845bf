"""Generation: the loop that turns a prompt into new tokens, one forward pass per token.

Role. The model maps tokens to logits and nothing else; the KV cache (``kv_cache.py``) remembers
keys and values; sampling (``sampling.py``) turns logits into a token. This module wires them
together as plain functions, in the spirit of gpt-fast's ``generate.py``:

    logits, cache = prefill(model, prompt_tokens, max_len=max_len)    # step 0: the whole prompt
    token = sample(logits, ...)
    logits = decode_step(model, token, cache)                          # steps 1, 2, ...: one token each

``generate`` runs that loop to the end and returns a ``GenerationResult``; ``stream`` yields one
``StepRecord`` per step (the token, its text, the top candidates with their probabilities and,
on request, activations captured by hooks), which is what the step-by-step widgets draw.

Conventions.
  * Step 0 is the forward pass over the prompt; it chooses the first new token. Step ``s`` feeds
    the token chosen at step ``s - 1``. ``model.run_context.step`` holds the step while a pass
    runs (hooks read it as ``hook.step``) and is reset to None when generation ends.
  * A batch of prompts is left-padded; the model gives every padded row the logits of the same
    row unpadded, and each row samples from its own generator, so a row's tokens do not depend
    on the other rows.
  * Stopping: by default at ``<eos>`` and ``<end_of_turn>``. The stop token is part of
    ``token_ids`` (as in transformers' ``generate``) but not of ``text``; a stop string ends
    the text just before it.
  * Everything runs under ``torch.no_grad()``.

Must not import: plotting or widgets (they build on this module, never the reverse). The
tokenizer is passed in, never loaded here.
"""

from __future__ import annotations

import numbers
import re
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

import torch

from gemma_lab.activation_cache import ActivationCache
from gemma_lab.hooks import HookPoint, NameFilter
from gemma_lab.kv_cache import KVCache
from gemma_lab.sampling import SamplingParams, filter_logits, logits_to_probs, make_generator, sample
from gemma_lab.tokenizer import readable_piece

# What a prompt may be: text, token ids, or a batch of either.
Prompt = Union[str, Sequence[int], torch.Tensor, Sequence[Union[str, Sequence[int]]]]

#: Tokens a default prefill cache leaves room for after the prompt (pass an int to choose).
DEFAULT_PREFILL_ROOM = 256
#: ``<end_of_turn>`` by family, for when no tokenizer is given (reference §4.2: Gemma 3 moved it down by one).
#: Gemma 4 (``<turn|>``) is left out: its id is taken from its tokenizer, never assumed.
END_OF_TURN_ID = {1: 107, 2: 107, 3: 106}
#: ``<eos>`` in every Gemma vocabulary.
EOS_ID = 1
#: The id left padding uses (``<pad>``); padded positions are masked, so the value never matters.
PAD_ID = 0

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # byte-fallback vocabulary pieces

# Why a sequence ended.
STOP_TOKEN, STOP_STRING, MAX_NEW_TOKENS = "stop_token", "stop_string", "max_new_tokens"


# ---------------------------------------------------------------------------------------------
# Stepping: prefill and decode_step
# ---------------------------------------------------------------------------------------------


def prefill(model, tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
            kv_cache: KVCache | None = None, max_len: int | None = None) -> tuple[torch.Tensor, KVCache]:
    """Run the prompt ``tokens [batch, pos]`` through the model, filling a KV cache.

    Returns the logits at the last position of each row, ``[batch, vocab]``, and the cache.
    With left padding (``attention_mask`` 0 on the left), the last column is every row's last
    real token. ``kv_cache``: an existing ``KVCache`` to continue; without one, a new cache holding
    ``max_len`` positions (default: the prompt plus ``DEFAULT_PREFILL_ROOM`` more tokens, capped at
    the model's ``max_seq_len``).
    """
    tokens = torch.as_tensor(tokens, device=model.device)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask, device=model.device)
        if attention_mask.ndim == 1:
            attention_mask = attention_mask[None]
    if kv_cache is not None and not isinstance(kv_cache, KVCache):
        raise TypeError(f"kv_cache must be a KVCache (pass a size as max_len=), got {type(kv_cache).__name__}")
    if kv_cache is not None and max_len is not None:
        raise ValueError("pass either kv_cache (an existing cache) or max_len (the size of a new one), not both")
    if kv_cache is None:
        if max_len is None:
            max_len = min(model.cfg.max_seq_len, tokens.shape[-1] + DEFAULT_PREFILL_ROOM)
        kv_cache = KVCache.for_model(model, tokens.shape[0], int(max_len))
    with torch.no_grad():
        logits = model(tokens, attention_mask=attention_mask, kv_cache=kv_cache, last_position_only=True)
    return logits[:, -1], kv_cache


def decode_step(model, token_ids: torch.Tensor | Sequence[int] | int, cache: KVCache, *,
                check_ids: bool = True, compile: bool | str = False) -> torch.Tensor:
    """Feed one new token per row (``[batch]`` or ``[batch, 1]``); return the next logits ``[batch, vocab]``.

    Positions continue from the cache, so a left-padded row carries on from its own length.
    check_ids: False skips the vocabulary range check (a host sync) for ids the caller knows are
    valid, as the generation loop does for the tokens its sampler chose.
    compile: run the step through ``torch.compile`` (True: its default compiler, inductor, which
        needs a C++ compiler; a string names another backend, e.g. ``"eager"`` to trace only).
        The compiled step has fixed shapes: it writes the token at its slot and attends to the
        whole cache with empty slots masked, so one graph serves every step. It is used only when
        no hook is attached (hooks always see the eager pass) and the model sits on one device.
        Where compiling fails, the step runs eagerly, with a one-line warning the first time.
    """
    token_ids = torch.as_tensor(token_ids, device=model.device).reshape(-1, 1)
    if token_ids.shape[0] != cache.batch_size:
        raise ValueError(f"decode_step got {token_ids.shape[0]} token ids for a cache of batch {cache.batch_size}")
    with torch.no_grad():
        backend = _backend(compile)
        compiled = _compiled_step(model, backend) if backend else None
        if compiled is not None and not model.hooks_attached():
            logits = _fixed_shape_step(model, backend, compiled, token_ids, cache, check_ids)
            if logits is not None:
                return logits
        return model(token_ids, kv_cache=cache, check_ids=check_ids)[:, -1]


def _one_token_forward(model, token_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """The pass ``torch.compile`` traces: one checked token per row, the cache in fixed-shape mode."""
    return model(token_ids, kv_cache=cache, check_ids=False)[:, -1]


# model -> {backend: the compiled step, or None where compiling is impossible or failed}
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _backend(compile: bool | str) -> str | None:
    """The torch.compile backend ``compile=`` asks for (None: do not compile)."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile:
        return compile
    raise TypeError(f"compile must be True, False or a torch.compile backend name, got {compile!r}")


def _compiled_step(model, backend: str):
    per_model = _COMPILED.setdefault(model, {})
    if backend not in per_model:
        reason = None
        if getattr(model, "block_devices", None) is not None or getattr(model, "tp_size", 1) > 1:
            reason = "the model is placed across devices or ranks"
        elif not hasattr(torch, "compile"):
            reason = f"torch {torch.__version__} has no torch.compile"
        if reason:
            _compile_failed(model, backend, reason)
        else:
            per_model[backend] = torch.compile(_one_token_forward, backend=backend, fullgraph=True)
    return per_model[backend]


def _compile_failed(model, backend: str, reason: str) -> None:
    _COMPILED.setdefault(model, {})[backend] = None
    warnings.warn(f"compile={backend!r}: decoding without torch.compile ({reason})", RuntimeWarning, stacklevel=4)


def _fixed_shape_step(model, backend: str, compiled, token_ids: torch.Tensor, cache: KVCache, check_ids: bool):
    """One compiled decode step; None when compiling failed (the caller then runs the eager step)."""
    token_ids = model._check_tokens(token_ids, check_ids=check_ids)  # the range check reads the ids: not traced
    cache.check_room(1)
    # The slot as a tensor: a Python int would be baked into the graph, and each step would recompile.
    cache.write_index = torch.tensor(cache.length, device=cache.seen.device)
    try:
        logits = compiled(model, token_ids, cache)
    except Exception as error:  # no C++ compiler, an op the compiler cannot handle, ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        _compile_failed(model, backend, f"{type(error).__name__}: {first_line[:200]}")
        return None
    finally:
        cache.write_index = None
    cache.length += 1
    return logits


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    """What ``generate`` produced: one sequence, or lists with one entry per row of a batch."""

    token_ids: list[int] | list[list[int]]  # the new tokens (a stop token included)
    prompt_ids: list[int] | list[list[int]]  # the prompt as fed to the model (unpadded, <bos> included)
    text: str | list[str] | None  # the new text up to any stop (None without a tokenizer)
    stop_reason: str | list[str]  # "stop_token", "stop_string" or "max_new_tokens"
    batched: bool = False  # True when the prompt was a batch (then every field above is a list)


@dataclass
class Candidate:
    """One of the most likely next tokens at a step."""

    token_id: int
    prob: float  # after the sampling filters: what the token was drawn from (greedy: 1 or 0)
    model_prob: float  # the model's own distribution: softmax of the raw logits
    piece: str | None = None  # readable vocabulary piece (with a tokenizer)


@dataclass
class StepRecord:
    """One step of ``stream``: the token chosen and what led to it."""

    step: int  # 0 = the forward pass over the prompt
    token_id: int  # the token chosen at this step
    position: int  # the absolute position this token will occupy
    text: str | None  # the text this step adds (may be "" while a character or stop string is incomplete)
    candidates: list[Candidate]  # the top candidates, most likely first
    stop_reason: str | None = None  # set on the last record
    # Activations named in names_filter from this step's forward pass, [batch=1, pos, ...];
    # ``record.activations["pattern", 0]`` shorthand works. None when nothing was requested.
    activations: ActivationCache | None = None
    positions: torch.Tensor | None = None  # [pos] absolute positions of the tokens in this pass (hook.positions)
    # layer -> [k_pos] absolute positions of the keys this pass attended to, oldest first (the
    # k_pos axis of attention scores/patterns; a sliding-window layer keeps only the window).
    key_positions: dict[int, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# generate and stream
# ---------------------------------------------------------------------------------------------


def generate(model, prompt: Prompt, *, tokenizer=None, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None, seed: int | Sequence[int] | None = None,
             stop: Sequence[int | str] | int | str | None = None,
             attention_mask: torch.Tensor | None = None, compile: bool | str = False) -> GenerationResult:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens.

    prompt: text (needs ``tokenizer``; ``<bos>`` is prepended unless the text starts with it),
        token ids (a list or 1-D tensor), or a batch: a list of texts / id lists, or a 2-D tensor
        (with ``attention_mask`` if it is padded). Batches are left-padded; each row gives what
        it would give alone.
    temperature, top_k, top_p, min_p, repetition_penalty: see ``sampling.SamplingParams``;
        the default temperature 0 is greedy decoding.
    seed: makes sampling reproducible; one int for every row, or one per row. Without it,
        sampling uses torch's global random state.
    stop: token ids and/or strings that end a sequence. Default: ``<eos>`` and ``<end_of_turn>``
        (from the tokenizer, else ids 1 and the family's end-of-turn id). ``stop=[]``: never stop early.
    compile: decode through ``torch.compile`` (see ``decode_step``): opt-in, since compiling takes
        tens of seconds on a CPU and, there, decoding is bound by the matrix-vector products
        (docs/performance.md). The prompt pass is never compiled; hooks always see the eager pass.
    """
    run = _Run(model, prompt, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
               top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed,
               stop=stop, attention_mask=attention_mask, compile=compile)
    for _ in run.steps():
        pass
    return run.result()


def stream(model, prompt: Prompt, *, tokenizer=None, max_new_tokens: int = 64, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           repetition_penalty: float | None = None, seed: int | None = None,
           stop: Sequence[int | str] | int | str | None = None, attention_mask: torch.Tensor | None = None,
           top_k_candidates: int = 5, names_filter: NameFilter = None) -> Iterator[StepRecord]:
    """Like ``generate`` for one prompt, but yields a ``StepRecord`` after every step.

    top_k_candidates: how many of the most likely tokens each record lists (0 for none).
    names_filter: hook names (a name, a list, or a predicate) whose activations each record
        carries, captured by hooks during that step's forward pass. The hooks are attached for
        each step's forward pass only, never while a record is being handed out.
    Joining every record's ``text`` gives ``generate(...).text``.
    """
    if not isinstance(top_k_candidates, numbers.Integral) or isinstance(top_k_candidates, bool) \
            or top_k_candidates < 0:
        raise ValueError(f"top_k_candidates must be an integer >= 0, got {top_k_candidates!r}")
    run = _Run(model, prompt, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
               top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed,
               stop=stop, attention_mask=attention_mask)
    if run.batched and len(run.rows) != 1:
        raise ValueError(f"stream takes one prompt, got a batch of {len(run.rows)}; use generate for batches")
    names = model.resolve_hook_names(names_filter) if names_filter is not None else []
    # Arguments are checked above, when stream() is called; the records come from a generator.
    return _records(run, names, top_k_candidates)


def _records(run: "_Run", names: list[str], top_k_candidates: int) -> Iterator[StepRecord]:
    model, prompt_len = run.model, len(run.rows[0])
    captured: dict[str, torch.Tensor] = {}
    pass_positions: list[torch.Tensor] = []

    def capture(activation: torch.Tensor, hook: HookPoint) -> None:
        captured[hook.name] = activation.detach()
        if not pass_positions and hook.positions is not None:
            pass_positions.append(hook.positions[0].clone())

    steps = run.steps()
    while True:
        # The capture hooks are attached for one step's forward pass only, and detached before the
        # record is yielded: a suspended (or abandoned) stream never fires on someone else's pass.
        with model.hooks(fwd_hooks=[(name, capture) for name in names]):
            try:
                step, logits = next(steps)
            except StopIteration:
                return
        record = StepRecord(
            step=step, token_id=run.generated[0][-1], position=prompt_len + step, text=run.new_text(0),
            candidates=run.candidates(logits[0], 0, top_k_candidates), stop_reason=run.stop_reasons[0],
        )
        if names:
            record.activations = ActivationCache(dict(captured), model)
            record.positions = pass_positions[0] if pass_positions else None
            record.key_positions = _key_positions(run.cache, step, prompt_len)
        captured.clear()
        pass_positions.clear()
        yield record


def default_stop_ids(model, tokenizer=None) -> list[int]:
    """``<eos>`` and the end-of-turn token (``<end_of_turn>``; ``<turn|>`` on Gemma 4): from the tokenizer,
    else by the model's family (if in its vocab; Gemma 4 without a tokenizer stops at ``<eos>`` only)."""
    if tokenizer is not None:
        ids = [tokenizer.eos_id, tokenizer.end_of_turn_id]
    else:
        ids = [EOS_ID, END_OF_TURN_ID.get(model.cfg.family)]
    return [i for i in dict.fromkeys(ids) if i is not None and 0 <= i < model.cfg.vocab_size]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of different lengths as ``tokens [batch, pos]`` and ``attention_mask`` (0 = padding), padded on the left."""
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            tokens[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row):] = 1
    return tokens, mask


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class _Run:
    """One generation: checked arguments, per-row state, and the step loop."""

    def __init__(self, model, prompt: Prompt, *, tokenizer, max_new_tokens, temperature, top_k, top_p, min_p,
                 repetition_penalty, seed, stop, attention_mask, compile=False) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.backend = _backend(compile)  # checked here, when generate() is called
        self.params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        if not isinstance(max_new_tokens, numbers.Integral) or isinstance(max_new_tokens, bool) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        self.max_new_tokens = int(max_new_tokens)
        self.rows, self.batched = _prompt_rows(prompt, tokenizer, attention_mask)
        longest = max(len(row) for row in self.rows)
        vocab = model.cfg.vocab_size
        for row in self.rows:
            bad = [t for t in row if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary (0 to {vocab - 1})")
        if longest + self.max_new_tokens > model.cfg.max_seq_len:
            raise ValueError(
                f"prompt ({longest} tokens) + max_new_tokens ({self.max_new_tokens}) = "
                f"{longest + self.max_new_tokens} exceeds the model's max_seq_len of {model.cfg.max_seq_len}"
            )
        self.stop_ids, self.stop_strings = _split_stop(stop, model, tokenizer)
        self.generators = self._generators(seed)
        self.generated: list[list[int]] = [[] for _ in self.rows]
        self.stop_reasons: list[str | None] = [None] * len(self.rows)
        self.texts = [_TextTracker(tokenizer, self.stop_strings) if tokenizer is not None else None
                      for _ in self.rows]
        self.cache: KVCache | None = None

    def _generators(self, seed) -> list[torch.Generator | None]:
        if seed is None:
            return [None] * len(self.rows)
        if isinstance(seed, numbers.Integral):
            seeds = [seed] * len(self.rows)
        elif isinstance(seed, (list, tuple)):
            seeds = list(seed)
        else:
            raise TypeError(f"seed must be an integer, or a list of integers (one per prompt), got {seed!r}")
        if len(seeds) != len(self.rows):
            raise ValueError(f"seed has {len(seeds)} entries for {len(self.rows)} prompts")
        return [make_generator(s, self.model.device) for s in seeds]

    def steps(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Run the loop; after each step yield (step, logits [batch, vocab] that chose its tokens)."""
        if self.max_new_tokens == 0:
            self.stop_reasons = [MAX_NEW_TOKENS] * len(self.rows)
            return
        model = self.model
        tokens, mask = left_pad(self.rows)
        try:
            with torch.no_grad():
                model.run_context.step = 0
                logits, self.cache = prefill(model, tokens, attention_mask=mask,
                                             max_len=tokens.shape[1] + self.max_new_tokens)
                for step in range(self.max_new_tokens):
                    if step > 0:
                        model.run_context.step = step
                        last = [row[-1] for row in self.generated]
                        # The ids come from the sampler, so they are in the vocabulary: no check per step.
                        logits = decode_step(model, last, self.cache, check_ids=False, compile=self.backend or False)
                    self._choose(logits, last_step=step == self.max_new_tokens - 1)
                    model.run_context.step = None  # no stale step for other passes while suspended
                    yield step, logits
                    if all(reason is not None for reason in self.stop_reasons):
                        break
        finally:
            model.run_context.step = None

    def _choose(self, logits: torch.Tensor, last_step: bool) -> None:
        """Pick the next token of every unfinished row and decide whether the row stops."""
        for i, row in enumerate(self.generated):
            if self.stop_reasons[i] is not None:
                continue
            token = int(sample(logits[i], **self._sampling_kwargs(i), generator=self.generators[i]))
            row.append(token)
            if token in self.stop_ids:
                self.stop_reasons[i] = STOP_TOKEN
            elif self.texts[i] is not None and self.texts[i].add(token):
                self.stop_reasons[i] = STOP_STRING
            elif last_step:
                self.stop_reasons[i] = MAX_NEW_TOKENS
            if self.texts[i] is not None and self.stop_reasons[i] is not None:
                self.texts[i].finish()

    def _sampling_kwargs(self, row: int) -> dict:
        params = self.params
        previous = None
        if params.repetition_penalty not in (None, 1):
            previous = torch.tensor(self.rows[row] + self.generated[row], device=self.model.device)
        return dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
                    repetition_penalty=params.repetition_penalty, previous_tokens=previous)

    def new_text(self, row: int) -> str | None:
        return self.texts[row].take() if self.texts[row] is not None else None

    def candidates(self, logits: torch.Tensor, row: int, k: int) -> list[Candidate]:
        """The k most likely tokens of one row, ranked as the sampling filters rank them."""
        if k == 0:
            return []
        kwargs = self._sampling_kwargs(row)
        # The filters after the repetition penalty all keep a top slice of the penalised logits,
        # so ranking by those logits ranks by the filtered probabilities too (greedy included).
        previous = kwargs["previous_tokens"]
        if previous is not None:  # rank with the tokens seen before this step's choice
            previous = previous[:-1]
        penalised = filter_logits(logits, repetition_penalty=kwargs["repetition_penalty"], previous_tokens=previous)
        kwargs["previous_tokens"] = previous
        probs = logits_to_probs(logits, **kwargs)
        model_probs = logits.float().softmax(dim=-1)
        top = torch.topk(penalised, min(k, penalised.shape[-1])).indices.tolist()
        return [Candidate(t, float(probs[t]), float(model_probs[t]), self._piece(t)) for t in top]

    def _piece(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        return readable_piece(self.tokenizer.id_to_piece(token_id))

    def result(self) -> GenerationResult:
        texts = None
        if self.tokenizer is not None:
            texts = [tracker.text for tracker in self.texts]
        if self.batched:
            return GenerationResult(self.generated, self.rows, texts, list(self.stop_reasons), batched=True)
        return GenerationResult(self.generated[0], self.rows[0], texts[0] if texts else None,
                                self.stop_reasons[0])


def _key_positions(cache: KVCache, step: int, prompt_len: int) -> dict[int, torch.Tensor]:
    """layer -> positions of the keys one (unpadded) sequence attended to at ``step``.

    The prompt pass attends to the prompt itself; a later pass to every token so far, or on a
    sliding-window layer to the last ``window`` of them (the cache hands them over oldest first).
    """
    n = prompt_len + step  # tokens in the cache once this step's pass has run
    if step == 0:
        return {layer: torch.arange(n) for layer in range(cache.config.n_layers)}
    return {layer: torch.arange(max(0, n - cache.capacity[layer]), n) for layer in range(cache.config.n_layers)}


# ---------------------------------------------------------------------------------------------
# Prompts and stop rules
# ---------------------------------------------------------------------------------------------


def _prompt_rows(prompt: Prompt, tokenizer, attention_mask) -> tuple[list[list[int]], bool]:
    """(one id list per row, whether the prompt was a batch)."""
    if isinstance(prompt, torch.Tensor):
        if prompt.is_floating_point() or prompt.dtype == torch.bool:
            raise ValueError(f"prompt tensor must hold integer token ids, got dtype {prompt.dtype}")
        if prompt.ndim not in (1, 2):
            raise ValueError(f"prompt tensor must be [pos] or [batch, pos], got shape {tuple(prompt.shape)}")
        batched = prompt.ndim == 2
        ids = prompt if batched else prompt[None]
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask).reshape(ids.shape).bool()
            rows = [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
        else:
            rows = ids.tolist()
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a 2-D tensor prompt; lists of prompts are padded for you")
        if isinstance(prompt, str) or _is_id_list(prompt):
            rows, batched = [_one_prompt(prompt, tokenizer)], False
        elif isinstance(prompt, Sequence) and len(prompt) > 0:
            rows, batched = [_one_prompt(p, tokenizer, index=i) for i, p in enumerate(prompt)], True
        elif isinstance(prompt, Sequence):
            raise ValueError("the prompt is empty (an empty list); give text or at least one token id")
        else:
            raise TypeError(f"prompt must be text, token ids or a list of prompts, got {type(prompt).__name__}")
    for i, row in enumerate(rows):
        if not row:
            where = f" (row {i})" if batched else ""
            raise ValueError(f"the prompt{where} is empty: give at least one token (usually <bos>)")
    if not rows:
        raise ValueError("the prompt is an empty batch")
    return rows, batched


def _is_id_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in value)


def _one_prompt(prompt, tokenizer, index: int | None = None) -> list[int]:
    where = f" (prompt {index})" if index is not None else ""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"a text prompt{where} needs a tokenizer: pass tokenizer=, or give token ids")
        if prompt == "":
            raise ValueError(f"the prompt{where} is empty text; to start from <bos> alone pass [tokenizer.bos_id]")
        # A rendered chat template already begins with "<bos>": do not add a second one.
        return tokenizer.encode(prompt, add_bos=not prompt.startswith("<bos>"))
    if isinstance(prompt, torch.Tensor):
        if prompt.ndim != 1:
            raise ValueError(f"each prompt in a list must be 1-D token ids, got shape {tuple(prompt.shape)}{where}")
        return prompt.tolist()
    if isinstance(prompt, Sequence) and all(isinstance(t, numbers.Integral) and not isinstance(t, bool)
                                            for t in prompt):
        return [int(t) for t in prompt]
    raise TypeError(f"prompt{where} must be text or a list of token ids, got {type(prompt).__name__}")


def _split_stop(stop, model, tokenizer) -> tuple[set[int], list[str]]:
    """(stop token ids, stop strings) from the ``stop`` argument."""
    if stop is None:
        return set(default_stop_ids(model, tokenizer)), []
    if isinstance(stop, (str, numbers.Integral)):
        stop = [stop]
    ids, strings = set(), []
    for item in stop:
        if isinstance(item, str):
            if not item:
                raise ValueError("stop strings must not be empty")
            if tokenizer is None:
                raise ValueError(f"stop string {item!r} needs a tokenizer (or give stop token ids)")
            strings.append(item)
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            if not 0 <= item < model.cfg.vocab_size:
                raise ValueError(f"stop token id {item} is outside the vocabulary (0 to {model.cfg.vocab_size - 1})")
            ids.add(int(item))
        else:
            raise TypeError(f"stop entries must be token ids or strings, got {item!r}")
    return ids, strings


class _TextTracker:
    """The text of one row as tokens arrive: finds stop strings and hands out text only once it is final.

    Byte-fallback pieces (``<0xE7>``...) decode together with the bytes next to them: a run that is
    not (yet) valid UTF-8 reads as one "\ufffd" per byte, and can change when the next byte arrives.
    So text is held back while it ends in such a run, or in the beginning of a stop string.
    """

    def __init__(self, tokenizer, stop_strings: list[str]) -> None:
        self.tokenizer, self.stop_strings = tokenizer, stop_strings
        self.ids: list[int] = []
        self.text = ""  # the text so far (final once finish() ran)
        self.stable = 0  # characters that no later token can change
        self.handed_out = 0  # characters already returned by take()
        self.final = False

    def add(self, token_id: int) -> bool:
        """Append a token; True when the text now contains a stop string (the text is cut before it)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        if not _BYTE_PIECE.fullmatch(self.tokenizer.id_to_piece(token_id)):
            self.stable = len(self.text)  # a whole piece ends any run of bytes before it
        hits = [i for i in (self.text.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def finish(self) -> None:
        self.final = True

    def take(self) -> str:
        """The text that has become final since the last call."""
        end = len(self.text) if self.final else self._safe_end()
        end = max(end, self.handed_out)
        piece = self.text[self.handed_out:end]
        self.handed_out = end
        return piece

    def _safe_end(self) -> int:
        end = min(self.stable, len(self.text))
        held = 0  # the longest tail that could still grow into a stop string
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, end), held, -1):
                if self.text.endswith(s[:n], 0, end):
                    held = n
                    break
        return end - held
