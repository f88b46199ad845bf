"""The table of hook points in ``docs/hooks.md``, generated from ``gemma_lab.hook_points`` and the model.

    python -m tools.hook_table                          # print the table (markdown)
    python -m tools.hook_table --update docs/hooks.md   # rewrite the table between its markers

``gemma_lab.hook_points.HOOKS`` describes every hook point once (name, axes, meaning). Which
families have it is read off small models of each family, so the table cannot drift from the
model; ``tests/test_hooks.py`` checks that every name has an entry and that every shape matches
real activations of Gemma 1, 2 and 3 (``tests/test_gemma4.py`` does the same for Gemma 4, whose
layers differ in width and hook points).

A developer tool (run from the repository root), not part of the installed package. Imports the
config, the model (on the meta device: no weights are made) and the hook-point table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gemma_lab.config import GemmaConfig
from gemma_lab.hook_points import HOOKS, generic_name, shape_string
from gemma_lab.model import Gemma

# A small model of each family: the same hook points as the published sizes.
FAMILY_PRESETS = {1: "test-gemma", 2: "test-gemma2", 3: "test-gemma3", "3n": "test-gemma3n", 4: "test-gemma4"}

# Markers around the generated table in docs/hooks.md.
BEGIN, END = "<!-- hook-table:begin (python -m tools.hook_table --update docs/hooks.md) -->", "<!-- hook-table:end -->"

def family_hook_names(family: int) -> list[str]:
    """The hook names of a Gemma ``family`` model, layer written ``{layer}``, in the order they fire."""
    with torch.device("meta"):
        model = Gemma(GemmaConfig.from_preset(FAMILY_PRESETS[family]))
    order: list[str] = []
    previous = None
    for name in map(generic_name, model.hook_names()):
        if name not in order:  # a point first seen on a later layer (Gemma 4's shared KV) goes after its predecessor
            order.insert(order.index(previous) + 1 if previous in order else len(order), name)
        previous = name
    return order


def axis_sizes(cfg: GemmaConfig, batch: int, pos: int, layer: int = 0) -> dict[str, int]:
    """Length of every axis name for a run of ``tokens [batch, pos]`` without a KV cache, on ``layer``."""
    return dict(batch=batch, pos=pos, q_pos=pos, k_pos=pos, d_model=cfg.d_model, head=cfg.n_heads,
                kv_head=cfg.n_kv_heads_for(layer), d_head=cfg.d_head_for(layer), d_mlp=cfg.d_mlp_for(layer),
                vocab=cfg.vocab_size, layer=cfg.n_layers, d_per_layer=cfg.d_per_layer, expert=cfg.n_experts,
                top_k=cfg.n_experts_active, stream=cfg.altup_num_inputs)


def expected_shape(axes: tuple[str, ...], sizes: dict[str, int]) -> tuple[int, ...]:
    """``("batch", "pos", "1")`` -> ``(batch, pos, 1)`` with the lengths of ``sizes``."""
    return tuple(int(axis) if axis.isdigit() else sizes[axis] for axis in axes)


def markdown_table() -> str:
    """The table: name, shape, families that have it, what it is."""
    by_family = {family: set(family_hook_names(family)) for family in FAMILY_PRESETS}
    order = list(dict.fromkeys(name for family in (4, "3n", 3, 2, 1) for name in family_hook_names(family)))
    missing = [name for name in order if name not in HOOKS]
    if missing:
        raise KeyError(f"hook points without an entry in gemma_lab.hook_points.HOOKS: {missing}")
    lines = ["| name | shape | Gemma | what it is |", "|---|---|---|---|"]
    for name in order:
        axes, what = HOOKS[name]
        shape = shape_string(axes)
        families = " ".join(str(f) for f in FAMILY_PRESETS if name in by_family[f])
        lines.append(f"| `{name}` | `{shape}` | {families} | {what} |")
    return "\n".join(lines) + "\n"


def update(path: Path) -> bool:
    """Replace the table between the markers in ``path``; True when the file changed."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no table markers; add the lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{markdown_table()}{END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print (or update in a markdown file) the table of hook points.")
    parser.add_argument("--update", type=Path, metavar="FILE", help="rewrite the table between its markers in FILE")
    args = parser.parse_args(argv)
    if args.update is None:
        sys.stdout.write(markdown_table())
    else:
        print(f"{args.update}: {'updated' if update(args.update) else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
