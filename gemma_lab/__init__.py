"""gemma_lab: learn how Gemma works from the inside.

A readable from-scratch Gemma (1, 2, 3 and 4) whose logits equal the reference implementation,
hooks on every activation, interpretability tools, widgets and notebooks.

    import gemma_lab
    model = gemma_lab.load_pretrained("tiny")          # the bundled tiny Gemma, or a checkpoint folder
    logits, cache = model.run_with_cache(tokens)

Importing the package loads nothing heavy: each name's module (torch with it) loads when the name is
first used, plotting and widgets likewise.
"""

__version__ = "0.1.0"

# What `from gemma_lab import X` gives, and where X lives. The modules are imported when a name is
# first used (PEP 562), so that `import gemma_lab` and `gemma-lab --help` do not wait for torch.
_EXPORTS = {
    "gemma_lab.activation_cache": ("ActivationCache", "act_name"),
    "gemma_lab.config": ("PRESETS", "GemmaConfig"),
    "gemma_lab.factored_matrix": ("FactoredMatrix",),
    "gemma_lab.generation": ("GenerationResult", "StepRecord", "decode_step", "generate", "prefill", "stream"),
    "gemma_lab.hooked_gemma": ("HookedGemma",),
    "gemma_lab.hooks": ("HookPoint",),
    "gemma_lab.kv_cache": ("KVCache",),
    "gemma_lab.loading": ("CheckpointError", "load_pretrained"),
    "gemma_lab.model": ("Gemma", "init_weights"),
    "gemma_lab.sae": ("SAE", "Transcoder", "load_sae"),
    "gemma_lab.sampling": ("SamplingParams", "logits_to_probs", "sample"),
    "gemma_lab.tokenizer": ("GemmaTokenizer", "load_tokenizer"),
    "gemma_lab.tuned_lens": ("TunedLens", "train_tuned_lens"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'gemma_lab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "ActivationCache",
    "CheckpointError",
    "FactoredMatrix",
    "Gemma",
    "GemmaTokenizer",
    "GemmaConfig",
    "GenerationResult",
    "HookPoint",
    "HookedGemma",
    "KVCache",
    "PRESETS",
    "SAE",
    "SamplingParams",
    "StepRecord",
    "Transcoder",
    "TunedLens",
    "act_name",
    "decode_step",
    "generate",
    "init_weights",
    "load_pretrained",
    "load_sae",
    "load_tokenizer",
    "logits_to_probs",
    "prefill",
    "sample",
    "stream",
    "train_tuned_lens",
]
