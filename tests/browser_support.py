"""A real browser for widget notebooks: JupyterLab (or Voila) driven by headless Chromium.

``jupyterlab_page(notebook_dir, notebook_name)`` starts a private JupyterLab on a copy of
``notebook_dir``, opens the notebook in Debian's Chromium through Playwright and yields a
``LabPage`` that can run all cells, press widgets and check that nothing failed.
``voila_page(notebook_path)`` does the same through Voila and yields a ``VoilaPage``.
``require_chromium()`` applies the suite's rule for a missing browser.

Nothing in the repository is written: the server's root is a temporary copy, and its
settings (autosave off, news off, every cell kept in the DOM) and workspaces live in a
temporary folder. Only the server process started here is ever stopped.

Facts this relies on are in the project's Jupyter testing notes (selectors for
ipywidgets 8, ``window.jupyterapp`` from ``--LabApp.expose_app_in_browser``, why callback
errors must be read from the kernel's iopub channel).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# JupyterLab user settings for a test run, by plugin id.
LAB_SETTINGS = {
    # Autosave would write executed outputs back into the notebook.
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    # Windowing would drop off-screen cells from the DOM.
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}

WIDGET_ERROR_TEXT = "Error displaying widget"
SERVER_START_TIMEOUT = 60
KERNEL_START_TIMEOUT = 60


def require_chromium() -> None:
    """Skip the calling test when /usr/bin/chromium is missing, but fail under CI.

    In CI (environment variable CI set) a missing browser is a broken set-up, not a reason
    to skip: .ci/run installs it.
    """
    import pytest

    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing (install it with: apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; the CI environment must provide it")
    pytest.skip(message)


# --------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------


class WidgetPage:
    """A browser page showing ipywidgets 8 widgets; ``page`` is the Playwright Page."""

    def __init__(self, page, log_path: Path | None = None):
        self.page = page
        self.log_path = log_path

    # Finding and pressing widgets ---------------------------------------------------

    def click_button(self, description: str) -> None:
        """Click the widget Button whose text is exactly ``description``."""
        button = self.page.locator("button.widget-button").filter(
            has_text=re.compile(rf"^\s*{re.escape(description)}\s*$")
        )
        button.first.click()

    def press_slider(self, key: str = "ArrowRight", index: int = 0, times: int = 1) -> None:
        """Focus the handle of the ``index``-th slider and press ``key`` (one step per press)."""
        handle = self.page.locator(".widget-slider .noUi-handle").nth(index)
        handle.focus()
        for _ in range(times):
            handle.press(key)

    def slider_readout(self, index: int = 0) -> str:
        """The text the ``index``-th slider shows as its value."""
        return self.page.locator(".widget-slider .widget-readout").nth(index).inner_text().strip()

    def output_image_src(self, index: int = 0) -> str | None:
        """The src of the ``index``-th PNG inside an Output widget (a data: URL), or None."""
        images = self.page.locator('.widget-output img[src^="data:image/png"]')
        if images.count() <= index:
            return None
        return images.nth(index).get_attribute("src")

    def wait_for_output_image(self, index: int = 0, timeout: float = 30) -> str:
        """Wait until an Output widget shows a PNG and return its src."""
        return self.wait_for(lambda: self.output_image_src(index), timeout, "an image in an Output widget")

    def wait_for_image_change(self, previous: str | None, index: int = 0, timeout: float = 30) -> str:
        """Wait until the ``index``-th Output image differs from ``previous``; return the new src."""

        def changed():
            src = self.output_image_src(index)
            return src if src and src != previous else None

        return self.wait_for(changed, timeout, "the Output widget's image to change")

    def screenshot(self, path, selector: str | None = None) -> Path:
        """Save a PNG screenshot to ``path`` and return it.

        With ``selector``, only the first matching element; otherwise the window, scrolled
        so that the last widget shown is in view (JupyterLab scrolls inside its panels, so
        a "full page" would not reach it).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if selector is not None:
            self.page.locator(selector).first.screenshot(path=str(path))
            return path
        widgets = self.page.locator(".jupyter-widgets")
        if widgets.count():
            widgets.last.scroll_into_view_if_needed()
        self.page.screenshot(path=str(path))
        return path

    def text_boxes(self, scope: str) -> list[dict]:
        """The rendered geometry of every Text and Textarea widget inside ``scope`` (a CSS selector).

        One dict per box, in page order: ``description`` (its label), ``value``, ``width`` and
        ``right`` (the input element's box, in CSS pixels), ``scope_right`` (where the first element
        matching ``scope`` ends), and ``visible_right``: where the nearest enclosing element that clips
        its overflow (CSS ``overflow`` other than visible) ends; a box whose ``right`` is past it
        is cut off on screen.
        """
        return self.page.evaluate(_TEXT_BOXES_JS, scope)

    # Checking -------------------------------------------------------------------------

    def widget_problems(self) -> list[str]:
        """Visible signs of failure: widgets that failed to render, tracebacks in Outputs."""
        problems = []
        body = self.page.locator("body").inner_text()
        if WIDGET_ERROR_TEXT in body:
            problems.append(f"the page shows {WIDGET_ERROR_TEXT!r}")
        for text in self.page.locator(".widget-output").all_inner_texts():
            if "Traceback" in text:
                problems.append(f"an Output widget shows an error:\n{text[-2000:]}")
        return problems

    def check_no_errors(self) -> None:
        """Raise AssertionError listing every problem found (see ``widget_problems``)."""
        problems = self.widget_problems()
        assert not problems, "\n\n".join(problems)

    def wait_for(self, probe, timeout: float, what: str, interval: float = 0.1):
        """Call ``probe()`` until it returns something true and return that; TimeoutError
        (naming ``what``) after ``timeout`` seconds. The page keeps working meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self.page.wait_for_timeout(interval * 1000)


# JavaScript run in JupyterLab's page. The app is window.jupyterapp; the notebook is the
# current widget of its shell.
_JS_NOTEBOOK_READY = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  return !!(panel && panel.sessionContext && panel.content && panel.context && panel.context.isReady);
}"""

_JS_KERNEL_STATUS = """() => {
  const session = window.jupyterapp.shell.currentWidget.sessionContext.session;
  return session && session.kernel ? session.kernel.status : null;
}"""

# Every iopub error message of the kernel, whether from a cell or from a widget callback
# (which JupyterLab would otherwise send to its log console only).
_JS_LISTEN_FOR_ERRORS = """() => {
  window.__gemmaLabKernelErrors = [];
  const context = window.jupyterapp.shell.currentWidget.sessionContext;
  context.iopubMessage.connect((_, message) => {
    if (message.header.msg_type === "error") {
      const content = message.content;
      window.__gemmaLabKernelErrors.push({ename: content.ename, evalue: content.evalue,
                                          traceback: content.traceback.join("\\n")});
    }
  });
}"""

# Code cells that JupyterLab will execute (it skips empty ones), and whether they are done:
# not running or queued, with an execution count above the one seen before the run.
_JS_CODE_CELLS = """const codeCells = () => window.jupyterapp.shell.currentWidget.content.widgets.filter(
  cell => cell.model.type === "code" && cell.model.sharedModel.getSource().trim() !== "");"""

_JS_LAST_EXECUTION_COUNT = f"""() => {{ {_JS_CODE_CELLS}
  return Math.max(0, ...codeCells().map(cell => cell.model.executionCount || 0));
}}"""

_JS_CELLS_DONE = f"""(after) => {{ {_JS_CODE_CELLS}
  return codeCells().every(cell => cell.model.executionState !== "running"
                                   && cell.model.executionCount !== null
                                   && cell.model.executionCount > after);
}}"""

_JS_RUN_IN_KERNEL = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({code: code, store_history: false});
  let text = "";
  future.onIOPub = (message) => {
    if (message.header.msg_type === "stream") { text += message.content.text; }
    if (message.header.msg_type === "error") {
      text += message.content.ename + ": " + message.content.evalue;
    }
  };
  await future.done;
  return text;
}"""


class LabPage(WidgetPage):
    """A notebook open in JupyterLab, its kernel started and idle, kernel errors recorded."""

    def run_all(self, timeout: float = 120) -> None:
        """Run all cells and wait until every non-empty code cell has executed.

        Stops early with AssertionError if the kernel reports an error (a later cell would
        then never run).
        """
        after = self.page.evaluate(_JS_LAST_EXECUTION_COUNT)
        # Not awaited in the page: the wait below has its own timeout and error check.
        self.page.evaluate('() => { window.jupyterapp.commands.execute("notebook:run-all-cells"); }')
        self.wait_until_executed(after, timeout)

    def wait_until_executed(self, after: int = 0, timeout: float = 120) -> None:
        """Wait until every non-empty code cell has an execution count above ``after``, none
        is running or queued, and the kernel is idle. AssertionError on a kernel error."""
        deadline = time.monotonic() + timeout
        while not (
            self.page.evaluate(_JS_CELLS_DONE, after) and self.page.evaluate(_JS_KERNEL_STATUS) == "idle"
        ):
            errors = self.kernel_errors()
            if errors:
                raise AssertionError("the kernel reported an error while running:\n" + _format_errors(errors))
            if time.monotonic() > deadline:
                raise TimeoutError(f"cells still running after {timeout} s")
            self.page.wait_for_timeout(100)

    def kernel_errors(self) -> list[dict]:
        """Error messages the kernel sent since the page opened: dicts ename, evalue, traceback."""
        return self.page.evaluate("() => window.__gemmaLabKernelErrors.slice()")

    def run_in_kernel(self, code: str) -> str:
        """Execute ``code`` in the notebook's kernel (not as a cell); return what it printed."""
        return self.page.evaluate(_JS_RUN_IN_KERNEL, code)

    def widget_problems(self) -> list[str]:
        """Also the kernel's error messages, e.g. from a widget callback run by a click."""
        problems = super().widget_problems()
        errors = self.kernel_errors()
        if errors:
            problems.append("the kernel reported errors:\n" + _format_errors(errors))
        return problems


class VoilaPage(WidgetPage):
    """A notebook served as a Voila dashboard (every cell already run)."""

    def widget_problems(self) -> list[str]:
        """Also a cell that failed while Voila ran the notebook (tracebacks are shown)."""
        problems = super().widget_problems()
        body = self.page.locator("body").inner_text()
        if "There was an error when executing cell" in body or "Traceback (most recent call last)" in body:
            problems.append(f"Voila shows a failed cell:\n{body[-3000:]}")
        return problems


def _format_errors(errors: list[dict]) -> str:
    ansi = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
    return "\n".join(
        f"{error['ename']}: {error['evalue']}\n{ansi.sub('', error['traceback'])}" for error in errors
    )


# --------------------------------------------------------------------------------------
# Servers and the browser
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(env: dict | None, **extra) -> dict:
    """os.environ plus ``env`` and ``extra``, without MPLBACKEND (kernels inherit it)."""
    merged = {**os.environ, **(env or {}), **extra}
    merged.pop("MPLBACKEND", None)
    return merged


def write_lab_settings(settings_dir: Path) -> None:
    for plugin_id, values in LAB_SETTINGS.items():
        package, plugin = plugin_id.split(":")
        path = settings_dir / package / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


@contextmanager
def _server(command: list[str], env: dict, log_path: Path, ready, shutdown=None) -> Iterator[None]:
    """Start ``command``; wait until ``ready()`` is true; on exit call ``shutdown()`` and then
    terminate the process if it is still there (only this process: its kernels are stopped
    by the server's own shutdown)."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"server exited with code {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {SERVER_START_TIMEOUT} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield
    finally:
        steps = [process.terminate, process.kill]
        if shutdown is not None and process.poll() is None:
            shutdown()
            steps.insert(0, None)  # first give the server time to stop by itself
        for stop in steps:
            if process.poll() is not None:
                break
            if stop is not None:
                stop()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def _request(url: str, token: str | None = None, method: str = "GET", timeout: float = 5) -> int | None:
    """HTTP status of ``url``, or None when nothing answers."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _tail(log_path: Path, characters: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-characters:]
    except OSError:
        return "(no server log)"


def _leaves_this_machine(url: str) -> bool:
    """True for a request that would leave this machine (http(s) to any other host)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in (
        "127.0.0.1",
        "localhost",
        "::1",
    )


_TEXT_BOXES_JS = """(scope) => {
  const root = document.querySelector(scope);
  const boxes = root ? root.querySelectorAll('.widget-text, .widget-textarea') : [];
  return Array.from(boxes).map((widget) => {
    const input = widget.querySelector('input, textarea');
    const box = input.getBoundingClientRect();
    let visibleRight = Infinity;
    for (let element = input.parentElement; element; element = element.parentElement) {
      const style = getComputedStyle(element);
      if (style.overflowX !== 'visible' || style.overflow !== 'visible') {
        visibleRight = Math.min(visibleRight, element.getBoundingClientRect().right);
      }
    }
    const label = widget.querySelector('label');
    return {description: label ? label.textContent.trim() : '', value: input.value, width: box.width,
            right: box.right, scope_right: root.getBoundingClientRect().right, visible_right: visibleRight};
  });
}"""


@contextmanager
def chromium_page(viewport=(1280, 1000)):
    """A fresh page in headless Debian Chromium (never a Playwright-downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            # Offline like CI: anything not served from this machine fails at once. Voila's page
            # asks a CDN for Font Awesome; on a machine whose network drops packets instead of
            # refusing them, that stylesheet held the page's load event past every timeout.
            context.route(_leaves_this_machine, lambda route: route.abort("internetdisconnected"))
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def _copy_notebooks(source: Path, destination: Path) -> Path:
    shutil.copytree(
        source, destination, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc")
    )
    return destination


@contextmanager
def _keep_evidence(page, log_path: Path, artifacts_dir) -> Iterator[None]:
    """On failure, save a screenshot and the server log into ``artifacts_dir`` (if given).
    Entered while the page is open, so that the screenshot shows the failure."""
    try:
        yield
    except BaseException:
        from playwright.sync_api import Error as PlaywrightError

        if artifacts_dir is not None:
            artifacts = Path(artifacts_dir)
            artifacts.mkdir(parents=True, exist_ok=True)
            try:
                page.screenshot(path=str(artifacts / "failure.png"))
            except PlaywrightError as error:  # a crashed page still leaves the log worth keeping
                (artifacts / "failure.txt").write_text(f"no screenshot: {error}")
            if log_path.exists():
                shutil.copy(log_path, artifacts / "server.log")
        raise


@contextmanager
def jupyterlab_page(
    notebook_dir,
    notebook_name: str,
    *,
    env: dict | None = None,
    artifacts_dir=None,
) -> Iterator[LabPage]:
    """Open ``notebook_dir/notebook_name`` in a private JupyterLab in headless Chromium.

    Yields a ``LabPage`` once the notebook is open, its kernel idle (a "Select Kernel"
    dialog is accepted if one shows) and kernel errors are being recorded. Cells are not
    run: call ``run_all()``. The server works on a temporary copy of ``notebook_dir``, so
    outputs and checkpoints never reach the repository. ``env`` is added to the server's
    (and so the kernel's) environment, e.g. ``{"PYTHONPATH": ...}``; MPLBACKEND is removed.
    With ``artifacts_dir``, a failure leaves ``failure.png`` and ``server.log`` there.
    On exit the server is shut down with POST /api/shutdown (kernels included).
    """
    notebook_dir = Path(notebook_dir)
    if not (notebook_dir / notebook_name).is_file():
        raise FileNotFoundError(notebook_dir / notebook_name)

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gemma_lab_lab_")))
        root = _copy_notebooks(notebook_dir, workdir / "root")
        write_lab_settings(workdir / "settings")
        (workdir / "workspaces").mkdir()
        port, token = free_port(), secrets.token_hex(16)
        server_env = server_environment(
            env,
            JUPYTERLAB_SETTINGS_DIR=str(workdir / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(workdir / "workspaces"),
            JUPYTER_CONFIG_DIR=str(workdir / "config"),
            JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
        )
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", "--allow-root",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
            f"--ServerApp.root_dir={root}",
        ]  # fmt: skip
        base, log_path = f"http://127.0.0.1:{port}", workdir / "server.log"
        stack.enter_context(
            _server(
                command,
                server_env,
                log_path,
                ready=lambda: _request(f"{base}/api/status", token) == 200,
                shutdown=lambda: _request(f"{base}/api/shutdown", token, method="POST"),
            )
        )
        page = stack.enter_context(chromium_page())
        stack.enter_context(_keep_evidence(page, log_path, artifacts_dir))
        page.goto(f"{base}/lab/tree/{notebook_name}?token={token}")
        lab = LabPage(page, log_path)
        lab.wait_for(lambda: page.evaluate(_JS_NOTEBOOK_READY), KERNEL_START_TIMEOUT, "the notebook to open")
        _wait_for_kernel(lab)
        page.evaluate(_JS_LISTEN_FOR_ERRORS)
        yield lab


def _wait_for_kernel(lab: LabPage) -> None:
    """Wait for an idle kernel, accepting the kernel dialog of a notebook without kernelspec."""
    dialog_button = lab.page.locator(".jp-Dialog .jp-mod-accept")

    def kernel_idle():
        if dialog_button.count() and dialog_button.first.is_visible():
            dialog_button.first.click()
        return lab.page.evaluate(_JS_KERNEL_STATUS) == "idle"

    lab.wait_for(kernel_idle, KERNEL_START_TIMEOUT, "the kernel to be idle")


@contextmanager
def voila_page(
    notebook_path, *, env: dict | None = None, artifacts_dir=None, timeout: float = 180
) -> Iterator[VoilaPage]:
    """Serve ``notebook_path`` (a copy of its folder) with Voila and open it in Chromium.

    Yields a ``VoilaPage`` once the dashboard has rendered at least one widget (Voila runs
    every cell before showing them, with tracebacks shown). The page has no kernel error
    channel, so ``check_no_errors`` relies on what is visible. The Voila process (which
    stops its kernel) is terminated on exit.
    """
    notebook_path = Path(notebook_path)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gemma_lab_voila_")))
        root = _copy_notebooks(notebook_path.parent, workdir / "root")
        port = free_port()
        server_env = server_environment(
            env, JUPYTER_CONFIG_DIR=str(workdir / "config"), JUPYTER_RUNTIME_DIR=str(workdir / "runtime")
        )
        command = [
            sys.executable, "-m", "voila", str(root / notebook_path.name),
            "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", "--show_tracebacks=True",
        ]  # fmt: skip
        log_path = workdir / "server.log"
        # Voila runs the notebook on every GET of its page, so readiness is probed as an
        # open port only.
        stack.enter_context(_server(command, server_env, log_path, ready=lambda: _port_open(port)))
        page = stack.enter_context(chromium_page())
        stack.enter_context(_keep_evidence(page, log_path, artifacts_dir))
        page.goto(f"http://127.0.0.1:{port}/", timeout=timeout * 1000, wait_until="domcontentloaded")
        page.locator(".jupyter-widgets").first.wait_for(timeout=timeout * 1000)
        yield VoilaPage(page, log_path)
