"""gemma_lab: learn how Gemma works from the inside.

A readable from-scratch Gemma (1, 2 and 3) whose logits equal the reference implementation,
hooks on every activation, interpretability tools, widgets and notebooks.

    import gemma_lab
    model = gemma_lab.load_pretrained("tiny")          # the bundled tiny Gemma, or a checkpoint folder
    logits, cache = model.run_with_cache(tokens)

Importing the package loads the model code only; plotting and widgets load when first used.
"""

from gemma_lab.activation_cache import ActivationCache, act_name
from gemma_lab.config import PRESETS, GemmaConfig
from gemma_lab.factored_matrix import FactoredMatrix
from gemma_lab.generation import GenerationResult, StepRecord, decode_step, generate, prefill, stream
from gemma_lab.hooked_gemma import HookedGemma
from gemma_lab.hooks import HookPoint
from gemma_lab.kv_cache import KVCache
from gemma_lab.loading import CheckpointError, load_pretrained
from gemma_lab.model import Gemma, init_weights
from gemma_lab.sae import SAE, Transcoder, load_sae
from gemma_lab.sampling import SamplingParams, logits_to_probs, sample
from gemma_lab.tokenizer import GemmaTokenizer, load_tokenizer

__version__ = "0.1.0"

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
]
