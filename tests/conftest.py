"""Shared pytest set-up for gemma_lab's tests.

Kept small on purpose: matplotlib's Agg backend for this process, the opt-in
``one_torch_thread`` fixture, and the opt-in ``widget_outputs`` fixture for driving ipywidgets without a kernel. Helpers for notebooks
live in ``jupyter_support.py`` and for the browser in ``browser_support.py`` (both in this
folder, importable from test modules as plain modules).
"""

import matplotlib
import pytest
import torch

# Figures made by tests are rendered off-screen. This is set for the pytest process only;
# kernels started by tests never get MPLBACKEND (see jupyter_support.kernel_environment).
matplotlib.use("Agg")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module whose models are tiny: faster, and far faster on a busy
    two-core machine. Opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def widget_outputs():
    """Drive ipywidgets in-process and see what their Output widgets show.

    Contract, for the duration of the test:

    * ``with out:`` on any ``ipywidgets.Output`` records displays into ``out.recorded``, a
      list of mime bundles (``{"image/png": <base64 str>, "text/plain": ...}``), and printed
      text into ``out.printed``; ``out.clear_output(wait=...)`` empties both. A matplotlib
      Figure passed to ``display`` is recorded as ``image/png``.
    * An exception raised inside ``with out:`` propagates (ipywidgets would swallow it), and
      so do exceptions in ``Button.on_click`` handlers and ``interact`` functions. Since
      assigning ``slider.value = ...`` runs ``observe`` callbacks synchronously and
      ``button.click()`` runs click handlers, a broken redraw fails the test at that line.
    * The fixture's value is a ``jupyter_support.WidgetRecorder``: ``.pngs(out)`` lists the
      PNG payloads ``out`` shows now, ``.errors`` every exception that left a ``with out:``,
      ``.shell`` the temporary IPython shell.

    Opt in per test by naming the fixture, or per module with
    ``pytestmark = pytest.mark.usefixtures("widget_outputs")``. It is not autouse: it costs
    an IPython shell (about 10 ms) and patches ipywidgets.Output while active.
    """
    from jupyter_support import record_widget_outputs

    with record_widget_outputs() as recorder:
        yield recorder
