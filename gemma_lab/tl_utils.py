"""TransformerLens's ``utils`` helpers that course code calls, for a ``HookedGemma``.

    from gemma_lab import tl_utils as utils          # in place of: from transformer_lens import utils
    utils.get_act_name("pattern", 3)                 # "blocks.3.attn.hook_pattern"
    utils.test_prompt("The capital of France is", " Paris", model)

Same names, arguments and conventions as TransformerLens (2.x), written here from their
documented behaviour. ``test_prompt`` prints what TransformerLens prints and also returns it
(ranks, logits, probabilities) so that code and tests can read the numbers.

Imports: torch and numpy only; the model is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

# TransformerLens's spellings of activation names -> the hook name's last part.
_NAME_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "scores": "attn_scores", "key": "k",
                 "query": "q", "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post",
                 "neurons": "post"}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN_NAMES = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores", "attn_scores_pre_softcap"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_NORM_NAMES = {"scale", "normalized", "inv_rms"}
_COMPACT = re.compile(r"^([a-z_]*[a-z])(\d+)([a-z]*)$")  # "pattern3", "resid_pre5", "q2a"


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name for a TransformerLens shorthand.

    ``("pattern", 3)`` -> ``blocks.3.attn.hook_pattern``; ``("scale", 3, "ln1")`` ->
    ``blocks.3.ln1.hook_scale``; ``("scale",)`` -> ``ln_final.hook_scale``; ``("q_input", 3)`` ->
    ``blocks.3.hook_q_input``; ``"resid_pre5"`` -> ``blocks.5.hook_resid_pre``. Full names pass through.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    compact = _COMPACT.match(name) if layer is None else None
    if compact is not None:
        name, layer, layer_type = compact.group(1), int(compact.group(2)), compact.group(3) or None
    name = _NAME_ALIASES.get(name, name)
    if layer_type is not None:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    if name in _NORM_NAMES:
        if layer is None:
            return f"ln_final.hook_{name}"
        if not layer_type:
            raise KeyError(f"{name!r} of layer {layer} needs the norm's name, e.g. ({name!r}, {layer}, 'ln1') "
                           "or 'ln2' (Gemma 2/3 also 'ln1_post', 'ln2_post')")
        where = f"attn.{layer_type}" if layer_type in ("q_norm", "k_norm") else layer_type
        return f"blocks.{layer}.{where}.hook_{name}"
    if layer is None:
        if name in _ATTN_NAMES or name in _MLP_NAMES:
            raise KeyError(f"activation {name!r} needs a layer index, e.g. get_act_name({name!r}, 0)")
        return f"hook_{name}"
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    prefix = f"blocks.{layer}." + (f"{layer_type}." if layer_type else "")
    return f"{prefix}hook_{name}"


def to_numpy(tensor) -> np.ndarray:
    """A tensor (any device, with or without grad), list or number as a numpy array."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().cpu().numpy()
    return np.array(tensor)


def get_device() -> torch.device:
    """CUDA if available, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_corner(tensor, n: int = 3):
    """The first ``n`` entries along every axis (a FactoredMatrix's corner is multiplied out)."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def lm_cross_entropy_loss(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          per_token: bool = False) -> torch.Tensor:
    """Next-token cross-entropy: mean of ``-log p(tokens[t+1] | tokens[:t+1])``.

    ``per_token``: ``[batch, pos - 1]`` instead of the mean. With ``attention_mask``, a position
    counts only when it and the next token are both real (padding is left out of the mean and
    is 0 in the per-token loss). Computed in float32 whatever the logits' dtype.
    """
    if tokens.ndim == 1:
        tokens = tokens[None]
    if logits.ndim == 2:
        logits = logits[None]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    next_log_probs = log_probs[:, :-1].gather(-1, tokens[:, 1:, None].to(log_probs.device))[..., 0]
    if attention_mask is None:
        n_tokens = next_log_probs.numel()
    else:
        mask = attention_mask.to(next_log_probs.device).bool()
        if mask.ndim == 1:
            mask = mask[None]
        both_real = mask[:, 1:] & mask[:, :-1]
        next_log_probs = next_log_probs * both_real
        n_tokens = int(both_real.sum())
    if per_token:
        return -next_log_probs
    return -next_log_probs.sum() / n_tokens


@dataclass
class PromptTest:
    """What ``test_prompt`` printed: per answer token, its rank, logit, probability and the top tokens."""

    prompt_str_tokens: list[str]
    answer_str_tokens: list[str]
    ranks: list[int] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    top_tokens: list[list[tuple[str, float, float]]] = field(default_factory=list)  # (token, logit, prob)


def test_prompt(prompt: str, answer: str | list[str], model, prepend_space_to_answer: bool = True,
                print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10) -> PromptTest:
    """How well does ``model`` predict ``answer`` after ``prompt``? Prints rank, logit and
    probability of each answer token and the ``top_k`` tokens at its position (one forward pass
    on prompt + answer), and returns the same numbers as a ``PromptTest``.

    ``answer`` may be a list: each is tested separately. ``model`` is a ``HookedGemma``.
    """
    if isinstance(answer, list):
        return [test_prompt(prompt, a, model, prepend_space_to_answer, print_details, prepend_bos, top_k)
                for a in answer]
    if prepend_space_to_answer and not answer.startswith(" "):
        answer = " " + answer
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_tokens = model.to_tokens(answer, prepend_bos=False)
    tokens = torch.cat([prompt_tokens, answer_tokens], dim=1)
    result = PromptTest(model.to_str_tokens(prompt_tokens[0]), model.to_str_tokens(answer_tokens[0]))
    with torch.no_grad():
        logits = model(tokens)[0].float()
    probs = logits.softmax(dim=-1)
    n_prompt = prompt_tokens.shape[1]
    lines = [f"Tokenized prompt: {result.prompt_str_tokens}", f"Tokenized answer: {result.answer_str_tokens}"]
    for i, token in enumerate(answer_tokens[0].tolist()):
        at = n_prompt - 1 + i  # the position whose logits predict this answer token
        rank = int((logits[at] > logits[at, token]).sum())
        result.ranks.append(rank)
        result.logits.append(float(logits[at, token]))
        result.probs.append(float(probs[at, token]))
        top = logits[at].topk(top_k).indices.tolist()
        result.top_tokens.append([(model.to_string([t]), float(logits[at, t]), float(probs[at, t])) for t in top])
        lines.append(f"Performance on answer token:\nRank: {rank: <8} Logit: {logits[at, token]:5.2f} "
                     f"Prob: {probs[at, token]:6.2%} Token: |{model.to_string([token])}|")
        for k, (text, logit, prob) in enumerate(result.top_tokens[-1]):
            lines.append(f"Top {k}th token. Logit: {logit:5.2f} Prob: {prob:6.2%} Token: |{text}|")
    lines.append(f"Ranks of the answer tokens: {list(zip(result.answer_str_tokens, result.ranks))}")
    if print_details:
        print("\n".join(lines))
    return result


test_prompt.__test__ = False  # a helper named like a test: pytest must not collect it where it is imported
