"""The book builds with `jupyter-book build . -W --keep-going`: no warnings, every page, every notebook executed.

One build per test session (tests/_book.py caches it); tests/test_browser.py opens the same build in Chromium.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from _book import (
    BOOK_TITLE, EXECUTED, HTML, ROOT, build_book, execution_excluded, html_of, load_yaml, notebook_entries, source_of,
    toc_entries,
)


@pytest.fixture(scope="module")
def book():
    result = build_book()
    if result.returncode != 0:
        pytest.fail(f"jupyter-book build failed (exit {result.returncode}) after {result.seconds:.0f} s; "
                    f"last lines of the log (full log: _build/build_log.txt):\n{result.tail()}")
    return result


class _Collector(HTMLParser):
    """Collects <img src>, <script src>, <link href>, the <title> and the first <h1> text of a page."""

    def __init__(self):
        super().__init__()
        self.imgs, self.scripts, self.links = [], [], []
        self.title, self.h1 = "", ""
        self._in = None
        self._h1_done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        elif tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        elif tag == "link" and a.get("href") and a.get("rel") in ("stylesheet", "preload"):
            self.links.append(a["href"])
        elif tag == "title":
            self._in = "title"
        elif tag == "h1" and not self._h1_done:
            self._in = "h1"

    def handle_endtag(self, tag):
        if tag == "title" and self._in == "title":
            self._in = None
        elif tag == "h1" and self._in == "h1":
            self._in, self._h1_done = None, True

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.h1 += data


def parse_page(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    return c


def local_target(page: Path, url: str) -> Path | None:
    """The file a relative URL in `page` points to, or None for external/data URLs."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "data", "mailto") or url.startswith("//"):
        return None
    return (page.parent / unquote(parsed.path)).resolve()


# --- tests that need no build ----------------------------------------------------------------------------------


def test_toc_names_only_existing_pages():
    for entry in toc_entries():
        source_of(entry)  # raises with a clear message if missing


def test_config_basics():
    cfg = load_yaml("_config.yml")
    assert cfg["title"] == BOOK_TITLE
    assert cfg["copyright"] == "2026" and cfg["author"] == "The manu-lite authors"
    assert cfg["execute"]["execute_notebooks"] == "force"
    assert cfg["execute"]["timeout"] >= 300, "the JB default of 30 s per cell is too short for training cells"
    assert cfg["repository"]["branch"] == "main"
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert any(p.startswith(".venv") for p in cfg["exclude_patterns"]), "Sphinx must not walk the virtualenv"
    sphinx_cfg = cfg["sphinx"]["config"]
    assert sphinx_cfg["nb_execution_raise_on_error"] is True
    assert "://" not in sphinx_cfg["mathjax_path"], "MathJax must be served locally, not from a CDN"


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_schematic_script_reproduces_the_committed_figure(tmp_path):
    committed = ROOT / "book" / "_static_figs" / "manu_schematic.png"
    out = tmp_path / "schematic.png"
    subprocess.run([sys.executable, str(ROOT / "book" / "figures" / "make_schematic.py"), "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert _png_size(out) == _png_size(committed), (
        "book/figures/make_schematic.py no longer matches the committed PNG: re-run it and commit the result")


# --- tests on the built book -------------------------------------------------------------------------------------


# Log lines that are not about the book. ipykernel >= 7 logs this on every start of a kernel that jupyter_client
# launches over (localhost) TCP without CurveZMQ keys, which is how nbclient/myst-nb start kernels; it is not a Sphinx
# warning and -W does not see it.
NOT_BOOK_WARNINGS = [re.compile(r"^\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption\.")]


def test_build_succeeds_without_warnings(book):
    bad = [line for line in book.output.splitlines()
           if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and not any(p.search(line) for p in NOT_BOOK_WARNINGS)]
    assert not bad, "the book build printed warnings/errors (-W should have failed it):\n" + "\n".join(bad[:30])
    print(f"book built in {book.seconds:.1f} s")


def test_every_toc_page_has_html_with_a_title(book):
    for entry in toc_entries():
        page = html_of(entry)
        assert page.exists(), f"{entry} is in _toc.yml but {page.relative_to(ROOT)} was not built"
        c = parse_page(page)
        assert BOOK_TITLE in c.title, f"{page.name}: <title> {c.title!r} lacks the book title"
        assert c.h1.strip(), f"{page.name}: no <h1> heading"
    index = HTML / "index.html"
    assert index.exists() and html_of(toc_entries()[0]).name in index.read_text(), "index.html must open the root"


def test_every_toc_notebook_was_executed(book):
    for entry in notebook_entries():
        if execution_excluded(entry):
            # Shipped with stored outputs (the GPU chapter): those must exist, the build only renders them.
            nb = nbformat.read(source_of(entry), as_version=4)
        else:
            executed = EXECUTED / (entry + ".ipynb")
            assert executed.exists(), f"{entry}: no executed copy at {executed.relative_to(ROOT)}"
            nb = nbformat.read(executed, as_version=4)
            unexecuted = [i for i, c in enumerate(nb.cells)
                          if c.cell_type == "code" and c.source.strip() and c.get("execution_count") is None]
            assert not unexecuted, f"{entry}: code cells {unexecuted} were not executed"
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert outputs, f"{entry}: the notebook has no outputs"
        errors = [o for o in outputs if o.get("output_type") == "error"]
        assert not errors, f"{entry}: error outputs: {[e.get('ename') for e in errors]}"
        html = html_of(entry).read_text(encoding="utf-8")
        assert "cell_output" in html, f"{entry}: the page shows no cell output"
        has_figure_or_table = re.search(r'class="cell_output[^"]*"[\s\S]*?(<img |<table)', html)
        assert has_figure_or_table, f"{entry}: no executed figure or table on the page"


def test_local_assets_resolve_and_mathjax_is_local(book):
    pages = sorted(p for p in HTML.rglob("*.html") if "_static" not in p.relative_to(HTML).parts)
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "cdn.jsdelivr.net/npm/mathjax" not in text, f"{page.name} loads MathJax from a CDN"
        c = parse_page(page)
        for url in [*c.imgs, *c.scripts, *c.links]:
            target = local_target(page, url)
            if target is not None:
                assert target.exists(), f"{page.relative_to(HTML)}: {url} does not resolve to a file"
        for src in c.scripts:
            if "mathjax" in src.lower():
                assert local_target(page, src) is not None, f"{page.name}: MathJax from {src}"
    assert (HTML / "mathjax" / "es5" / "tex-chtml-full.js").exists()
    assert list((HTML / "mathjax" / "es5" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_bibliography_lists_the_core_papers(book):
    text = html_of("book/bibliography").read_text(encoding="utf-8").lower()
    for needle in ("modality-aware neuron pruning", "mllmu-bench", "negative preference optimization",
                   "knowledge unlearning", "visual instruction tuning", "what matters when building"):
        assert needle in text, f"bibliography lacks {needle!r}"
    assert "liu et al., 2025" in text, "bibliography labels should be author-year (book/_ext/manu_bibstyle.py)"


def test_downloads_carry_outputs_and_the_student_versions(book):
    """The page's download button serves the executed notebook (book/_ext/executed_downloads.py), and every
    assignment page links its student version (no solutions)."""
    for entry in notebook_entries():
        source = HTML / "_sources" / (entry + ".ipynb")
        assert source.exists(), f"{entry}: no downloadable notebook at {source.relative_to(ROOT)}"
        nb = nbformat.read(source, as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
            f"{entry}: the downloadable notebook has no outputs")
        if "assignments" in entry:
            html = html_of(entry).read_text(encoding="utf-8")
            student = re.search(r'href="([^"]*_downloads/[^"]*/%s\.ipynb)"' % Path(entry).name, html)
            assert student, f"{entry}: the page does not link its student version"
            linked = nbformat.read(local_target(html_of(entry), student.group(1)), as_version=4)
            assert not [c for c in linked.cells if "assignment-solution" in c.metadata.get("tags", [])]


def test_every_page_loads_the_book_css_with_a_print_view(book):
    css = HTML / "_static" / "manu.css"
    assert css.exists() and "@media print" in css.read_text(encoding="utf-8"), "book/_static/manu.css not built"
    for entry in toc_entries():
        assert "_static/manu.css" in html_of(entry).read_text(encoding="utf-8"), f"{entry} does not load manu.css"
