"""The checking framework behind every exercise: register, check a learner's function, show solutions.

``check`` runs the learner's function and the reference on several random trials (different
shapes and dtypes, edge cases included) and compares; when the answer is wrong it looks for the
*kind* of wrong it is: an answer that matches a registered mistake on every trial gets its hint.
The API is documented in ``gemma_lab/exercises/__init__.py``, which re-exports it.

Imports torch and the standard library only; the lesson modules import this.
"""

from __future__ import annotations

import ast
import copy
import difflib
import html
import importlib
import importlib.resources
import inspect
import math
import pkgutil
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

__all__ = [
    "CheckResult",
    "Exercise",
    "check",
    "choice",
    "exercise",
    "fill_in_solutions",
    "get_exercise",
    "list_exercises",
    "outputs_match",
    "randint",
    "solution",
    "solutions_dir",
    "trial_number",
]

#: Trials per exercise unless the exercise asks for another number.
DEFAULT_TRIALS = 6

#: (rtol, atol) per floating dtype for the default comparison. fp32 leaves room for a different but
#: equally good order of operations; bf16/fp16 allow about one rounding step of their precision.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (1e-3, 1e-5),
}

#: The cell tag, and the cell metadata key holding the exercise name, of an exercise cell.
EXERCISE_TAG = "exercise"
EXERCISE_KEY = "exercise"

PASSED, FAILED, ERROR, NOT_ATTEMPTED = "passed", "failed", "error", "not attempted"

#: Exercise modules are the files ``lesson<NN>_<notebook>.py`` beside this one.
LESSON_PREFIX = "lesson"

_REGISTRY: dict[str, "Exercise"] = {}
_modules_loaded = False


# ----------------------------------------------------------------------------------------------
# Registering
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """One exercise: how to make inputs, the right answer, and the usual wrong ones."""

    name: str
    make_inputs: Callable[[torch.Generator], tuple]
    reference: Callable[..., Any]
    mistakes: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    compare: Callable[[Any, Any], bool] | None = None
    notebook: str | None = None
    trials: int = DEFAULT_TRIALS

    def inputs(self, trial: int) -> tuple:
        """The arguments of trial ``trial`` (the same every time)."""
        generator = torch.Generator().manual_seed(trial)
        inputs = self.make_inputs(generator)
        if not isinstance(inputs, tuple):
            raise TypeError(f"make_inputs of exercise {self.name!r} must return a tuple, got {type(inputs).__name__}")
        return inputs

    def matches(self, got: Any, expected: Any) -> bool:
        """True when ``got`` counts as equal to ``expected`` for this exercise."""
        if self.compare is not None:
            return bool(self.compare(got, expected))
        return outputs_match(got, expected)

    def argument_names(self) -> list[str]:
        """The reference's parameter names, used to describe a trial's inputs."""
        try:
            return list(inspect.signature(self.reference).parameters)
        except (TypeError, ValueError):
            return []


def exercise(
    name: str,
    *,
    make_inputs: Callable[[torch.Generator], tuple],
    reference: Callable[..., Any],
    mistakes: Mapping[str, Callable[..., Any]] | None = None,
    compare: Callable[[Any, Any], bool] | None = None,
    notebook: str | None = None,
    trials: int = DEFAULT_TRIALS,
) -> Exercise:
    """Register an exercise (replacing one of the same name) and return it. See the module docstring."""
    if not name.isidentifier():
        raise ValueError(f"exercise names are function names; {name!r} is not a Python identifier")
    if trials < 1:
        raise ValueError(f"an exercise needs at least one trial, got trials={trials}")
    registered = Exercise(name, make_inputs, reference, dict(mistakes or {}), compare, notebook, trials)
    _REGISTRY[name] = registered
    return registered


def _load_exercise_modules() -> None:
    """Import every public submodule of this package once: importing one registers its exercises."""
    global _modules_loaded
    if _modules_loaded:
        return
    _modules_loaded = True
    package = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package)]):
        if module.name.startswith(LESSON_PREFIX):
            importlib.import_module(f"{__package__}.{module.name}")


def get_exercise(name: str) -> Exercise:
    """The registered exercise called ``name``; ``KeyError`` naming close matches otherwise."""
    if name not in _REGISTRY:
        _load_exercise_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"no exercise named {name!r}{hint}") from None


def list_exercises(notebook: str | None = None) -> list[str]:
    """Names of the registered exercises (of one notebook, given its stem or its number prefix)."""
    _load_exercise_modules()
    names = []
    for name, registered in _REGISTRY.items():
        stem = registered.notebook or ""
        if notebook is None or stem == notebook or stem.split("_", 1)[0] == notebook:
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------
# Helpers for make_inputs
# ----------------------------------------------------------------------------------------------


def trial_number(generator: torch.Generator) -> int:
    """The trial a generator was made for (trial ``t`` is seeded with ``t``)."""
    return int(generator.initial_seed())


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """A random integer in ``[low, high]``, both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def choice(generator: torch.Generator, options: Sequence[Any]) -> Any:
    """One of ``options``, chosen at random."""
    return options[randint(generator, 0, len(options) - 1)]


# ----------------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------------


def outputs_match(got: Any, expected: Any) -> bool:
    """The default comparison: ``_difference`` finds nothing to report."""
    return _difference(got, expected) is None


def _difference(got: Any, expected: Any, where: str = "output") -> str | None:
    """None when ``got`` matches ``expected``; otherwise one sentence saying where and how they differ.

    Tensors must agree in shape and dtype, and in value within ``TOLERANCES`` of the expected
    dtype (exactly for integer and bool tensors); tuples and lists element by element; numbers
    within 1e-6 (relative); anything else by ``==``.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where} should be a tensor of shape {list(expected.shape)}, got {_kind(got)}"
        if got.shape != expected.shape:
            return f"{where} has shape {list(got.shape)}, expected {list(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"{where} has dtype {_dtype(got.dtype)}, expected {_dtype(expected.dtype)}"
        return _tensor_difference(got.detach().cpu(), expected.detach().cpu(), where)
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{where} should be a {type(expected).__name__} of {len(expected)} items, got {_kind(got)}"
        if len(got) != len(expected):
            return f"{where} has {len(got)} items, expected {len(expected)}"
        for index, (item, wanted) in enumerate(zip(got, expected)):
            problem = _difference(item, wanted, f"{where}[{index}]")
            if problem is not None:
                return problem
        return None
    if isinstance(expected, str):
        if got == expected:
            return None
        if not isinstance(got, str):
            return f"{where} should be a string, got {_kind(got)}"
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        return (f"{where} differs from character {at} on: got {got[at:at + 20]!r}, "
                f"expected {expected[at:at + 20]!r} (whole: got {_short(got)}, expected {_short(expected)})")
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            return f"{where} should be a number, got {_kind(got)}"
        if math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9):
            return None
        return f"{where} is {got!r}, expected {expected!r}"
    return None if got == expected else f"{where} is {_short(got)}, expected {_short(expected)}"


def _tensor_difference(got: torch.Tensor, expected: torch.Tensor, where: str) -> str | None:
    if not expected.is_floating_point():
        wrong = got != expected
        if not wrong.any():
            return None
        index = tuple(int(i) for i in wrong.nonzero()[0])
        return (f"{where} differs in {int(wrong.sum())} of {wrong.numel()} entries; first at index "
                f"{list(index)}: got {got[index].item()}, expected {expected[index].item()}")
    rtol, atol = TOLERANCES.get(expected.dtype, TOLERANCES[torch.float32])
    got64, expected64 = got.double(), expected.double()
    same_inf = (got64 == expected64) | (got64.isnan() & expected64.isnan())
    finite = got64.isfinite() & expected64.isfinite()  # inf and nan must match exactly
    close = same_inf | (finite & ((got64 - expected64).abs() <= atol + rtol * expected64.abs()))
    if close.all():
        return None
    gap = (got64 - expected64).abs().masked_fill(same_inf, 0).nan_to_num(nan=math.inf)
    index = tuple(int(i) for i in torch.unravel_index(gap.argmax(), gap.shape))
    return (f"{where} differs in {int((~close).sum())} of {close.numel()} entries; max |difference| "
            f"{gap[index].item():.3g} at index {list(index)} (got {got64[index].item():.6g}, "
            f"expected {expected64[index].item():.6g})")


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if value is None:
        return "None (did you forget to return it?)"
    return f"a {type(value).__name__}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_inputs(names: Sequence[str], inputs: tuple) -> str:
    """A short description of a trial's arguments: ``x: bfloat16 [2, 5, 64], eps=1e-06``."""
    parts = []
    for index, value in enumerate(inputs):
        name = names[index] if index < len(names) else f"arg{index}"
        if isinstance(value, torch.Tensor):
            parts.append(f"{name}: {_dtype(value.dtype)} {list(value.shape)}")
        elif isinstance(value, torch.nn.Module):
            parts.append(f"{name}: {type(value).__name__}")
        elif isinstance(value, (list, tuple)) and len(repr(value)) > 40:
            parts.append(f"{name}: {type(value).__name__} of {len(value)}")
        elif callable(value) and not isinstance(value, type):
            parts.append(f"{name}: {getattr(value, '__name__', type(value).__name__)}")
        else:
            parts.append(f"{name}={_short(value, 40)}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one exercise: ``passed``, a ``message`` and, for a known mistake, a ``hint``."""

    name: str
    status: str  # PASSED, FAILED, ERROR or NOT_ATTEMPTED
    message: str
    hint: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __bool__(self) -> bool:
        return self.passed

    @property
    def symbol(self) -> str:
        return {PASSED: "✔", NOT_ATTEMPTED: "○"}.get(self.status, "✘")

    def __str__(self) -> str:
        text = f"{self.symbol} {self.name}: {self.message}"
        if self.hint:
            text += f"\n  Hint: {self.hint}"
        return text

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        colour, background = {PASSED: ("#2e7d32", "#edf7ed"), NOT_ATTEMPTED: ("#5f6b7a", "#f3f4f6")}.get(
            self.status, ("#c62828", "#fdecea"))
        hint = (f'<div style="margin-top:4px"><b>Hint:</b> {html.escape(self.hint)}</div>'
                if self.hint else "")
        return (f'<div style="border-left:4px solid {colour};background:{background};padding:6px 10px;'
                f'margin:4px 0;font-family:var(--jp-ui-font-family, sans-serif);color:#1f2328">'
                f'<span style="color:{colour};font-weight:bold">{self.symbol} {html.escape(self.name)}</span>: '
                f'{html.escape(self.message)}{hint}</div>')


def _run(fn: Callable[..., Any], inputs: tuple) -> Any:
    """``fn`` on a private copy of the inputs (a function may modify its arguments in place)."""
    with torch.no_grad():
        return fn(*copy.deepcopy(inputs))


#: Seconds one ``check`` may take before the learner's function is interrupted (a loop that never ends).
CHECK_TIME_LIMIT_S = 30


class _TimeLimit(Exception):
    """Raised inside the learner's function when ``check`` runs out of time."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (a SIGALRM timer: main thread on Unix, as in a Jupyter kernel)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:  # elsewhere (Windows, a worker thread) there is no safe way to interrupt: run as is
        yield
        return

    def interrupt(signum, frame):
        raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _isolated_torch_state() -> Iterator[None]:
    """Run trials on one thread (tiny tensors: faster, far faster on a busy machine) and give the
    notebook back the global torch settings a learner's function may change (default dtype,
    gradient mode, default device)."""
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    device = torch.get_default_device()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_default_device(device)


def check(name: str, fn: Callable[..., Any]) -> CheckResult:
    """Run ``fn`` on every trial of exercise ``name`` and compare it with the reference.

    Passes when every trial matches. Otherwise: ``NotImplementedError`` means "not attempted";
    another exception is reported with its message and the trial's inputs; wrong outputs that
    equal a registered mistake on every trial get that mistake's hint; anything else is
    described by the first failing trial (its shapes, and where and how much the output differs).
    """
    if not isinstance(name, str):
        return CheckResult(str(name), ERROR, f"check needs the exercise's name first, e.g. "
                                             f"check(\"rms_norm\", rms_norm); got {_kind(name)}")
    registered = get_exercise(name)
    if not callable(fn):
        return CheckResult(name, ERROR, f"check needs the function you wrote, got {_kind(fn)}")
    with _isolated_torch_state():
        try:
            with _time_limit(CHECK_TIME_LIMIT_S):
                return _check(registered, fn)
        except _TimeLimit:
            return CheckResult(name, ERROR, f"stopped after {CHECK_TIME_LIMIT_S} s: your function did not "
                                            f"return (a loop that never ends?)")
        except Exception as error:  # the comparison itself failed on what the function returned
            return CheckResult(name, ERROR, f"could not compare your output with the reference "
                                            f"({type(error).__name__}: {error}); return a plain tensor "
                                            f"on the CPU, as the exercise describes")


def _check(registered: Exercise, fn: Callable[..., Any]) -> CheckResult:
    name = registered.name
    names = registered.argument_names()
    trials = [registered.inputs(trial) for trial in range(registered.trials)]
    outputs, first_failure = [], None
    for trial, inputs in enumerate(trials):
        expected = _run(registered.reference, inputs)
        try:
            got = _run(fn, inputs)
        except _TimeLimit:
            raise
        except NotImplementedError:
            return CheckResult(name, NOT_ATTEMPTED, "not attempted yet (replace `raise NotImplementedError` "
                                                    "with your code, then run this cell again)")
        except Exception as error:  # the learner's code: report whatever it raised, with the inputs
            return CheckResult(name, ERROR, f"trial {trial + 1} ({describe_inputs(names, inputs)}) raised "
                                            f"{type(error).__name__}: {error}", error_hint(error))
        outputs.append(got)
        if first_failure is None and not registered.matches(got, expected):
            problem = _difference(got, expected) or "output differs from the reference (custom comparison)"
            first_failure = f"trial {trial + 1} ({describe_inputs(names, inputs)}): {problem}"
    if first_failure is None:
        return CheckResult(name, PASSED, f"passed all {len(trials)} trials")
    hint = _matching_mistake(registered, trials, outputs)
    if hint is not None:
        return CheckResult(name, FAILED, f"wrong on some of {len(trials)} trials, in a familiar way. "
                                         f"First: {first_failure}", hint)
    return CheckResult(name, FAILED, first_failure)


#: What torch's own messages mean for an exercise: (pattern in the message, hint). Read in order.
_ERROR_HINTS = (
    (re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)"),
     "Two tensors were combined whose axes do not line up: one axis is {0} long in the first and {1} in "
     "the second. Broadcasting lines shapes up from the *right*, so a tensor that runs along an earlier "
     "axis needs length-1 axes after it: x[:, None] (or x.unsqueeze(-1), or einops.rearrange) turns [pos] "
     "into [pos, 1], which then spreads over d_model. Print the shapes of both operands."),
    (re.compile(r"mat1 and mat2 shapes cannot be multiplied"),
     "A matrix product whose inner sizes differ: x @ W needs x's last axis to equal W's first. nn.Linear "
     "stores its weight as [out, in], so the product is x @ weight.T."),
    (re.compile(r"Dimension out of range"),
     "An axis number past the tensor's rank: count the axes of the tensor you index (print .shape); "
     "negative axes count from the end (-1 is the last)."),
    (re.compile(r"expected scalar type|expected .*dtype|must have the same dtype"),
     "Two tensors of different dtypes met in one operation: convert one (x.to(other.dtype)), or compute "
     "in float32 and convert the result back to the input's dtype at the end."),
    (re.compile(r"hook on (\S+) returned a (\S+) tensor on (\S+); expected (\S+) on (\S+)"),
     "Your hook returned a {1} tensor on {2}, but the model runs in {3} on {4}: adding a tensor of another "
     "dtype promotes the result (bfloat16 + float32 is float32). Convert what you add first: "
     "vector.to(resid.device, resid.dtype)."),
)


def error_hint(error: BaseException) -> str | None:
    """A hint for an exception torch raised inside a learner's function (None when none applies)."""
    message = str(error)
    for pattern, hint in _ERROR_HINTS:
        found = pattern.search(message)
        if found:
            return hint.format(*found.groups())
    return None


def _matching_mistake(registered: Exercise, trials: list[tuple], outputs: list[Any]) -> str | None:
    """The hint of the first registered mistake whose outputs equal the learner's on every trial."""
    for hint, wrong in registered.mistakes.items():
        try:
            if all(registered.matches(got, _run(wrong, inputs)) for inputs, got in zip(trials, outputs)):
                return hint
        except Exception:  # a mistake that cannot run on some trial simply does not match
            continue
    return None


# ----------------------------------------------------------------------------------------------
# Solutions
# ----------------------------------------------------------------------------------------------


class Solution(str):
    """A solution's source code: a plain ``str`` that Jupyter shows as a collapsed block."""

    exercise_name: str = ""

    def _repr_html_(self) -> str:
        return (f'<details><summary>Solution: <code>{html.escape(self.exercise_name)}</code> '
                f'(click to show)</summary><pre style="margin:4px 0"><code>{html.escape(str(self))}'
                f'</code></pre></details>')

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def solutions_dir() -> Path:
    """Where the solution files are: ``notebooks/for_instructors/solutions`` beside the package, else packaged data."""
    package_dir = Path(__file__).resolve().parent.parent
    checkout = package_dir.parent / "notebooks" / "for_instructors" / "solutions"
    if checkout.is_dir():
        return checkout
    packaged = importlib.resources.files("gemma_lab") / "_solutions"
    return Path(str(packaged))


def _solution_files(registered: Exercise) -> list[Path]:
    folder = solutions_dir()
    if registered.notebook:
        return [folder / f"{registered.notebook}.py"]
    return sorted(folder.glob("*.py"))


def solution(name: str) -> Solution:
    """The source of the solution to exercise ``name``: the function of that name in its solution file."""
    registered = get_exercise(name)
    files = _solution_files(registered)
    for path in files:
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.parse(source, filename=str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = source.splitlines()[first - 1 : node.end_lineno]
                text = Solution("\n".join(lines) + "\n")
                text.exercise_name = name
                return text
    looked = ", ".join(str(p) for p in files) or str(solutions_dir())
    raise LookupError(f"no solution function {name!r} found (looked in {looked})")


def fill_in_solutions(nb: Any) -> int:
    """Replace the source of each exercise cell of notebook ``nb`` (an nbformat node) by its solution.

    Exercise cells carry the tag ``exercise`` and the metadata ``{"exercise": "<name>"}``. Returns
    the number of cells replaced; a tagged cell without a name raises ``ValueError``.
    """
    replaced = 0
    for index, cell in enumerate(nb["cells"]):
        metadata = cell.get("metadata", {})
        if EXERCISE_TAG not in metadata.get("tags", []):
            continue
        name = metadata.get(EXERCISE_KEY)
        if not name:
            raise ValueError(f"cell {index} is tagged {EXERCISE_TAG!r} but has no metadata {EXERCISE_KEY!r}")
        cell["source"] = str(solution(name))
        replaced += 1
    return replaced
