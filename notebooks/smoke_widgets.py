# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Smoke notebook for the widget test harness (temporary)
#
# A fixture for `tests/test_browser.py`, not teaching material: a slider, a button and an
# Output widget whose matplotlib figure depends on the slider. It proves that the browser
# harness can run a notebook, press controls and see the picture change. It is to be
# removed once the package's own widget notebooks take over that role.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

# %%
frequency = widgets.IntSlider(value=1, min=1, max=5, description="frequency")
next_button = widgets.Button(description="Next frequency")
plot_output = widgets.Output()


def redraw(change=None):
    """Draw sin(frequency * x) into the Output widget, replacing the previous figure."""
    with plot_output:
        plot_output.clear_output(wait=True)
        # ioff: the figure is shown once, by display(), not again by the inline backend.
        with plt.ioff():
            fig, ax = plt.subplots(figsize=(4, 2.5))
        x = np.linspace(0, 2 * np.pi, 400)
        ax.plot(x, np.sin(frequency.value * x))
        ax.set_title(f"sin({frequency.value} x)")
        display(fig)
        plt.close(fig)


def advance(button):
    """Step the slider by one, wrapping round at its maximum."""
    span = frequency.max - frequency.min + 1
    frequency.value = frequency.min + (frequency.value - frequency.min + 1) % span


frequency.observe(redraw, names="value")
next_button.on_click(advance)
redraw()
display(widgets.VBox([widgets.HBox([frequency, next_button]), plot_output]))
