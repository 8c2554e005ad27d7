"""Shared helpers for the book tests: read the TOC and configuration, build the book once per test process.

`build_book()` is cached, so tests/test_book.py and tests/test_browser.py reuse one build in a pytest session.
Not a test module itself (the leading underscore keeps pytest from collecting it).
"""
from __future__ import annotations

import fnmatch
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
EXECUTED = BUILD / "jupyter_execute"  # where myst-nb writes the executed copy of each notebook
SCREENSHOTS = BUILD / "screenshots"
BOOK_TITLE = "manu-lite: Modality-Aware Neuron Unlearning, executable"  # as in _config.yml


def load_yaml(name: str) -> dict:
    with open(ROOT / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def toc_entries() -> list[str]:
    """Every document named in _toc.yml, root first, in reading order (paths without suffix)."""
    toc = load_yaml("_toc.yml")
    entries = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(Path(e).with_suffix("")) if Path(e).suffix in {".md", ".ipynb"} else e for e in entries]


def source_of(entry: str) -> Path:
    for suffix in (".ipynb", ".md"):
        path = ROOT / (entry + suffix)
        if path.exists():
            return path
    raise FileNotFoundError(f"_toc.yml names {entry!r}, but neither {entry}.ipynb nor {entry}.md exists")


def notebook_entries() -> list[str]:
    return [e for e in toc_entries() if source_of(e).suffix == ".ipynb"]


def execution_excluded(entry: str) -> bool:
    """True for notebooks that _config.yml's execute.exclude_patterns keeps from running (the GPU chapter)."""
    patterns = (load_yaml("_config.yml").get("execute") or {}).get("exclude_patterns") or []
    return any(fnmatch.fnmatch(entry + ".ipynb", p) for p in patterns)


def html_of(entry: str) -> Path:
    return HTML / (entry + ".html")


def jupyter_book_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    raise RuntimeError("jupyter-book is not installed: pip install -e '.[book]' (Jupyter Book 1, <2)")


@dataclass(frozen=True)
class BuildResult:
    returncode: int
    output: str
    seconds: float

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-n:])


@functools.lru_cache(maxsize=None)
def build_book() -> BuildResult:
    """`jupyter-book build . -W --keep-going --all` into _build/, once per process; offline, tiny profile."""
    env = dict(os.environ)
    env.setdefault("MANU_PROFILE", "tiny")     # the book is the CPU world, even on a machine with a GPU
    env.setdefault("HF_HUB_OFFLINE", "1")      # nothing in the build may download
    env["MANU_LITE_STATIC"] = "1"              # a static book: explorers show their figures, no dead widgets
    # Kernels must use matplotlib's inline backend: with MPLBACKEND=Agg inherited from a CI shell, plt.show() in a
    # notebook displays nothing and the chapter silently loses its figures.
    env.pop("MPLBACKEND", None)
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    start = time.monotonic()
    proc = subprocess.run(
        [*jupyter_book_cmd(), "build", str(ROOT), "-W", "--keep-going", "--all"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seconds = time.monotonic() - start
    result = BuildResult(proc.returncode, proc.stdout, seconds)
    BUILD.mkdir(exist_ok=True)
    (BUILD / "build_report.json").write_text(json.dumps(
        {"returncode": proc.returncode, "seconds": round(seconds, 1), "pages": toc_entries()}, indent=2))
    (BUILD / "build_log.txt").write_text(proc.stdout)
    return result
