"""Sparse autoencoders and transcoders: a dictionary of features read off one activation.

    pre    = x @ W_enc + b_enc                  [..., d_sae]   (x minus b_dec first, if apply_b_dec_to_input)
    acts   = sigma(pre)                         [..., d_sae]   sparse: most entries are 0
    recons = acts @ W_dec + b_dec               [..., d_out]   (+ x @ W_skip.T for affine transcoders)

``sigma`` is the architecture:
  * ``jumprelu`` (Gemma Scope; Rajamanoharan et al., 2024): ``relu(pre) * (pre > threshold)``, one
    learned threshold per feature;
  * ``relu`` (SAELens calls it ``standard``; Bricken et al., 2023): ``relu(pre)``;
  * ``topk`` (Gao et al., 2024): keep the ``k`` largest pre-activations of each vector, relu them,
    zero the rest.

An SAE reads and rebuilds the same activation (``cfg.hook_name``, ``d_out == d_in``). A transcoder
reads the MLP's input (``blocks.L.ln2.hook_normalized``: after the pre-MLP norm, its gain applied)
and predicts the MLP's output (``cfg.hook_name_out = blocks.L.hook_mlp_out``): a sparse stand-in
for the MLP (Dunefsky et al., 2024; Gemma Scope 2).

The error term. Spliced into a model with ``use_error_term``, the module outputs
``recons + error`` where ``error = target - recons_clean`` is what the dictionary misses on this
input (``target`` is the activation itself for an SAE, the real MLP output for a transcoder) and
``recons_clean`` is the reconstruction with no hook inside the module editing anything. So the
model runs exactly as without the module, except for what you change inside it (ablate a feature
at ``hook_sae_acts_post``, patch ``hook_sae_error``...). As in SAELens, the error is computed
without gradient: gradients reach earlier layers through the features only.

Names follow SAELens (``encode``, ``decode``, ``cfg.hook_name``, ``cfg.d_in``, ``cfg.d_sae``,
``use_error_term``, ``hook_sae_input`` ... ``hook_sae_error``) so its users feel at home; its
parity is tested in ``tests/test_sae.py``.

Imports: torch and the hook layer only. The model is never imported here: splicing asks the root
module (``HookedModule.spliced``) for its hook points by name.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gemma_lab.hooks import HookedModule, HookPoint

if TYPE_CHECKING:
    from gemma_lab.hooks import HookSpec

#: The activation functions this module implements.
ARCHITECTURES = ("jumprelu", "relu", "topk")

_LAYER = re.compile(r"^blocks\.(\d+)\.")


class SAEConfigError(ValueError):
    """An SAE whose description or weights do not fit (each message names the field, tensor or site)."""


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is and where it sits; one comment per field."""

    d_in: int  # width of the activation it reads (n_heads * d_head for attn.hook_z, flattened)
    d_sae: int  # number of features (the dictionary's size)
    architecture: str = "jumprelu"  # "jumprelu", "relu" or "topk"
    hook_name: str = ""  # the hook point it reads (and, for an SAE, writes back)
    hook_name_out: str | None = None  # transcoders: the hook point it writes (blocks.L.hook_mlp_out)
    d_out: int | None = None  # width it writes; None: d_in (an SAE rebuilds its own input)
    k: int | None = None  # topk: features kept per vector
    apply_b_dec_to_input: bool = False  # subtract b_dec from x before encoding (SAELens' default; not Gemma Scope)
    affine_skip: bool = False  # transcoders: a linear skip path x @ W_skip.T added to the output
    dtype: str = "float32"  # parameter dtype
    model_name: str = ""  # the model it was trained on, for display and error messages
    source: str = ""  # file or folder it was loaded from, for error messages

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEConfigError(f"unknown SAE architecture {self.architecture!r}; "
                                 f"gemma_lab implements {', '.join(ARCHITECTURES)}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SAEConfigError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.architecture == "topk" and (self.k is None or not 0 < self.k <= self.d_sae):
            raise SAEConfigError(f"a topk SAE needs 0 < k <= d_sae={self.d_sae}, got k={self.k}")
        if self.is_transcoder and self.apply_b_dec_to_input:
            raise SAEConfigError("apply_b_dec_to_input makes no sense for a transcoder: b_dec lives in the output space")
        if self.affine_skip and not self.is_transcoder:
            raise SAEConfigError("affine_skip is a transcoder option; this config has no hook_name_out")

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None

    @property
    def width_out(self) -> int:
        return self.d_in if self.d_out is None else self.d_out

    @property
    def layer(self) -> int | None:
        """The block index in ``hook_name`` (None for ``hook_embed`` or an unnamed SAE)."""
        match = _LAYER.match(self.hook_name)
        return int(match.group(1)) if match else None

    def replace(self, **changes) -> "SAEConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


class SAE(HookedModule):
    """A sparse autoencoder: ``encode`` an activation into sparse features, ``decode`` it back."""

    def __init__(self, cfg: SAEConfig, use_error_term: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.use_error_term = use_error_term
        dtype = getattr(torch, cfg.dtype)
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.width_out
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        if cfg.affine_skip:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, dtype=dtype))  # SAELens' layout: [d_out, d_in]
        # Hook points in the order they fire.
        self.hook_sae_input = HookPoint()  # [..., d_in] what the SAE reads (hook_z: flattened over heads)
        self.hook_sae_acts_pre = HookPoint()  # [..., d_sae] pre-activations
        self.hook_sae_acts_post = HookPoint()  # [..., d_sae] feature activations
        self.hook_sae_recons = HookPoint()  # [..., d_out] the reconstruction (transcoder: the prediction)
        self.hook_sae_error = HookPoint()  # [..., d_out] target - clean reconstruction (use_error_term only)
        self.setup_hooks()

    # ---- the maths --------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of ``x [..., d_in]``."""
        x = self.hook_sae_input(x.to(self.W_enc.dtype))
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = self.hook_sae_acts_pre(x @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(self.activation(pre))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's sparse nonlinearity, applied to pre-activations ``[..., d_sae]``."""
        if self.cfg.architecture == "relu":
            return F.relu(pre)
        if self.cfg.architecture == "jumprelu":
            # A feature fires only above its threshold, and then with its full value (a jump, not a ramp).
            return F.relu(pre) * (pre > self.threshold).to(pre.dtype)
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))

    def decode(self, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction ``[..., d_out]`` from feature activations (``x``: the input, for affine skips)."""
        recons = acts @ self.W_dec + self.b_dec
        if self.cfg.affine_skip:
            if x is None:
                raise ValueError("this transcoder has an affine skip path: decode(acts, x) needs its input x")
            recons = recons + x.to(self.W_skip.dtype) @ self.W_skip.T
        return self.hook_sae_recons(recons)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``decode(encode(x))``; with ``use_error_term``, plus the error on ``target`` (default: ``x``).

        With the error term the output equals ``target`` bit for bit unless a hook inside the module
        changed something (see the module docstring).
        """
        recons = self.decode(self.encode(x), x)
        if not self.use_error_term:
            return recons
        if target is None:
            if self.cfg.is_transcoder:
                raise ValueError("a transcoder's error term needs the real MLP output: forward(x, target=mlp_out)")
            target = x
        target = target.to(recons.dtype)
        with torch.no_grad():
            clean = self.reconstruct_without_hooks(x)
            clean_error = target - clean
        error = self.hook_sae_error(clean_error)
        # Equal to recons + error, written so that it is exactly target when nothing inside was edited.
        return target.detach() + (recons - clean) + (error - clean_error)

    def reconstruct_without_hooks(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` with no hook firing (the clean reconstruction of the error term)."""
        xin = x.to(self.W_enc.dtype)
        pre = (xin - self.b_dec if self.cfg.apply_b_dec_to_input else xin) @ self.W_enc + self.b_enc
        recons = self.activation(pre) @ self.W_dec + self.b_dec
        if self.cfg.affine_skip:
            recons = recons + xin @ self.W_skip.T
        return recons

    # ---- splicing into a model --------------------------------------------------------------
    def splice_hooks(self, root: HookedModule) -> list["HookSpec"]:
        """The forward hooks that put this SAE inside ``root``'s forward pass (see ``HookedModule.spliced``)."""
        check_site(self.cfg, root, self.cfg.hook_name, self.cfg.d_in, "reads")
        return [(self.cfg.hook_name, _SpliceSAE(self))]

    @property
    def splice_prefix(self) -> str:
        """Its hook points are named ``{prefix}.hook_sae_acts_post`` etc. while spliced."""
        return self.cfg.hook_name_out or self.cfg.hook_name

    def extra_repr(self) -> str:
        cfg = self.cfg
        site = f"{cfg.hook_name} -> {cfg.hook_name_out}" if cfg.is_transcoder else cfg.hook_name
        k = f", k={cfg.k}" if cfg.k is not None else ""
        return f"{cfg.architecture}{k}, {site}, d_in={cfg.d_in}, d_sae={cfg.d_sae}, use_error_term={self.use_error_term}"


class Transcoder(SAE):
    """A sparse MLP replacement: reads the MLP's input, predicts its output, through sparse features."""

    def __init__(self, cfg: SAEConfig, use_error_term: bool = False) -> None:
        if not cfg.is_transcoder:
            raise SAEConfigError("a Transcoder needs cfg.hook_name_out (where it writes, e.g. blocks.L.hook_mlp_out)")
        super().__init__(cfg, use_error_term)

    def splice_hooks(self, root: HookedModule) -> list["HookSpec"]:
        check_site(self.cfg, root, self.cfg.hook_name, self.cfg.d_in, "reads")
        check_site(self.cfg, root, self.cfg.hook_name_out, self.cfg.width_out, "writes")
        splice = _SpliceTranscoder(self)
        return [(self.cfg.hook_name, splice.read_input), (self.cfg.hook_name_out, splice.replace_output)]


def make_sae(cfg: SAEConfig, use_error_term: bool = False) -> SAE:
    """An ``SAE`` or, when ``cfg`` names an output site, a ``Transcoder`` (zero weights)."""
    return (Transcoder if cfg.is_transcoder else SAE)(cfg, use_error_term)


# ---------------------------------------------------------------------------------------------
# Splicing: the hook functions, and the check that an SAE fits the site it is put at
# ---------------------------------------------------------------------------------------------


def site_width(root: HookedModule, hook_name: str) -> int | None:
    """Width an SAE at ``hook_name`` works on (d_model, or n_heads * d_head at ``attn.hook_z``), if known."""
    cfg = getattr(root, "cfg", None)
    if cfg is None:
        return None
    if hook_name.endswith("attn.hook_z"):
        return cfg.n_heads * cfg.d_head
    if hook_name.endswith("mlp.hook_post") or hook_name.endswith("mlp.hook_pre") or hook_name.endswith("mlp.hook_pre_linear"):
        layer = re.match(r"blocks\.(\d+)\.", hook_name)  # MLP widths can differ by layer (Gemma 4 E2B, MatFormer)
        return cfg.d_mlp_for(int(layer.group(1))) if layer and hasattr(cfg, "d_mlp_for") else cfg.d_mlp
    return cfg.d_model


def check_site(cfg: SAEConfig, root: HookedModule, hook_name: str, width: int, verb: str) -> None:
    """Raise ``SAEConfigError`` unless ``root`` has ``hook_name`` and its width is ``width``."""
    what = f"the SAE{' from ' + cfg.source if cfg.source else ''}"
    if not hook_name:
        raise SAEConfigError(f"{what} has no hook_name: pass hook_name= to load_sae or set cfg.hook_name")
    points = root.hook_dict
    if hook_name not in points:
        model_cfg = getattr(root, "cfg", None)
        layers = f" (the model has {model_cfg.n_layers} layers)" if model_cfg is not None else ""
        raise SAEConfigError(f"{what} {verb} {hook_name}, which this model does not have{layers}")
    expected = site_width(root, hook_name)
    if expected is not None and expected != width:
        trained = f" (trained on {cfg.model_name})" if cfg.model_name else ""
        name = getattr(getattr(root, "cfg", None), "name", "") or "this model"
        raise SAEConfigError(f"{what}{trained} {verb} width {width} at {hook_name}, but {name} has width "
                             f"{expected} there: it was made for another model")


def _flatten_heads(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "... head d_head -> ... (head d_head)")


class _SpliceSAE:
    """The hook at an SAE's site: replace the activation by the SAE's output."""

    def __init__(self, sae: SAE) -> None:
        self.sae = sae

    def __call__(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        heads = hook.name.endswith("attn.hook_z")
        x = _flatten_heads(activation) if heads else activation
        out = self.sae(x).to(activation.dtype)
        if heads:
            out = rearrange(out, "... (head d_head) -> ... head d_head", head=activation.shape[-2])
        return out


class _SpliceTranscoder:
    """The two hooks of a transcoder: remember the MLP's input, then replace the MLP's output."""

    def __init__(self, transcoder: Transcoder) -> None:
        self.transcoder = transcoder
        self.mlp_input: torch.Tensor | None = None

    def read_input(self, activation: torch.Tensor, hook: HookPoint) -> None:
        self.mlp_input = activation

    def replace_output(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if self.mlp_input is None:
            raise RuntimeError(f"{self.transcoder.cfg.hook_name} did not fire before {hook.name} in this pass")
        x, self.mlp_input = self.mlp_input, None
        return self.transcoder(x, target=activation).to(activation.dtype)
