"""Test helpers for notebooks and widgets: run a notebook honestly, check notebook pairs,
and record what ipywidgets Output widgets show when there is no kernel.

Why these exist (see the project's Jupyter testing notes):

* An exception inside ``with out:`` (an ipywidgets ``Output``) does not fail a notebook
  cell: the traceback is shown inside the widget. ``execute_notebook`` therefore also scans
  the widget state that nbclient stores for ``error`` outputs and printed tracebacks.
* Without a kernel, ``with out:`` captures nothing and ipywidgets swallows exceptions from
  callbacks. ``record_widget_outputs`` (used by the ``widget_outputs`` fixture in
  ``conftest.py``) records displays on each ``Output`` and lets exceptions through.

This module is imported by tests only; it never imports gemma_lab.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from io import StringIO
from pathlib import Path

import nbformat

WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
TRACEBACK_MARKER = "Traceback (most recent call last)"

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_MODEL_REFERENCE = re.compile(r"^IPY_MODEL_(\w+)$")


class NotebookError(AssertionError):
    """A notebook failed: a cell raised, or an Output widget recorded an error.

    Attributes: ``path`` (the notebook), ``cell_index`` (index into ``nb.cells``, or None
    when the failing Output widget could not be traced back to a cell), ``source`` (that
    cell's source), ``traceback`` (plain text, colours removed) and ``where`` ("cell" or
    "output widget").
    """

    def __init__(self, path, cell_index, source, traceback, where="cell"):
        self.path = Path(path)
        self.cell_index = cell_index
        self.source = source or ""
        self.traceback = _ANSI_ESCAPE.sub("", traceback or "")
        self.where = where
        cell = "an unknown cell" if cell_index is None else f"cell {cell_index}"
        excerpt = "\n".join(self.source.splitlines()[:15])
        super().__init__(
            f"{self.path.name}: {cell} failed ({where})\n"
            f"--- source of {cell} ---\n{excerpt}\n"
            f"--- traceback ---\n{self.traceback}"
        )


# --------------------------------------------------------------------------------------
# Executing notebooks
# --------------------------------------------------------------------------------------


def kernel_environment(env: dict | None = None) -> dict:
    """os.environ updated with ``env``, without MPLBACKEND.

    MPLBACKEND must never reach a kernel: with it set, the inline backend is not chosen and
    figures shown with plt.show() vanish.
    """
    merged = {**os.environ, **(env or {})}
    merged.pop("MPLBACKEND", None)
    return merged


def execute_notebook(
    path,
    *,
    env: dict | None = None,
    timeout: int = 600,
    kernel_name: str = "python3",
    cwd=None,
) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` on a fresh kernel and return the executed notebook.

    The kernel runs in the notebook's folder (or ``cwd``) with os.environ updated by ``env``
    and MPLBACKEND removed. ``timeout`` is per cell, in seconds. The file is not modified.

    Raises ``NotebookError`` when a cell raises (cells tagged ``raises-exception`` may), when
    an Output widget recorded an ``error`` output, or when a stream inside an Output widget
    contains a Python traceback: the three ways a widget notebook can fail.
    """
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    workdir = Path(cwd) if cwd is not None else path.parent
    with kernel_transport_config() as config:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=kernel_name,
            resources={"metadata": {"path": str(workdir)}},
            config=config,
        )
        return _execute(client, nb, path, env)


def _execute(client, nb, path: Path, env: dict | None) -> nbformat.NotebookNode:
    from nbclient.exceptions import CellControlSignal, CellExecutionError, DeadKernelError

    current = {"index": None}

    def remember_cell(cell, cell_index, **_):
        current["index"] = cell_index

    client.on_cell_start = remember_cell
    try:
        client.execute(env=kernel_environment(env))
    except (CellExecutionError, CellControlSignal, DeadKernelError, TimeoutError) as error:
        index = _first_error_cell(nb)
        if index is None:
            index = current["index"]
        source = nb.cells[index].source if index is not None else ""
        raise NotebookError(path, index, source, _error_text(nb, index) or str(error)) from error

    problem = _output_widget_problem(nb)
    if problem is not None:
        index, text = problem
        source = nb.cells[index].source if index is not None else ""
        raise NotebookError(path, index, source, text, where="output widget")
    return nb


@contextmanager
def kernel_transport_config():
    """A traitlets ``Config`` for the kernel manager: IPC (Unix sockets in a private folder,
    removed afterwards) where the platform has them, else the default TCP.

    ipykernel 7 logs "Kernel is running over TCP without encryption ..." on stderr at every start
    over TCP, and a kernel's stderr is the test run's, so it landed in the output of every lesson
    run. IPC is what that warning recommends: the sockets are files only this user can open, with
    no port on the network at all. Use it for any other kernel a test starts (nbclient, nbconvert).
    """
    from traitlets.config import Config

    config = Config()
    if os.name != "posix":
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="kernel-") as folder:
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(folder, "k")  # socket files k-1 ... k-5; short: paths are limited
        yield config


def _first_error_cell(nb) -> int | None:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "raises-exception" in cell.metadata.get("tags", []):
            continue
        if any(output.output_type == "error" for output in cell.get("outputs", [])):
            return index
    return None


def _error_text(nb, index) -> str:
    if index is None:
        return ""
    for output in nb.cells[index].get("outputs", []):
        if output.output_type == "error":
            return "\n".join(output.traceback) or f"{output.ename}: {output.evalue}"
    return ""


def widget_states(nb) -> dict[str, dict]:
    """The widget models nbclient stored in the notebook: model id -> {model_name, state, ...}."""
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})


def _output_widget_outputs(nb) -> Iterator[tuple[str, dict]]:
    for model_id, model in widget_states(nb).items():
        if model.get("model_name") == "OutputModel":
            for output in model.get("state", {}).get("outputs", []):
                yield model_id, output


def _output_widget_problem(nb) -> tuple[int | None, str] | None:
    """(cell index, traceback text) of the first error recorded inside an Output widget."""
    for model_id, output in _output_widget_outputs(nb):
        if output.get("output_type") == "error":
            text = "\n".join(output.get("traceback", [])) or f"{output.get('ename')}: {output.get('evalue')}"
        elif output.get("output_type") == "stream" and TRACEBACK_MARKER in _text(output.get("text")):
            text = _text(output.get("text"))
        else:
            continue
        return _cell_displaying(nb, model_id), text
    return None


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _cell_displaying(nb, model_id: str) -> int | None:
    """Index of the cell whose displayed widget contains ``model_id`` (through children etc.)."""
    states = widget_states(nb)

    def references(state) -> Iterator[str]:
        values = state.values() if isinstance(state, dict) else state
        for value in values:
            if isinstance(value, str) and (match := _MODEL_REFERENCE.match(value)):
                yield match.group(1)
            elif isinstance(value, (list, dict)):
                yield from references(value)

    for index, cell in enumerate(nb.cells):
        stack = [
            output["data"][WIDGET_VIEW_MIME]["model_id"]
            for output in cell.get("outputs", [])
            if WIDGET_VIEW_MIME in output.get("data", {})
        ]
        seen = set()
        while stack:
            current = stack.pop()
            if current == model_id:
                return index
            if current not in seen:
                seen.add(current)
                stack.extend(references(states.get(current, {}).get("state", {})))
    return None


def count_displayed_widgets(nb) -> int:
    """Number of widget views displayed in cell outputs (top-level displays only)."""
    return sum(
        WIDGET_VIEW_MIME in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )


def figures_in(nb) -> int:
    """Number of image/png outputs, in cell outputs and inside Output widgets."""
    in_cells = sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    in_widgets = sum("image/png" in output.get("data", {}) for _, output in _output_widget_outputs(nb))
    return in_cells + in_widgets


# --------------------------------------------------------------------------------------
# Paired notebooks
# --------------------------------------------------------------------------------------


def check_notebook_pairs(folder, scripts_folder=None) -> list[str]:
    """Problems with the notebooks in ``folder`` (not recursive); an empty list when fine.

    For each ``*.ipynb``: the paired percent-format ``.py`` (in ``scripts_folder``, default beside it)
    must exist and hold the same
    cells (types and sources; metadata ignored), and the ``.ipynb`` must store no outputs,
    execution counts or widget state (run nbstripout).
    """
    import jupytext
    from jupytext.formats import guess_format

    problems = []
    for notebook_path in sorted(Path(folder).glob("*.ipynb")):
        name = notebook_path.name
        script_path = Path(scripts_folder or folder) / f"{notebook_path.stem}.py"
        stored = nbformat.read(notebook_path, as_version=4)
        for index, cell in enumerate(stored.cells):
            if cell.cell_type != "code":
                continue
            if cell.get("outputs"):
                problems.append(f"{name}: cell {index} has stored outputs (run nbstripout)")
            if cell.get("execution_count") is not None:
                problems.append(f"{name}: cell {index} has an execution count (run nbstripout)")
        if "widgets" in stored.metadata:
            problems.append(f"{name}: widget state is stored in the metadata (run nbstripout)")

        if not script_path.exists():
            problems.append(f"{name}: paired script {script_path.name} is missing (run jupytext --sync)")
            continue
        script_format, _ = guess_format(script_path.read_text(encoding="utf-8"), ".py")
        if script_format != "percent":
            problems.append(f"{script_path.name}: not in percent format (found {script_format!r})")
        notebook_cells = _cells(jupytext.read(notebook_path))
        script_cells = _cells(jupytext.read(script_path))
        if notebook_cells != script_cells:
            difference = _first_difference(notebook_cells, script_cells)
            problems.append(f"{name} and {script_path.name} differ: {difference}")
    return problems


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def _first_difference(left, right) -> str:
    for index, (a, b) in enumerate(zip(left, right)):
        if a != b:
            return f"cell {index}: {a[0]} {a[1][:60]!r} vs {b[0]} {b[1][:60]!r} (run jupytext --sync)"
    return f"{len(left)} cells vs {len(right)} cells (run jupytext --sync)"


# --------------------------------------------------------------------------------------
# Recording Output widgets without a kernel
# --------------------------------------------------------------------------------------


class WidgetRecorder:
    """What ``record_widget_outputs`` hands to tests.

    ``shell`` is the temporary IPython shell; ``errors`` lists every exception that left a
    ``with out:`` block while recording (it was re-raised as well).
    """

    def __init__(self, shell):
        self.shell = shell
        self.errors: list[BaseException] = []

    @staticmethod
    def recorded(out) -> list[dict]:
        """The mime bundles ``out`` shows now (after any clear_output)."""
        return out.recorded

    @staticmethod
    def pngs(out) -> list[str]:
        """The image/png payloads (base64 text) that ``out`` shows now."""
        return [bundle["image/png"] for bundle in out.recorded if "image/png" in bundle]


def _recorded(out) -> list[dict]:
    return out.__dict__.setdefault("_recorded_bundles", [])


def _printed(out) -> str:
    open_text = "".join(stream.getvalue() for stream in _open_streams(out))
    return out.__dict__.get("_recorded_text", "") + open_text


def _open_streams(out) -> list[StringIO]:
    return [entry[-1] for entry in out.__dict__.get("_recorded_stack", [])]


def _clear_recording(out) -> None:
    _recorded(out).clear()
    out.__dict__["_recorded_text"] = ""
    for stream in _open_streams(out):
        stream.seek(0)
        stream.truncate()


@contextmanager
def record_widget_outputs() -> Iterator[WidgetRecorder]:
    """Record what ``with out:`` shows, and let exceptions in widget code escape.

    While active:

    * an IPython ``InteractiveShell`` exists (so ``display`` publishes mime bundles), with
      figures formatted as ``image/png``; its history is in memory and its profile in a
      temporary folder;
    * inside ``with out:`` for an ``ipywidgets.Output`` ``out``, every display is appended
      to ``out.recorded`` (a list of mime bundles: dicts mime type -> data) and printed text
      goes to ``out.printed`` (a str); ``out.clear_output()`` (and IPython's
      ``clear_output`` called inside the block) empties both, whether or not ``wait=True``;
    * an exception leaving ``with out:`` is re-raised (ipywidgets would show and swallow
      it), and any place where ipywidgets would print a traceback and carry on (button
      ``on_click`` handlers, ``interact``) raises instead, so a broken redraw fails the test.

    Everything is restored on exit: the shell is discarded and ``Output`` is unpatched.
    """
    import builtins

    import ipywidgets
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.pylabtools import select_figure_formats
    from traitlets.config import Config

    if InteractiveShell.initialized():
        raise RuntimeError("record_widget_outputs needs a process without a running IPython shell")

    class OutputPublisher(DisplayPublisher):
        """The shell's display publisher while inside ``with out:``: appends to out.recorded."""

        def __init__(self, out, **kwargs):
            super().__init__(**kwargs)
            self.out = out

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            _recorded(self.out).append(dict(data))

        def clear_output(self, wait=False):
            _clear_recording(self.out)

    Output = ipywidgets.Output
    had_builtins = {name: name in builtins.__dict__ for name in ("__IPYTHON__", "display")}

    with ExitStack() as stack:
        profile_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gemma_lab_ipython_"))
        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config, ipython_dir=profile_dir)
        stack.callback(InteractiveShell.clear_instance)
        select_figure_formats(shell, {"png"})
        recorder = WidgetRecorder(shell)

        def raise_instead(exc_tuple=None, *args, **kwargs):
            _, value, tb = exc_tuple if exc_tuple is not None else sys.exc_info()
            if value is None:
                raise RuntimeError("showtraceback called with no exception")
            raise value.with_traceback(tb)

        # ipywidgets calls shell.showtraceback() where it would swallow an exception.
        shell.showtraceback = raise_instead

        def enter(out):
            stream = StringIO()
            out.__dict__.setdefault("_recorded_stack", []).append(
                (shell.display_pub, sys.stdout, sys.stderr, stream)
            )
            shell.display_pub = OutputPublisher(out, shell=shell)
            sys.stdout = sys.stderr = stream
            return out

        def exit_(out, etype, evalue, tb):
            shell.display_pub, sys.stdout, sys.stderr, stream = out.__dict__["_recorded_stack"].pop()
            out.__dict__["_recorded_text"] = out.__dict__.get("_recorded_text", "") + stream.getvalue()
            if evalue is not None:
                recorder.errors.append(evalue)
            return False  # never swallow the exception

        def clear_output(out, *args, **kwargs):
            _clear_recording(out)

        originals = {name: Output.__dict__[name] for name in ("__enter__", "__exit__", "clear_output")}
        Output.__enter__ = enter
        Output.__exit__ = exit_
        Output.clear_output = clear_output
        Output.recorded = property(_recorded, doc="Mime bundles shown now (while recording).")
        Output.printed = property(_printed, doc="Text printed and not cleared (while recording).")

        def restore():
            for name, original in originals.items():
                setattr(Output, name, original)
            del Output.recorded, Output.printed
            for name, had in had_builtins.items():
                if not had:
                    builtins.__dict__.pop(name, None)

        stack.callback(restore)
        yield recorder


#: The widget modules every front end ships (JupyterLab, Notebook 7, VS Code, Colab); a model from
#: any other module needs its JavaScript fetched from a CDN, which VS Code and offline rooms lack.
CORE_WIDGET_MODULES = ("@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/output")
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def widget_portability_problems(nb) -> list[str]:
    """Problems with the widgets an executed notebook shows, for front ends other than JupyterLab.

    VS Code's and Colab's widget managers read ipywidgets 8 state (format 2.0) saved in the
    notebook's metadata, and render only the core widget modules without a CDN. So: the state is
    saved, in format 2.0; every view output is ipywidgets 8's (``version_major`` 2) and names a
    model in that state; every model comes from a core module.
    """
    views = [(index, output["data"][WIDGET_VIEW_MIME]) for index, cell in enumerate(nb.cells)
             for output in cell.get("outputs", []) if WIDGET_VIEW_MIME in output.get("data", {})]
    if not views:
        return []
    saved = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIME)
    if saved is None:
        return ["widgets are shown but no widget state is saved in the notebook's metadata"]
    problems = []
    if (saved.get("version_major"), saved.get("version_minor")) != (2, 0):
        problems.append(f"widget state format {saved.get('version_major')}.{saved.get('version_minor')}, not 2.0")
    state = saved.get("state", {})
    for index, view in views:
        if view.get("version_major") != 2:
            problems.append(f"cell {index}: a widget view of format {view.get('version_major')}, not ipywidgets 8's 2")
        if view.get("model_id") not in state:
            problems.append(f"cell {index}: widget model {view.get('model_id')} is not in the saved state")
    for model_id, model in state.items():
        if model.get("model_module") not in CORE_WIDGET_MODULES:
            problems.append(f"widget model {model_id} comes from {model.get('model_module')!r}, not a core module")
    return problems
