"""Open the built book in a real browser (headless Chromium) and check that every page renders.

For the index and every page in _toc.yml: the title is present, every image loaded in the browser (naturalWidth > 0),
and, on pages with math, MathJax (served locally) typeset every formula and no raw TeX is left in the visible text.
A screenshot of each page is saved under _build/screenshots/<page>.png.

Layout, at a 1280 px window: no display formula (the typeset `mjx-math` inside each `mjx-container`) is wider than
the text column, and no table either unless it scrolls sideways inside a box that fits the column; every figure (an image at least 300 px wide in its file) shows at no less than
LEGIBLE_SCALE of its pixel size, so that the labels drawn at 7-9 pt at 100 dpi stay >= 7 px on screen (images that
link to their own full-size file are exempt: a click shows them at full size); no cell output shows a raw Python
repr (`<... object at 0x...>`, `dtype: bool`), a traceback, a warning or a path of the machine that built the book.
One 390 px wide (phone) screenshot of every notebook page is kept under _build/screenshots/mobile/.

How: the test writes a probe copy of each page next to it (same directory, so relative URLs resolve) with one small
script appended, which waits for the window load event, MathJax's startup promise and the fonts, then writes a JSON
report into a hidden <pre>. Chromium runs headless with --dump-dom (the DOM after --virtual-time-budget) and
--screenshot in the same call. Skipped only when no Chromium binary is installed (CI installs the Debian package).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest

from _book import BOOK_TITLE, HTML, ROOT, SCREENSHOTS, build_book, html_of, notebook_entries, toc_entries
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)

if CHROMIUM is None and __import__("os").environ.get("CI") == "true":  # CI must run it: fail loudly, never skip
    pytest.fail("CI=true but no Chromium binary on PATH: .ci/run must install it (apt-get install -y chromium)",
                pytrace=False)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary on PATH: install it (Debian/Ubuntu: apt-get install -y chromium) to run the "
           "real-browser test; .ci/run installs it, so CI always runs this test",
)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,2800", "--virtual-time-budget=15000"]

PROBE_ID = "manu-browser-probe"
LEGIBLE_SCALE = 0.75  # a figure drawn at 100 dpi with 7 pt labels keeps them >= 7 px on screen
MOBILE = ["--window-size=390,2400"]  # a phone-sized window for the kept mobile screenshots
PROBE = """
<script>
(function () {
  function report(mathjax) {
    var r = {
      title: document.title,
      h1: (document.querySelector("h1") || {textContent: ""}).textContent.trim(),
      images: Array.prototype.map.call(document.images, function (i) {
        return {src: i.getAttribute("src"), loaded: i.complete && i.naturalWidth > 0};
      }),
      mathjax: mathjax,
      mjx: document.querySelectorAll("mjx-container").length,
      layout: layout(),
      outputs: Array.prototype.map.call(document.querySelectorAll(".cell_output"), function (o) {
        return o.innerText;
      }),
      fonts: Array.from(document.fonts).filter(function (f) { return /MJX/.test(f.family); })
                 .map(function (f) { return f.family + ":" + f.status; })
    };
    var pre = document.createElement("pre");
    pre.id = "%(id)s"; pre.style.display = "none"; pre.textContent = JSON.stringify(r);
    document.body.appendChild(pre);
  }
  function layout() {
    var col = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    var cs = getComputedStyle(col);
    var width = col.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    var wide = [];
    function check(kind, el, box) {
      var w = box.getBoundingClientRect().width;
      if (w > width + 1) {
        wide.push({kind: kind, width: Math.round(w), column: Math.round(width),
                   text: (el.innerText || el.textContent || "").replace(/\\s+/g, " ").slice(0, 80)});
      }
    }
    document.querySelectorAll('mjx-container[display="true"]').forEach(function (c) {
      check("display math", c, c.querySelector("mjx-math") || c);
    });
    // A table may be wider than the column only inside a box that fits the column and scrolls sideways (the theme's
    // table container, manu.css's output box: its first column stays in view).
    function scrolls(t) {
      for (var el = t.parentElement; el && el !== col; el = el.parentElement) {
        var ox = getComputedStyle(el).overflowX;
        if ((ox === "auto" || ox === "scroll") && el.getBoundingClientRect().width <= width + 1) return true;
      }
      return false;
    }
    document.querySelectorAll("article table").forEach(function (t) { if (!scrolls(t)) check("table", t, t); });
    var small = [];
    Array.prototype.forEach.call(document.images, function (i) {
      if (i.naturalWidth < 300 || (i.closest("a") && /\\.(png|svg|jpe?g)$/i.test(i.closest("a").getAttribute("href") || "")))
        return;
      var shown = i.getBoundingClientRect().width;
      if (shown > width + 1) wide.push({kind: "image", width: Math.round(shown), column: Math.round(width),
                                        text: i.getAttribute("src").slice(-60)});
      if (shown < %(legible)s * i.naturalWidth)
        small.push({src: i.getAttribute("src").slice(-60), scale: Math.round(100 * shown / i.naturalWidth) / 100});
    });
    return {column: Math.round(width), wide: wide, small: small};
  }
  window.addEventListener("load", function () {
    if (!window.MathJax) { report("absent"); return; }
    if (!(MathJax.startup && MathJax.startup.promise)) { report("not-started"); return; }
    MathJax.startup.promise
      .then(function () { return document.fonts.ready; })
      .then(function () { report("typeset"); }, function (e) { report("error: " + e); });
  });
})();
</script>
""" % {"id": PROBE_ID, "legible": LEGIBLE_SCALE}


class _TextScan(HTMLParser):
    """Visible text outside code/scripts/rendered math, and per math element whether MathJax rendered it."""

    SKIP = {"script", "style", "pre", "code", "textarea", "mjx-container", "kbd", "samp"}

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skip-text, is-math-element)
        self.text: list[str] = []
        self.math_total = 0
        self.math_rendered = 0
        self._math_open: list[bool] = []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        is_math = tag in ("span", "div") and "math" in classes
        skip = tag in self.SKIP or (self.stack and self.stack[-1][1])
        if tag in ("br", "img", "hr", "meta", "link", "input", "wbr", "source"):
            return
        if is_math:
            self.math_total += 1
            self._math_open.append(False)
        if tag == "mjx-container" and self._math_open:
            self._math_open[-1] = True
        self.stack.append((tag, bool(skip), is_math))

    def handle_endtag(self, tag):
        while self.stack:
            t, _, is_math = self.stack.pop()
            if is_math:
                self.math_rendered += self._math_open.pop()
            if t == tag:
                break

    def handle_data(self, data):
        if not (self.stack and self.stack[-1][1]):
            self.text.append(data)


RAW_TEX = [
    (re.compile(r"\\\(|\\\)|\\\[|\\\]"), "raw \\( \\) \\[ \\] delimiters"),
    (re.compile(r"\$\$"), "raw $$"),
    (re.compile(r"(?<![\w$])\$[^$\s][^$\n]*?[^$\s\\]\$(?![\w$])"), "raw $...$ math"),
    (re.compile(r"\\(frac|sum|sqrt|bar|mathrm|epsilon|alpha|tau|lvert|rvert|begin)\b"), "raw TeX command"),
]


LEAKS = [
    (re.compile(r"Traceback \(most recent call last\)|^\w+Error: ", re.M), "a traceback"),
    (re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>"), "a raw object repr"),
    (re.compile(r"\bdtype: (bool|int64|int32|float64|float32|object)\b"), "a raw pandas Series footer"),
    (re.compile(r"\b\w*Warning: "), "a Python warning"),
    (re.compile(r"(/root/|/home/\w+/|/work/|/tmp/|site-packages|\\Users\\)"), "a path of the build machine"),
]


def _slug(entry: str) -> str:
    return entry.replace("/", "__")


def _mobile_shot(page: Path, entry: str) -> Path:
    """A 390 px wide screenshot of ``page`` under _build/screenshots/mobile/."""
    shot = SCREENSHOTS / "mobile" / f"{_slug(entry)}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    _chromium(page.as_uri(), shot, MOBILE)
    return shot


def _render(page: Path, shot: Path) -> tuple[str, str]:
    """Run Chromium on a probe copy of `page`; return (dumped DOM, chromium stderr)."""
    probe = page.with_name(f".probe-{page.stem}.html")
    src = page.read_text(encoding="utf-8")
    probe.write_text(src.replace("</body>", PROBE + "</body>", 1) if "</body>" in src else src + PROBE,
                     encoding="utf-8")
    try:
        proc = _chromium(probe.as_uri(), shot)
    finally:
        probe.unlink(missing_ok=True)
    return proc.stdout, proc.stderr


def _chromium(url: str, shot: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Headless Chromium with a throw-away profile: the DOM after the virtual time budget, and a screenshot.
    ``extra`` flags come last (a later --window-size wins)."""
    with tempfile.TemporaryDirectory(prefix="manu-chromium-") as profile_dir:
        return subprocess.run(
            [CHROMIUM, *FLAGS, *extra, f"--user-data-dir={profile_dir}", "--dump-dom", f"--screenshot={shot}", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120,
        )


@pytest.fixture(scope="module")
def rendered():
    result = build_book()
    if result.returncode != 0:
        pytest.fail(f"the book did not build, nothing to open in the browser:\n{result.tail(30)}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    entries = toc_entries()
    # The index redirects to the root page: render it separately (it has no body of its own to probe), and render
    # every TOC page (the root page included) with the probe.
    jobs = {entry: html_of(entry) for entry in entries}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {e: pool.submit(_render, p, SCREENSHOTS / f"{_slug(e)}.png") for e, p in jobs.items()}
        index = pool.submit(_index_redirect_target)
        mobile = [pool.submit(_mobile_shot, html_of(e), e) for e in notebook_entries()]
        out = {e: f.result() for e, f in futures.items()}
        for f in mobile:
            f.result()
    return out, index.result()


def _index_redirect_target() -> str:
    """Open index.html in Chromium and return the location it ends up at (the root page)."""
    return _chromium((HTML / "index.html").as_uri(), SCREENSHOTS / "index.png").stdout


def _probe_report(dom: str, entry: str, stderr: str) -> dict:
    m = re.search(rf'<pre id="{PROBE_ID}"[^>]*>(.*?)</pre>', dom, re.S)
    assert m, (f"{entry}: the in-page probe never reported (page did not finish loading within the virtual time "
               f"budget?). Chromium stderr tail:\n{stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))


@pytest.mark.parametrize("entry", toc_entries())
def test_page_renders_in_chromium(rendered, entry):
    pages, _ = rendered
    dom, stderr = pages[entry]
    report = _probe_report(dom, entry, stderr)

    # Title and heading.
    assert BOOK_TITLE in report["title"], f"{entry}: document.title is {report['title']!r}"
    assert report["h1"], f"{entry}: no visible <h1>"

    # Images: loaded by the browser, not just present in the HTML.
    broken = [i["src"] for i in report["images"] if not i["loaded"]]
    assert not broken, f"{entry}: images that did not load: {broken}"
    src = (ROOT / (entry + ".md"))
    if src.exists() and re.search(r"```\{(figure|image)\}", src.read_text(encoding="utf-8")):
        assert report["images"], f"{entry}: the source has a figure but the page shows no image"

    # Math: every math element typeset by the local MathJax, no raw TeX in the visible text, fonts loaded.
    scan = _TextScan()
    scan.feed(dom)
    if scan.math_total:
        assert report["mathjax"] == "typeset", f"{entry}: MathJax state {report['mathjax']!r}"
        assert scan.math_rendered == scan.math_total, (
            f"{entry}: {scan.math_total - scan.math_rendered} of {scan.math_total} math elements not typeset")
        assert report["mjx"] >= scan.math_total
        failed_fonts = [f for f in report["fonts"] if f.endswith(":error")]
        assert not failed_fonts, f"{entry}: MathJax fonts failed to load: {failed_fonts}"
    text = " ".join(scan.text)
    for pattern, what in RAW_TEX:
        m = pattern.search(text)
        assert not m, f"{entry}: {what} left in the rendered text: ...{text[max(0, m.start() - 60):m.end() + 60]}..."

    # Layout at 1280 px: nothing wider than the column, every figure at a legible scale.
    layout = report["layout"]
    assert not layout["wide"], f"{entry}: wider than the {layout['column']} px text column: {layout['wide']}"
    assert not layout["small"], (f"{entry}: figures shown below {LEGIBLE_SCALE:.0%} of their size (labels too small "
                                 f"to read; draw them at most manu_lite.viz.PAGE_WIDTH wide): {layout['small']}")

    # No raw Python leaking into the cell outputs.
    for output in report["outputs"]:
        for pattern, what in LEAKS:
            m = pattern.search(output)
            assert not m, f"{entry}: a cell output shows {what}: ...{output[max(0, m.start() - 80):m.end() + 80]}..."

    # Screenshot saved and not blank.
    shot = SCREENSHOTS / f"{_slug(entry)}.png"
    assert shot.exists() and shot.stat().st_size > 10_000, f"{entry}: no usable screenshot at {shot}"


def test_index_opens_the_root_page(rendered):
    _, index_dom = rendered
    root = toc_entries()[0]
    assert BOOK_TITLE in index_dom, "index.html did not lead to the book's root page in the browser"
    assert re.search(r"<h1[^>]*>", index_dom), f"index.html did not render the root page {root}"


@pytest.mark.parametrize("entry", notebook_entries())
def test_every_notebook_page_has_a_mobile_screenshot(rendered, entry):
    shot = SCREENSHOTS / "mobile" / f"{_slug(entry)}.png"
    assert shot.exists() and shot.stat().st_size > 10_000, f"{entry}: no 390 px screenshot at {shot}"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width == 390, f"{entry}: the mobile screenshot is {image.width} px wide, not 390"
