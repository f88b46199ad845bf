"""The browser harness, proved on notebooks/for_instructors/fixtures/smoke_widgets.ipynb: JupyterLab runs it, the
button and the slider redraw the figure, and errors from callbacks are caught; Voila
serves it with working widgets.

Skipped when /usr/bin/chromium is missing, except under CI (env CI set), where that fails.
"""

from pathlib import Path

import browser_support
import pytest
from browser_support import jupyterlab_page, require_chromium, voila_page

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks" / "for_instructors" / "fixtures"
SMOKE = "smoke_widgets.ipynb"


@pytest.fixture
def chromium():
    """Skip (locally) or fail (in CI) when Debian's Chromium is missing."""
    require_chromium()


def test_missing_chromium_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(browser_support, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI environment must provide it"):
        require_chromium()


@pytest.mark.browser
@pytest.mark.slow
def test_jupyterlab_runs_and_drives_the_smoke_notebook(chromium, tmp_path):
    stored = (NOTEBOOKS / SMOKE).read_bytes()
    with jupyterlab_page(NOTEBOOKS, SMOKE, artifacts_dir=tmp_path / "artifacts") as lab:
        lab.run_all()
        lab.check_no_errors()
        first = lab.wait_for_output_image()
        assert lab.slider_readout() == "1"

        lab.click_button("Next frequency")
        second = lab.wait_for_image_change(first)
        assert lab.slider_readout() == "2"

        lab.press_slider("ArrowRight")
        lab.wait_for_image_change(second)
        assert lab.slider_readout() == "3"
        assert lab.run_in_kernel("print(frequency.value)").strip() == "3"
        lab.check_no_errors()
        shot = lab.screenshot(tmp_path / "smoke_lab.png")
        assert shot.stat().st_size > 10_000

        # The harness must see an exception raised by a callback that the browser triggered.
        lab.run_in_kernel("next_button.on_click(lambda button: 1 / 0)")
        lab.click_button("Next frequency")
        lab.wait_for(lab.kernel_errors, timeout=15, what="the callback's error")
        with pytest.raises(AssertionError, match="ZeroDivisionError"):
            lab.check_no_errors()

    # The server worked on a copy: the repository's notebook is untouched.
    assert (NOTEBOOKS / SMOKE).read_bytes() == stored


@pytest.mark.browser
@pytest.mark.slow
def test_voila_serves_the_smoke_notebook_with_working_widgets(chromium, tmp_path):
    with voila_page(NOTEBOOKS / SMOKE, artifacts_dir=tmp_path / "artifacts") as dashboard:
        first = dashboard.wait_for_output_image()
        dashboard.click_button("Next frequency")
        dashboard.wait_for_image_change(first)
        assert dashboard.slider_readout() == "2"
        dashboard.check_no_errors()
        dashboard.screenshot(tmp_path / "smoke_voila.png")
