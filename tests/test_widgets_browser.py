"""notebooks/widgets_demo.ipynb in a real browser: JupyterLab 4 and Voila in headless Chromium.

JupyterLab runs every cell; then the test checks that both widgets rendered (no "Error displaying
widget", no traceback in an Output, no kernel error from a callback), presses the stepper's Next
button, picks a stage from its list, moves its layer slider, clicks a token in the attention
explorer and appends a token, checking each time that the picture changed and that the kernel
agrees on the state. Voila serves the same notebook as a dashboard with working widgets.

The kernel imports this checkout's gemma_lab and loads the bundled tiny model. Skipped when
/usr/bin/chromium is missing, except under CI (env CI set), where that fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import jupyterlab_page, require_chromium, voila_page

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DEMO = "widgets_demo.ipynb"
# CSS classes the widgets put on their outer box (WidgetBase._root).
STEPPER = ".gemma-lab-inferencestepper"
ATTENTION = ".gemma-lab-attentionexplorer"
PROMPT = "When Mary and John went to the store, John gave a drink to"  # both widgets' text in the demo

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def chromium():
    """Skip (locally) or fail (in CI) when Debian's Chromium is missing."""
    require_chromium()


def kernel_env() -> dict:
    """This checkout's gemma_lab, the bundled tiny model, one torch thread (the machine has two cores)."""
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": python_path, "GEMMA_LAB_MODEL": "", "OMP_NUM_THREADS": "1"}


def image_src(page, scope: str) -> str | None:
    """The src (a data: URL) of the first PNG in an Output widget inside ``scope``, or None."""
    images = page.locator(f'{scope} .widget-output img[src^="data:image/png"]')
    return images.first.get_attribute("src") if images.count() else None


def wait_for_new_image(widget_page, scope: str, previous: str | None) -> str:
    def changed():
        src = image_src(widget_page.page, scope)
        return src if src and src != previous else None

    return widget_page.wait_for(changed, 30, f"a new picture in {scope}")


def both_widgets(page) -> bool:
    return bool(page.locator(STEPPER).count() and page.locator(ATTENTION).count())


def select_stage(page, title: str) -> None:
    """Click the stage whose label contains ``title`` in the stepper's list."""
    select = page.locator(f"{STEPPER} select").first
    # ipywidgets writes the labels' spaces as no-break spaces, to keep them.
    labels = [label.replace("\xa0", " ") for label in select.locator("option").all_text_contents()]
    select.select_option(index=next(i for i, label in enumerate(labels) if title in label))


def check_prompt_boxes(widget_page, screenshots: Path) -> None:
    """Each widget's prompt box is wide (500 px or more in a 1280 px window) and reaches the right edge
    of its widget, and no text box is cut off there (last round's boxes overflowed their box by 4 px)."""
    for scope in (STEPPER, ATTENTION):
        boxes = widget_page.text_boxes(scope)
        prompt = next(box for box in boxes if box["description"] == "text")
        assert prompt["width"] >= 500 and prompt["right"] >= prompt["scope_right"] - 8, (scope, prompt)
        for box in boxes:
            assert box["right"] <= box["visible_right"] + 0.5, (scope, box)
        widget_page.screenshot(screenshots / f"{scope.strip('.')}-text.png", selector=f"{scope} .widget-text")


def test_jupyterlab_runs_the_demo_and_its_widgets_respond(chromium, tmp_path):
    stored = (NOTEBOOKS / DEMO).read_bytes()
    with jupyterlab_page(NOTEBOOKS, DEMO, env=kernel_env(), artifacts_dir=tmp_path / "artifacts") as lab:
        page = lab.page
        lab.run_all(timeout=120)
        lab.wait_for(lambda: both_widgets(page), 30, "the stepper and the attention explorer")
        lab.check_no_errors()
        check_prompt_boxes(lab, tmp_path)
        assert "When Mary and John" in page.locator(f"{STEPPER} .widget-output").first.inner_text()
        pattern_before = lab.wait_for(lambda: image_src(page, ATTENTION), 30, "the attention pattern")

        # Next: text -> tokens -> embedding rows (the first stage with a picture) -> x sqrt(d_model)
        lab.click_button("Next ▶")
        lab.wait_for(lambda: page.locator(f"{STEPPER} .widget-output table").count(), 30, "the token table")
        lab.click_button("Next ▶")
        embedding = wait_for_new_image(lab, STEPPER, None)
        lab.click_button("Next ▶")
        scaled = wait_for_new_image(lab, STEPPER, embedding)
        assert lab.run_in_kernel("print(stepper.current_stage)").strip() == "embed_scale"

        # The stage list, then the layer slider.
        select_stage(page, "softmax pattern")
        pattern = wait_for_new_image(lab, STEPPER, scaled)
        handle = page.locator(f"{STEPPER} .widget-slider .noUi-handle").first  # the layer slider
        handle.focus()
        handle.press("ArrowRight")
        wait_for_new_image(lab, STEPPER, pattern)
        state = lab.run_in_kernel("print(stepper.current_stage, stepper.layer_slider.value)").split()
        assert state == ["pattern", "1"]
        lab.check_no_errors()
        lab.screenshot(tmp_path / "stepper.png", selector=STEPPER)
        assert (tmp_path / "stepper.png").stat().st_size > 20_000

        # The attention explorer: click the second " John" (pos 10; the first is pos 4).
        buttons = page.locator(f"{ATTENTION} .widget-toggle-buttons button")
        buttons.nth(10).click()
        wait_for_new_image(lab, ATTENTION, pattern_before)
        assert lab.run_in_kernel("print(attention.selected_pos)").strip() == "10"
        classes = [buttons.nth(i).get_attribute("class") or "" for i in range(buttons.count())]
        active = [i for i, names in enumerate(classes) if "mod-active" in names]
        assert active == [10]  # the clicked button is the one highlighted, not the first " John"

        # Append the chosen token: one more pass, through the KV cache.
        current = image_src(page, STEPPER)
        lab.click_button("Append token")
        wait_for_new_image(lab, STEPPER, current)
        state = lab.run_in_kernel("print(stepper.current_stage, len(stepper.generated))").split()
        assert state == ["kv_cache", "1"]
        assert "KV cache length per layer" in page.locator(STEPPER).inner_text()
        grown = lab.run_in_kernel("print(stepper.text_box.value)").rstrip("\n")
        assert grown.startswith(PROMPT) and len(grown) > len(PROMPT)
        assert lab.text_boxes(STEPPER)[0]["value"] == grown  # the box on screen shows the appended token
        lab.check_no_errors()
        lab.screenshot(tmp_path / "lab.png")

    assert (NOTEBOOKS / DEMO).read_bytes() == stored  # the server worked on a copy


def test_voila_serves_the_demo_with_working_widgets(chromium, tmp_path):
    with voila_page(NOTEBOOKS / DEMO, env=kernel_env(), artifacts_dir=tmp_path / "artifacts") as dashboard:
        page = dashboard.page
        dashboard.wait_for(lambda: both_widgets(page), 60, "the stepper and the attention explorer")
        dashboard.check_no_errors()
        check_prompt_boxes(dashboard, tmp_path)
        dashboard.click_button("Next ▶")
        dashboard.click_button("Next ▶")
        first = wait_for_new_image(dashboard, STEPPER, None)
        dashboard.click_button("Next ▶")
        wait_for_new_image(dashboard, STEPPER, first)
        dashboard.check_no_errors()
        dashboard.screenshot(tmp_path / "voila.png")
