"""The documentation site (tools/docs_site.py, mkdocs.yml): the README's build command, run as
written, builds it strictly; headless Chromium then shows its home page, a lesson with its figures
and widget snapshots, a lesson's formulas typeset, an API page, the hook table and search results,
and screenshots are saved.

The pieces are checked on small inputs first: links rewritten into the site, widgets frozen into
snapshots, the link checker finding what is broken.

Named to run after tests/test_notebooks.py: the notebook tests leave their tiny-model runs in the
build's cache (build/docs-lessons), so the build here executes no lesson that they ran already.
Without them it executes the lessons itself (slower, same result).
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import subprocess
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
from browser_support import chromium_page, require_chromium
from test_doc_commands import RUN_ELSEWHERE, bash_commands

import gemma_lab
from tools import docs_site

ROOT = Path(__file__).resolve().parent.parent
BUILD_COMMAND = next(c for c, test in RUN_ELSEWHERE.items() if test == "tests/test_site.py")
# A PNG of one pixel, for widget snapshots.
PIXEL = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                  "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
).decode()


# --------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------


def test_links_are_rewritten_into_the_site_or_to_the_repository(caplog):
    readme_like = ("[hooks](docs/hooks.md#every-hook-point) ![shot](docs/images/stepper.png) "
                   "[tour](notebooks/00_tour.ipynb) [card](data/tiny-sae/README.md) [web](https://example.org/x.md) "
                   "[here](#licence)")
    rewritten = docs_site.rewrite_links(readme_like, ROOT, "", "README.md")
    repository = docs_site.repository_url()
    assert rewritten == ("[hooks](hooks.md#every-hook-point) ![shot](images/stepper.png) "
                         "[tour](lessons/00_tour.ipynb) "
                         f"[card]({repository}/blob/main/data/tiny-sae/README.md) [web](https://example.org/x.md) "
                         "[here](#licence)")
    # From a page of docs/ and from a lesson (lessons/ in the site).
    assert docs_site.rewrite_links("[demo](../notebooks/00_tour.ipynb)", ROOT / "docs", "", "x.md") == \
        "[demo](lessons/00_tour.ipynb)"
    assert docs_site.rewrite_links("[hooks](../docs/hooks.md)", ROOT / "notebooks", "lessons", "x.ipynb") == \
        "[hooks](../hooks.md)"
    # A link to nothing is reported (a warning: an error in the strict build) and left as it is.
    with caplog.at_level(logging.WARNING):
        assert docs_site.rewrite_links("[gone](docs/no-such-page.md)", ROOT, "", "README.md") == \
            "[gone](docs/no-such-page.md)"
    assert "README.md links to docs/no-such-page.md, which does not exist" in caplog.text


def _widget_notebook() -> nbformat.NotebookNode:
    """A notebook showing VBox(HBox(IntSlider 'layer' = 3, Dropdown 'head'), Output(figure, text)),
    with the widget state nbclient stores after running it."""
    states = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_row", "IPY_MODEL_out"]}},
        "row": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_menu"]}},
        "slider": {"model_name": "IntSliderModel", "state": {"description": "layer", "value": 3}},
        "menu": {"model_name": "DropdownModel",
                 "state": {"description": "head", "index": 1, "_options_labels": ["H0", "H1 <all>"]}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [
            {"output_type": "display_data", "data": {"image/png": PIXEL, "text/plain": "<Figure>"}, "metadata": {}},
            {"output_type": "stream", "name": "stdout", "text": "loss 1.25\n"}]}},
    }
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("AttentionExplorer(model, tokenizer)")
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={docs_site.WIDGET_VIEW_MIME: {"model_id": "box", "version_major": 2, "version_minor": 0},
                              "text/plain": "VBox(...)"})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {docs_site.WIDGET_STATE_MIME: {"state": states, "version_major": 2, "version_minor": 0}}
    return nb


def test_widgets_are_frozen_into_what_they_showed():
    nb = _widget_notebook()
    docs_site.freeze_widgets(nb)
    data = nb.cells[0].outputs[0]["data"]
    assert docs_site.WIDGET_VIEW_MIME not in data and "widgets" not in nb.metadata
    snapshot = data["text/html"]
    assert 'layer <b>3</b>' in snapshot
    assert 'head <b>H1 &lt;all&gt;</b>' in snapshot  # the label of the chosen option, escaped
    assert f'src="data:image/png;base64,{PIXEL}"' in snapshot
    assert "<pre>loss 1.25\n</pre>" in snapshot
    assert snapshot.index("layer") < snapshot.index("data:image/png")  # the widget's order is kept


def test_an_error_in_an_output_widget_is_found():
    nb = _widget_notebook()
    assert docs_site.output_widget_error(nb) is None
    outputs = nb.metadata["widgets"][docs_site.WIDGET_STATE_MIME]["state"]["out"]["state"]["outputs"]
    outputs.append({"output_type": "error", "ename": "ValueError", "evalue": "bad layer", "traceback": []})
    assert docs_site.output_widget_error(nb) == "ValueError: bad layer"


@pytest.mark.slow
def test_a_lesson_that_fails_is_reported_and_not_cached(tmp_path):
    lesson = tmp_path / "99_broken.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('first cell runs')"),
                nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nb, lesson)
    destination = tmp_path / "cache" / "99_broken-0.ipynb"
    destination.parent.mkdir()
    failure = docs_site._execute_into(lesson, destination)
    assert failure is not None and "99_broken.ipynb fails on the tiny model" in failure and "ZeroDivisionError" in failure
    assert not destination.exists()


def test_the_link_checker_finds_missing_pages_and_anchors(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="api/model.html#gemma_lab.model.Gemma">ok</a> <a href="api/model.html#nowhere">anchor</a> '
        '<a href="gone.html">page</a> <img src="images/none.png"> <a href="https://example.org/x">web</a> '
        '<a href="#top">self</a> <h1 id="top">Top</h1> <img src="data:image/png;base64,AAAA">')
    (tmp_path / "api" / "model.html").write_text(
        '<h2 id="gemma_lab.model.Gemma">Gemma</h2> <a href="../index.html#top">back</a> <a href="../index.html">home</a>')
    assert docs_site.broken_links(tmp_path) == [
        "index.html: api/model.html#nowhere (no such anchor)", "index.html: gone.html", "index.html: images/none.png"]


def test_the_readme_gives_the_build_command():
    assert any(BUILD_COMMAND in command for _, command in bash_commands())


# --------------------------------------------------------------------------------------
# The built site in a browser
# --------------------------------------------------------------------------------------


@contextmanager
def served(folder: Path):
    """``folder`` over HTTP on a free local port (search runs in a web worker, which needs it)."""

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def _loaded_images(page, selector: str) -> int:
    """How many images matching ``selector`` the browser decoded (width above zero)."""
    return page.evaluate(f"() => [...document.querySelectorAll({selector!r})].filter(i => i.naturalWidth > 0).length")


@pytest.mark.slow
@pytest.mark.browser
def test_the_readme_build_command_makes_a_site_that_renders(tmp_path):
    require_chromium()
    where, command = next((w, c) for w, c in bash_commands() if BUILD_COMMAND in c)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, f"{where} failed:\n{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    site = tmp_path / "site"
    assert docs_site.broken_links(site) == []  # the build checked this too; the built site is what counts
    lessons = sorted(p.stem for p in (ROOT / "notebooks").glob(docs_site.LESSON_GLOB))
    assert sorted(p.stem for p in (site / "lessons").glob("*.html")) == lessons
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with served(site) as base, chromium_page() as page:
        failures = []
        page.on("pageerror", lambda error: failures.append(str(error)))

        page.goto(f"{base}/index.html")
        assert f"version {gemma_lab.__version__}" in page.locator("article").inner_text()
        assert page.locator("nav.md-nav a", has_text="Attention patterns").count() >= 1
        page.screenshot(path=str(shots / "home.png"))

        page.goto(f"{base}/lessons/09_attention_patterns_and_induction.html")
        text = page.locator("article").inner_text()
        assert "Traceback" not in text and "Error displaying widget" not in text
        assert _loaded_images(page, '.jp-OutputArea img[src^="data:image/png"]') >= 2  # figures, widget ones too
        snapshot = page.locator(".gl-frozen-widget").first
        assert _loaded_images(page, ".gl-frozen-widget img") >= 1
        assert "layer" in snapshot.inner_text()
        snapshot.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "lesson.png"))

        page.goto(f"{base}/lessons/02_embeddings_and_rmsnorm.html")  # formulas, typeset by the site's MathJax
        page.locator(".MathJax_Display").first.wait_for()
        assert "$$" not in page.locator("article").inner_text()

        page.goto(f"{base}/api/gemma_lab.model.html")
        gemma = page.locator('[id="gemma_lab.model.Gemma"]')
        assert gemma.count() == 1 and "Gemma" in gemma.inner_text()
        assert page.locator('[id="gemma_lab.model.Gemma.run_with_cache"]').count() == 1
        page.screenshot(path=str(shots / "api.png"))

        page.goto(f"{base}/hooks.html#every-hook-point")
        table = page.locator("article table").last.inner_text()
        assert "blocks.{layer}.attn.hook_pattern" in table and "[batch, head, q_pos, k_pos]" in table

        page.goto(f"{base}/index.html")
        page.locator("input.md-search__input").click()
        page.locator("input.md-search__input").fill("run_with_cache")
        results = page.locator(".md-search-result__item")
        results.first.wait_for()
        assert results.count() >= 3
        page.screenshot(path=str(shots / "search.png"))
        results.first.locator("a").first.click()
        page.wait_for_load_state()
        assert "run_with_cache" in page.locator("article").inner_text()

        assert not failures, f"script errors in the site's pages: {failures}"
    for name in ("home", "lesson", "api", "search"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
