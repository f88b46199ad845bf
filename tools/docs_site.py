"""The documentation site: docs/, the lessons with their outputs, and an API reference read from the
docstrings, built with MkDocs (Material theme, mkdocs-jupyter, mkdocstrings). Works offline.

    python -m tools.docs_site                   # build ./site, strictly (any warning fails the build)
    python -m tools.docs_site --site-dir DIR    # somewhere else

``mkdocs.yml`` names this file as its hooks module, so ``mkdocs serve`` and ``mkdocs build --strict``
from the repository root build the same site. What the hooks add to docs/:

* ``index.md``: README.md, its links turned into links inside the site; the version is read from
  ``gemma_lab.__version__``;
* ``lessons/NN_*.ipynb``: every lesson executed on the bundled tiny model (one fresh kernel each, the
  way tests/test_notebooks.py runs them). Executed copies are cached under ``build/docs-lessons``,
  keyed by the notebook and everything it can read (``gemma_lab/``, ``data/``), so a second build
  with nothing changed executes nothing; the notebook tests put their own tiny-model runs there
  (``keep_executed_lesson``). Widgets cannot run in a static page: each one is replaced by a
  snapshot of what it showed (its controls' values, the figures and text of its Output widgets),
  taken from the widget state the kernel left in the executed notebook. Formulas are typeset by a
  MathJax copied into the site;
* ``api/*.md``: one page per module of ``gemma_lab`` (mkdocstrings reads the docstrings);
* ``changelog.md``: CHANGELOG.md, when there is one.

Links from pages to files outside the site (``../data/tiny-sae/README.md``) become links to the
repository on GitHub, after checking the file exists. After the build every internal link and
anchor of every HTML page is checked, the lessons' included; a broken one is a warning, so an
error under ``--strict``.

Why MkDocs rather than Jupyter Book 2 (MyST): Jupyter Book 2 downloads its HTML theme when it
builds, so it cannot build offline; MkDocs with mkdocs-jupyter renders matplotlib outputs as
images and builds offline. Widgets' live state would need a widget manager from a CDN when the
page is viewed, hence the snapshots. More in docs/docs-site.md.

A developer tool (run from a checkout), not part of the installed package. Imports neither torch
nor gemma_lab except to read the version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import html
import logging
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs"
LESSON_CACHE = ROOT / "build" / "docs-lessons"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
#: What an executed lesson depends on besides itself: the package and its bundled data.
LESSON_INPUTS = [ROOT / "gemma_lab", ROOT / "data"]
#: Kernels run side by side while executing lessons (each is a process).
WORKERS = int(os.environ.get("GEMMA_LAB_NOTEBOOK_WORKERS", "2"))
#: Per-cell limit when executing a lesson, in seconds.
CELL_TIMEOUT = 300

WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
_MODEL_REFERENCE = re.compile(r"^IPY_MODEL_(\w+)$")
_MARKDOWN_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")

log = logging.getLogger("mkdocs.plugins.gemma_lab_docs")


# --------------------------------------------------------------------------------------
# What the site holds
# --------------------------------------------------------------------------------------

#: The guide pages of docs/, in reading order; a page of docs/ not named here comes after them.
GUIDE_ORDER = ["teaching.md", "architecture.md", "hooks.md", "interp.md", "generation.md", "tokenizer.md",
               "sae.md", "plotting.md", "widgets.md", "transformerlens.md", "performance.md"]


def lessons() -> list[Path]:
    return sorted(NOTEBOOKS.glob(LESSON_GLOB))


def guide_pages() -> list[str]:
    present = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    return [name for name in GUIDE_ORDER if name in present] + [n for n in present if n not in GUIDE_ORDER]


def api_modules() -> list[str]:
    """Every public module of gemma_lab (dotted names), packages before their modules."""
    found = []
    for path in sorted((ROOT / "gemma_lab").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts) or "exercises" in parts[1:2] and len(parts) > 2:
            continue  # private modules; the per-lesson exercise files are the lessons' business
        found.append(".".join(parts))
    return found


def module_summary(module: str) -> str:
    """The first line of a module's docstring, read without importing it."""
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def version() -> str:
    """``gemma_lab.__version__`` of this checkout."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import gemma_lab

    return gemma_lab.__version__


def repository_url() -> str:
    """The repository's web address: ``Repository`` in pyproject.toml's [project.urls]."""
    match = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("pyproject.toml has no Repository entry in [project.urls]")
    return match.group(1).rstrip("/")


# --------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------


def site_target(repo_path: str) -> str | None:
    """Where a file of the repository lives in the site (a docs-relative path), or None."""
    path = Path(repo_path)
    if path.parts[:1] == ("docs",):
        return path.relative_to("docs").as_posix()
    if path.parent == Path("notebooks") and (NOTEBOOKS / path.name).match(LESSON_GLOB.replace(".ipynb", ".*")):
        return f"lessons/{path.stem}.ipynb"
    if path.as_posix() == "CHANGELOG.md":
        return "changelog.md"
    if path.as_posix() == "README.md":
        return "index.md"
    return None


def rewrite_links(text: str, base: Path, page_dir: str, where: str) -> str:
    """Markdown ``text`` of a file in ``base`` (a folder of the repository), its relative links
    made relative to ``page_dir`` (the page's folder in the site). A link to a repository file the
    site does not hold goes to the repository's web page; a link to nothing is reported."""

    def replace(match: re.Match) -> str:
        opening, target, closing = match.groups()
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or target.startswith(("#", "/")) or not parts.path:
            return match.group(0)
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        absolute = (base / unquote(parts.path)).resolve()
        try:
            repo_path = absolute.relative_to(ROOT).as_posix()
        except ValueError:
            log.warning("%s links to %s, outside the repository", where, target)
            return match.group(0)
        if not absolute.exists():
            log.warning("%s links to %s, which does not exist", where, target)
            return match.group(0)
        in_site = site_target(repo_path)
        if in_site is None:
            kind = "tree" if absolute.is_dir() else "blob"
            return f"{opening}{repository_url()}/{kind}/main/{repo_path}{fragment}{closing}"
        relative = os.path.relpath(in_site, page_dir or ".")
        return f"{opening}{Path(relative).as_posix()}{fragment}{closing}"

    return _MARKDOWN_LINK.sub(replace, text)


# Attributes in built pages (HTML written by MkDocs, nbconvert and mkdocstrings, always quoted).
# Regular expressions rather than an HTML parser: the lesson pages hold megabytes of inline images.
_LINK_ATTRIBUTE = re.compile(r"<(?:a|img|link|script|source)\s[^>]*?\b(?:href|src)=\"([^\"]*)\"")
_ID_ATTRIBUTE = re.compile(r"<[a-zA-Z][^>]*?\s(?:id|name)=\"([^\"]*)\"")


def broken_links(site_dir: Path) -> list[str]:
    """Every internal link or anchor of the built site that leads nowhere, as 'page: link'."""
    site_dir = site_dir.resolve()
    texts = {page: page.read_text(encoding="utf-8") for page in sorted(site_dir.rglob("*.html"))}
    ids = {page: {html.unescape(i) for i in _ID_ATTRIBUTE.findall(text)} for page, text in texts.items()}
    problems = []
    for page, text in texts.items():
        if page.name == "404.html":
            continue  # served at any depth: its links are absolute on purpose
        for link in map(html.unescape, _LINK_ATTRIBUTE.findall(text)):
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("data:", "mailto:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site_dir)}: {link}"
            if not target.is_file():
                problems.append(where)
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in ids.get(target, set()):
                problems.append(f"{where} (no such anchor)")
    return problems


# --------------------------------------------------------------------------------------
# Lessons: executed on the tiny model, cached, widgets frozen into pictures
# --------------------------------------------------------------------------------------


def inputs_digest() -> str:
    """A digest of everything a lesson can read besides itself (the package and its data)."""
    digest = hashlib.sha256()
    for folder in LESSON_INPUTS:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_lesson(notebook: Path, common: str | None = None) -> Path:
    """Where the executed copy of ``notebook`` is cached: named by a digest of the notebook and of
    everything it can read (``common``, computed when not given)."""
    common = inputs_digest() if common is None else common
    key = hashlib.sha256(common.encode() + notebook.read_bytes()).hexdigest()[:16]
    return LESSON_CACHE / f"{notebook.stem}-{key}.ipynb"


def keep_executed_lesson(notebook: Path, executed) -> None:
    """Cache ``executed``, a run of ``notebook`` as stored on the tiny model on a fresh kernel in
    notebooks/ (what tests/test_notebooks.py does), so the next build renders it as it is."""
    import copy

    import nbformat

    nb = copy.deepcopy(executed)
    freeze_widgets(nb)
    destination = cached_lesson(notebook)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_suffix(f".{os.getpid()}.partial")
    nbformat.write(nb, temporary)
    temporary.replace(destination)


def executed_lessons() -> dict[str, Path]:
    """Lesson name -> its executed, widget-frozen copy in the cache; executes the ones missing."""
    LESSON_CACHE.mkdir(parents=True, exist_ok=True)
    common = inputs_digest()
    wanted = {notebook: cached_lesson(notebook, common) for notebook in lessons()}
    missing = [notebook for notebook, cached in wanted.items() if not cached.exists()]
    if missing:
        log.info("executing %d lesson(s) on the tiny model (%d at a time)", len(missing), WORKERS)
        with ThreadPoolExecutor(max_workers=max(1, WORKERS)) as pool:
            failures = [f for f in pool.map(lambda nb: _execute_into(nb, wanted[nb]), missing) if f]
        for failure in failures:
            log.warning("%s", failure)
    keep = set(wanted.values())
    for stale in LESSON_CACHE.glob("*.ipynb"):  # older executions of these lessons
        if stale not in keep:
            stale.unlink()
    return {notebook.stem: cached for notebook, cached in wanted.items() if cached.exists()}


def _execute_into(notebook: Path, destination: Path) -> str | None:
    """Execute ``notebook`` on a fresh kernel as a student would, freeze its widgets, write the
    result to ``destination``. Returns a description of the failure, or None."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from traitlets.config import Config

    nb = nbformat.read(notebook, as_version=4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GEMMA_LAB_MODEL": "", "GEMMA_LAB_DTYPE": "", "GEMMA_LAB_SAE": "", "OMP_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)  # with it set, the kernel's inline backend shows no figures
    with tempfile.TemporaryDirectory(prefix="kernel-") as sockets:
        config = Config()
        if os.name == "posix":  # IPC, as the notebook tests do: no "running over TCP" warning per kernel
            config.KernelManager.transport = "ipc"
            config.KernelManager.ip = os.path.join(sockets, "k")
        client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", config=config,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        try:
            client.execute(env=env)
        except CellExecutionError as error:
            return f"lesson {notebook.name} fails on the tiny model:\n{error}"
    problem = output_widget_error(nb)
    if problem:
        return f"lesson {notebook.name}: an Output widget shows an error:\n{problem}"
    freeze_widgets(nb)
    temporary = destination.with_suffix(f".{os.getpid()}.partial")
    nbformat.write(nb, temporary)
    temporary.replace(destination)
    return None


def _widget_states(nb) -> dict:
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})


def output_widget_error(nb) -> str | None:
    """The first error an Output widget recorded (a failing redraw does not fail its cell)."""
    for model in _widget_states(nb).values():
        if model.get("model_name") != "OutputModel":
            continue
        for output in model.get("state", {}).get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"
            if output.get("output_type") == "stream" and "Traceback (most recent call last)" in _text(output.get("text")):
                return _text(output["text"])
    return None


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def freeze_widgets(nb) -> None:
    """Replace every displayed widget by a static HTML snapshot of what it showed, and drop the
    widget state (a static page has no kernel, and rendering the state needs a CDN)."""
    states = _widget_states(nb)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW_MIME in data:
                model_id = data.pop(WIDGET_VIEW_MIME)["model_id"]
                data["text/html"] = (
                    '<div class="gl-frozen-widget">'
                    + _widget_html(model_id, states, set())
                    + '<p class="gl-frozen-note">A snapshot of an interactive widget: run the notebook '
                    "to use it.</p></div>"
                )
    nb.metadata.pop("widgets", None)


#: Widget models shown as a control: their description and value.
_CONTROL_SUFFIXES = ("SliderModel", "DropdownModel", "ToggleButtonsModel", "RadioButtonsModel", "SelectModel",
                     "TextModel", "TextareaModel", "CheckboxModel", "ToggleButtonModel", "IntTextModel",
                     "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel", "ComboboxModel")


def _widget_html(model_id: str, states: dict, seen: set) -> str:
    if model_id in seen or model_id not in states:
        return ""
    seen.add(model_id)
    name, state = states[model_id].get("model_name", ""), states[model_id].get("state", {})
    if name == "OutputModel":
        return "".join(_output_html(output, states, seen) for output in state.get("outputs", []))
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<div class="gl-frozen-html">{state.get("value", "")}</div>'
    if name == "LabelModel":
        return f'<span class="gl-frozen-label">{html.escape(str(state.get("value", "")))}</span>'
    if name == "ButtonModel":
        return f'<span class="gl-frozen-button">{html.escape(state.get("description", ""))}</span>'
    if name == "ImageModel" and state.get("value"):
        return f'<img alt="" src="data:image/{state.get("format", "png")};base64,{state["value"]}">'
    if name.endswith(_CONTROL_SUFFIXES):
        value = state.get("value", state.get("index"))
        labels = state.get("_options_labels")
        if labels is not None and isinstance(state.get("index"), int):
            value = labels[state["index"]]
        label = html.escape(state.get("description", "") or "")
        return (f'<span class="gl-frozen-control">{label + " " if label else ""}'
                f"<b>{html.escape(str(value))}</b></span>")
    children = [m.group(1) for c in state.get("children", []) if (m := _MODEL_REFERENCE.match(str(c)))]
    inner = "".join(_widget_html(child, states, seen) for child in children)
    if not inner:
        return ""
    tag = "gl-frozen-row" if name == "HBoxModel" else "gl-frozen-column"
    return f'<div class="{tag}">{inner}</div>'


def _output_html(output: dict, states: dict, seen: set) -> str:
    data = output.get("data", {})
    if WIDGET_VIEW_MIME in data:
        return _widget_html(data[WIDGET_VIEW_MIME]["model_id"], states, seen)
    if "image/png" in data:
        return f'<img alt="" src="data:image/png;base64,{_text(data["image/png"]).strip()}">'
    if "image/svg+xml" in data:
        return _text(data["image/svg+xml"])
    if "text/html" in data:
        return _text(data["text/html"])
    text = _text(output.get("text")) if output.get("output_type") == "stream" else _text(data.get("text/plain"))
    return f"<pre>{html.escape(text)}</pre>" if text.strip() else ""


def rewrite_notebook_links(path: Path) -> None:
    """Links in a lesson's markdown, made to work from the lesson's page (lessons/NN.ipynb)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            new = rewrite_links(cell.source, NOTEBOOKS, "lessons", f"{path.name}")
            changed |= new != cell.source
            cell.source = new
    if changed:
        nbformat.write(nb, path)


# --------------------------------------------------------------------------------------
# MkDocs hooks (mkdocs.yml: hooks: [tools/docs_site.py])
# --------------------------------------------------------------------------------------


def on_config(config):
    """The navigation (guide, lessons, API reference) and the version, read from the checkout."""
    config.copyright = f"gemma_lab {version()} · Apache-2.0 · Gemma weights: Gemma Terms of Use"
    config.extra["version"] = version()
    nav = [{"Home": "index.md"}, {"Guide": guide_pages()},
           {"Lessons": [f"lessons/{nb.stem}.ipynb" for nb in lessons()]},
           {"API reference": ["api/index.md"] + [f"api/{m}.md" for m in api_modules()]}]
    if (ROOT / "CHANGELOG.md").exists():
        nav.append({"Changelog": "changelog.md"})
    config.nav = nav
    return config


def _generated(config, src_uri: str, content: str):
    from mkdocs.structure.files import File

    return File.generated(config, src_uri, content=content)


def on_files(files, config):
    """Add the pages that are not in docs/: home, lessons, API reference, changelog."""
    from mkdocs.structure.files import File

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = f"<small>version {version()}</small>\n\n" + rewrite_links(readme, ROOT, "", "README.md")
    files.append(_generated(config, "index.md", content=home))
    if (ROOT / "CHANGELOG.md").exists():
        text = rewrite_links((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), ROOT, "", "CHANGELOG.md")
        files.append(_generated(config, "changelog.md", content=text))
    # Lessons as real files under a source folder of their own (mkdocs-jupyter reads them by path).
    source = LESSON_CACHE / "pages"
    for stem, executed in executed_lessons().items():
        page = source / "lessons" / f"{stem}.ipynb"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_bytes(executed.read_bytes())
        rewrite_notebook_links(page)
        files.append(File(f"lessons/{stem}.ipynb", src_dir=str(source), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    files.append(_generated(config, "api/index.md", content=_api_index()))
    for module in api_modules():
        files.append(_generated(config, f"api/{module}.md", content=f"# `{module}`\n\n::: {module}\n"))
    return files


# mkdocs-jupyter wraps notebook files in its own on_files: the lessons must be there before it.
on_files.mkdocs_priority = 100


def _api_index() -> str:
    rows = "\n".join(f"| [`{m}`]({m}.md) | {module_summary(m)} |" for m in api_modules())
    return ("# API reference\n\nRead from the docstrings of this checkout. The hook points are listed in "
            "[the hook table](../hooks.md#every-hook-point).\n\n| module | what it is |\n|---|---|\n" + rows + "\n")


def on_page_markdown(markdown, page, config, files):
    """Links from docs/ pages to files outside docs/ (``../notebooks/...``): into the site or to GitHub."""
    if page.file.abs_src_path and Path(page.file.abs_src_path).parent == DOCS:
        return rewrite_links(markdown, DOCS, Path(page.file.src_uri).parent.as_posix(), page.file.src_uri)
    return markdown


# Formulas in the lessons are typeset by MathJax 2, served from the site itself (the copy that the
# jupyter-server-mathjax package ships): nothing is fetched when a page is viewed. Lessons only:
# the guide's prose has dollar signs that are not maths.
MATHJAX_FOLDER = "assets/mathjax"
_MATHJAX = f"""<script type="text/x-mathjax-config">
MathJax.Hub.Config({{tex2jax: {{inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], processEscapes: true}},
                    messageStyle: "none", "HTML-CSS": {{availableFonts: [], webFont: "STIX-Web"}}}});
</script>
<script src="../{MATHJAX_FOLDER}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>
"""


def copy_mathjax(destination: Path) -> None:
    """MathJax's scripts and web fonts (not its SVG output or accessibility maps: unused here)."""
    import shutil

    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    unused = shutil.ignore_patterns("SVG", "a11y", "localization", "*.map")
    shutil.copytree(source, destination, ignore=unused, dirs_exist_ok=True)


_HEADING_ID = re.compile(r"<h[1-6][^>]*\sid=\"([^\"]+)\"")


def on_page_content(html_text, page, config, files):
    """A lesson's table of contents points at its headings' ids as nbconvert wrote them; MathJax
    is loaded for its formulas.

    mkdocs-jupyter builds the contents from the notebook's markdown, whose slugs drop what looks
    like HTML (``<bos>`` in a heading), while nbconvert's heading ids keep it, so some entries
    would lead nowhere. Headings and entries come in the same order."""
    if not page.file.src_uri.startswith("lessons/"):
        return html_text
    entries = []

    def walk(items):
        for item in items:
            entries.append(item)
            walk(item.children)

    walk(page.toc)
    ids = _HEADING_ID.findall(html_text)
    if len(ids) != len(entries):
        log.warning("%s: %d headings but %d contents entries", page.file.src_uri, len(ids), len(entries))
    else:
        for entry, heading_id in zip(entries, ids):
            entry.id = heading_id
    return _MATHJAX + html_text


def on_post_build(config):
    """MathJax beside the lessons; then every internal link and anchor of every page leads somewhere
    (lessons and API included)."""
    copy_mathjax(Path(config.site_dir) / MATHJAX_FOLDER)
    for problem in broken_links(Path(config.site_dir)):
        log.warning("broken link: %s", problem)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def build(site_dir: Path) -> None:
    """``mkdocs build --strict`` of this checkout into ``site_dir``."""
    site_dir = site_dir.resolve()
    if site_dir.exists() and any(site_dir.iterdir()) and not (site_dir / "search" / "search_index.json").exists():
        raise SystemExit(f"{site_dir} exists and is not a built site; not overwriting it (choose --site-dir)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
               "--site-dir", str(site_dir)]
    done = subprocess.run(command, env=env, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(done.returncode)
    print(f"The site is in {site_dir}: open {site_dir / 'index.html'} in a browser.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.docs_site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--site-dir", type=Path, default=Path("site"), help="where to write the site (./site)")
    args = parser.parse_args(argv)
    build(args.site_dir)


if __name__ == "__main__":
    main()
