"""The layer map: one declared order of layers, checked against the imports of every module.

Layers point one way: a module may import modules of its own layer or of layers below it, never
above. Every import counts: at the top of a file, inside a function (lazy), under
``TYPE_CHECKING``, and ``importlib.import_module("gemma_lab....")`` with a literal name. The
package's own modules import each other without a cycle, and third-party libraries stay in the
layers that need them (the model never imports plotting, widgets or a tokenizer library; nothing
in the package imports transformers, the parity oracle).

A new module must be given a layer here: the test names any module it cannot place.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("gemma_lab", "tools")

# Lowest first. A module belongs to the first entry whose name or package prefix matches it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("vocabulary", ("gemma_lab.hf_format", "gemma_lab.hook_points", "gemma_lab.bundled", "gemma_lab.hub")),
    ("config and hooks", ("gemma_lab.config", "gemma_lab.hooks", "gemma_lab.sampling", "gemma_lab.tokenizer",
                          "gemma_lab.chat_template")),
    ("model", ("gemma_lab.kv_cache", "gemma_lab.activation_cache", "gemma_lab.factored_matrix",
               "gemma_lab.gemma4_parts", "gemma_lab.gemma3n_parts", "gemma_lab.model", "gemma_lab.quantize")),
    ("loading, generation, interp", ("gemma_lab.loading", "gemma_lab.matformer", "gemma_lab.placement",
                                     "gemma_lab.tensor_parallel",
                                     "gemma_lab.generation", "gemma_lab.interp", "gemma_lab.tuned_lens",
                                     "gemma_lab.sae", "gemma_lab.notebook", "gemma_lab",
                                     # TransformerLens's interface: model and tokenizer paired.
                                     "gemma_lab.tl_utils", "gemma_lab.tl_views", "gemma_lab.tl_aliases",
                                     "gemma_lab.hooked_gemma")),
    ("viz", ("gemma_lab.viz",)),
    ("widgets", ("gemma_lab.widgets",)),
    ("exercises (the notebooks' support)", ("gemma_lab.exercises",)),
    ("the tiny model's pipeline", ("gemma_lab.tiny",)),
    ("command line", ("gemma_lab.cli", "gemma_lab.__main__")),
    ("developer tools", ("tools",)),
]

# Third-party libraries (top-level names) a module may reach, through its own imports and those
# of the package modules it imports. Modules not listed may use any installed library.
STDLIB = frozenset(sys.stdlib_module_names)
ALLOWED_THIRD_PARTY: dict[str, frozenset[str]] = {
    "gemma_lab.hf_format": frozenset(),
    "gemma_lab.hook_points": frozenset(),
    "gemma_lab.config": frozenset(),
    "gemma_lab.bundled": frozenset(),
    "gemma_lab.hub": frozenset({"huggingface_hub", "kagglehub"}),  # imported when an id is resolved
    "gemma_lab.sampling": frozenset({"torch"}),
    "gemma_lab.hooks": frozenset({"torch"}),
    "gemma_lab.tokenizer": frozenset({"sentencepiece", "tokenizers", "jinja2", "markupsafe", "huggingface_hub",
                                     "kagglehub"}),
    "gemma_lab.chat_template": frozenset({"jinja2", "markupsafe"}),
    "gemma_lab.kv_cache": frozenset({"torch"}),
    "gemma_lab.activation_cache": frozenset({"torch", "einops"}),
    "gemma_lab.factored_matrix": frozenset({"torch"}),
    "gemma_lab.model": frozenset({"torch", "einops"}),
    "gemma_lab.gemma4_parts": frozenset({"torch", "einops"}),
    "gemma_lab.quantize": frozenset({"torch"}),
    "gemma_lab.gemma3n_parts": frozenset({"torch", "einops"}),
    "gemma_lab.matformer": frozenset({"torch", "einops"}),
    "gemma_lab.viz": frozenset({"matplotlib", "numpy"}),
    "gemma_lab.tiny.corpus": frozenset({"sentencepiece"}),
    "gemma_lab.tiny.tables": frozenset(),
}
# Libraries no module of these layers may reach.
FORBIDDEN_BELOW_VIZ = frozenset({"matplotlib", "ipywidgets", "IPython"})
FORBIDDEN_IN_PACKAGE = frozenset({"transformers"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for top in OURS for p in sorted((ROOT / top).rglob("*.py"))}


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level names) that module ``name`` imports anywhere in its file."""
    ours, theirs = set(), set()

    def add(target: str) -> None:
        top = target.split(".")[0]
        if top in OURS:
            # "from gemma_lab import viz" names a module; "from gemma_lab.config import X" its package.
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            ours.add(target)
        elif top not in STDLIB and top != "__future__":
            theirs.add(top)

    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    ours.discard(name)
    return ours, theirs


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> int:
    """Index in LAYERS; ``gemma_lab`` itself (the package facade) matches only its exact name."""
    for index, (_, members) in enumerate(LAYERS):
        if any(name == m or (m != "gemma_lab" and name.startswith(m + ".")) for m in members):
            return index
    raise LookupError(name)


def closure(name: str) -> set[str]:
    """``name`` and every package module it reaches through imports (the package facade excluded)."""
    seen, todo = {name}, [name]
    while todo:
        for dep in GRAPH[todo.pop()][0]:
            if dep not in seen and dep != "gemma_lab":
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_module_has_a_layer():
    unplaced = []
    for name in MODULES:
        try:
            layer_of(name)
        except LookupError:
            unplaced.append(name)
    assert not unplaced, f"give these modules a layer in tests/test_architecture.py: {unplaced}"


def test_imports_never_point_up():
    against = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
               for name, (deps, _) in GRAPH.items() for dep in sorted(deps) if layer_of(dep) > layer_of(name)]
    assert not against, "\n".join(against)


def test_no_import_cycles():
    # Depth-first search over every import, lazy ones included; report the first cycle found.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(GRAPH[name][0]):
            if dep == "gemma_lab":  # the facade: importing any submodule runs it first anyway
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in MODULES:
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(ALLOWED_THIRD_PARTY))
def test_third_party_imports_stay_where_they_belong(name):
    if name not in MODULES:
        pytest.fail(f"{name} is listed in ALLOWED_THIRD_PARTY but does not exist")
    reached = set().union(*(GRAPH[m][1] for m in closure(name)))
    assert reached <= ALLOWED_THIRD_PARTY[name], f"{name} reaches {sorted(reached - ALLOWED_THIRD_PARTY[name])}"


def test_no_plotting_or_widgets_below_viz_and_no_transformers_in_the_package():
    viz = layer_of("gemma_lab.viz")
    for name in MODULES:
        reached = set().union(*(GRAPH[m][1] for m in closure(name)))
        if name.startswith("gemma_lab"):
            assert not reached & FORBIDDEN_IN_PACKAGE, f"{name} reaches {sorted(reached & FORBIDDEN_IN_PACKAGE)}"
        if layer_of(name) < viz or name.startswith("gemma_lab.exercises"):
            assert not reached & FORBIDDEN_BELOW_VIZ, f"{name} reaches {sorted(reached & FORBIDDEN_BELOW_VIZ)}"


def test_the_model_never_imports_a_tokenizer():
    assert "gemma_lab.tokenizer" not in closure("gemma_lab.model")


def test_the_checks_see_lazy_imports():
    """The graph is built from every import in a file, not only the top-level ones."""
    ours, _ = GRAPH["gemma_lab.cli"]
    assert {"gemma_lab.loading", "gemma_lab.generation"} <= ours  # both imported inside functions
    assert any(name.startswith("gemma_lab.tiny") for name in ours)  # importlib.import_module("gemma_lab.tiny...")


def test_the_layout_in_docs_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text().split("## Where things live", 1)[1]
    missing = []
    for name, path in MODULES.items():
        rel = path.relative_to(ROOT)
        top, inner = rel.parts[0], "/".join(rel.parts[1:])
        if path.name == "__init__.py" or inner in ("__main__.py",):
            continue
        listed = inner in text or (inner.startswith("exercises/lesson") and "exercises/lessonNN_*.py" in text)
        if not listed:
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md's layout does not list {missing}"
