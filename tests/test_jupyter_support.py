"""The test infrastructure itself: the widget_outputs fixture, execute_notebook and
check_notebook_pairs must catch the failures they exist for, and pass good code."""

import base64
from pathlib import Path

import ipywidgets as widgets
import jupytext
import matplotlib.pyplot as plt
import nbformat
import pytest
from IPython.display import display
from jupyter_support import (
    NotebookError,
    check_notebook_pairs,
    count_displayed_widgets,
    execute_notebook,
    figures_in,
    widget_portability_problems,
)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
FIXTURES = NOTEBOOKS / "for_instructors" / "fixtures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# widget_outputs: driving widgets without a kernel
# --------------------------------------------------------------------------------------


def make_plot_widget(broken_at=None):
    """A slider + button + Output, drawn the way the package's widgets are meant to be."""
    slider = widgets.IntSlider(value=1, min=1, max=5)
    button = widgets.Button(description="Next")
    out = widgets.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            if slider.value == broken_at:
                raise ValueError(f"cannot draw frequency {slider.value}")
            with plt.ioff():
                fig, ax = plt.subplots(figsize=(2, 1.5))
            ax.plot(range(10), [slider.value * i for i in range(10)])
            display(fig)
            plt.close(fig)

    def advance(_button):
        slider.value += 1

    slider.observe(redraw, names="value")
    button.on_click(advance)
    redraw()
    return slider, button, out


def test_fixture_records_a_displayed_figure(widget_outputs):
    slider, _, out = make_plot_widget()
    [first] = widget_outputs.pngs(out)
    assert base64.b64decode(first).startswith(PNG_SIGNATURE)

    slider.value = 3
    [second] = widget_outputs.pngs(out)  # clear_output(wait=True) left only the new figure
    assert second != first
    assert out.recorded[0].keys() >= {"image/png", "text/plain"}


def test_fixture_records_printed_text_and_clears_it(widget_outputs):
    out = widgets.Output()
    with out:
        print("hello")
    assert out.printed == "hello\n"
    out.clear_output()
    assert out.printed == "" and out.recorded == []


def test_fixture_reraises_from_an_observe_callback(widget_outputs):
    slider, _, _ = make_plot_widget(broken_at=2)
    with pytest.raises(ValueError, match="cannot draw frequency 2"):
        slider.value = 2
    assert [type(error) for error in widget_outputs.errors] == [ValueError]


def test_fixture_reraises_from_a_button_click(widget_outputs):
    _, button, _ = make_plot_widget(broken_at=2)
    with pytest.raises(ValueError, match="cannot draw frequency 2"):
        button.click()


def test_fixture_reraises_from_a_click_handler_outside_any_output(widget_outputs):
    button = widgets.Button()
    button.on_click(lambda _button: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        button.click()


def test_output_is_restored_after_the_fixture():
    from IPython.core.interactiveshell import InteractiveShell

    assert not InteractiveShell.initialized()
    assert not hasattr(widgets.Output, "recorded")


# --------------------------------------------------------------------------------------
# execute_notebook
# --------------------------------------------------------------------------------------


def write_notebook(path, *sources, tags=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    nbformat.write(nb, path)
    return path


GOOD_WIDGET_CELL = """
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
out = widgets.Output()
with out:
    with plt.ioff():
        fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    display(fig)
    plt.close(fig)
display(widgets.VBox([widgets.IntSlider(), out]))
"""

BROKEN_WIDGET_CELL = """
import ipywidgets as widgets
from IPython.display import display
out = widgets.Output()
display(widgets.VBox([widgets.Label("plot"), out]))
with out:
    1 / 0
print("the cell itself succeeds")
"""


@pytest.mark.slow
def test_execute_notebook_passes_a_good_notebook_and_counts(tmp_path, capfd):
    path = write_notebook(
        tmp_path / "good.ipynb",
        "import os, matplotlib; print(os.environ['GEMMA_LAB_PROBE'], matplotlib.get_backend())",
        GOOD_WIDGET_CELL,
        "1 / 0",
        tags={2: ["raises-exception"]},
    )
    nb = execute_notebook(path, env={"GEMMA_LAB_PROBE": "probe-value", "MPLBACKEND": "Agg"})
    printed = nb.cells[0].outputs[0].text
    assert "probe-value" in printed
    assert "inline" in printed  # MPLBACKEND never reaches the kernel, so inline is chosen
    assert count_displayed_widgets(nb) == 1
    assert figures_in(nb) == 1
    assert nbformat.read(path, as_version=4).cells[0].outputs == []  # file untouched
    # The kernel's stderr is this process's: over TCP, ipykernel warns there at every start.
    assert "without encryption" not in capfd.readouterr().err


@pytest.mark.slow
def test_execute_notebook_runs_the_smoke_notebook():
    nb = execute_notebook(FIXTURES / "smoke_widgets.ipynb")
    assert count_displayed_widgets(nb) == 1
    assert widget_portability_problems(nb) == []  # ipywidgets 8 state, core modules: VS Code and Colab
    assert figures_in(nb) == 1  # the figure lives inside the Output widget's state


@pytest.mark.slow
def test_execute_notebook_reports_an_error_hidden_in_an_output_widget(tmp_path):
    path = write_notebook(tmp_path / "hidden.ipynb", "x = 1", BROKEN_WIDGET_CELL)
    with pytest.raises(NotebookError) as caught:
        execute_notebook(path)
    error = caught.value
    assert error.where == "output widget"
    assert error.cell_index == 1
    assert "ZeroDivisionError" in error.traceback
    assert "1 / 0" in str(error)


@pytest.mark.slow
def test_execute_notebook_reports_a_failing_cell(tmp_path):
    path = write_notebook(tmp_path / "failing.ipynb", "x = 1", "undefined_name", "print('never')")
    with pytest.raises(NotebookError) as caught:
        execute_notebook(path)
    assert caught.value.cell_index == 1 and caught.value.where == "cell"
    assert "NameError" in caught.value.traceback


# --------------------------------------------------------------------------------------
# check_notebook_pairs
# --------------------------------------------------------------------------------------


def make_pair(folder, name="lesson"):
    nb = jupytext.reads("# %% [markdown]\n# Title\n\n# %%\nx = 1\n\n# %%\nprint(x)\n", fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(nb, folder / f"{name}.ipynb")
    jupytext.write(nb, folder / f"{name}.py", fmt="py:percent")
    return folder / f"{name}.ipynb", folder / f"{name}.py"


def test_check_notebook_pairs_accepts_a_clean_pair(tmp_path):
    make_pair(tmp_path)
    assert check_notebook_pairs(tmp_path) == []


def test_check_notebook_pairs_detects_a_drifted_pair(tmp_path):
    _, script = make_pair(tmp_path)
    script.write_text(script.read_text().replace("x = 1", "x = 2"))
    [problem] = check_notebook_pairs(tmp_path)
    assert "differ" in problem and "x = 2" in problem


def test_check_notebook_pairs_detects_a_missing_script(tmp_path):
    _, script = make_pair(tmp_path)
    script.unlink()
    [problem] = check_notebook_pairs(tmp_path)
    assert "missing" in problem


def test_check_notebook_pairs_detects_committed_outputs(tmp_path):
    notebook, _ = make_pair(tmp_path)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[2].execution_count = 1
    nbformat.write(nb, notebook)
    problems = check_notebook_pairs(tmp_path)
    assert any("stored outputs" in problem for problem in problems)
    assert any("execution count" in problem for problem in problems)


def test_repository_notebooks_are_paired_and_stripped():
    assert check_notebook_pairs(NOTEBOOKS, NOTEBOOKS / "for_instructors" / "scripts") == []
    assert check_notebook_pairs(FIXTURES) == []  # the fixture keeps its twin beside it
