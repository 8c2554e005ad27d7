"""Every notebook follows the book's conventions (no execution here; tests/test_book.py executes them).

Each notebook opens with a title, a Colab badge for its own path on the repository and branch of _config.yml, and
learning objectives; then a setup cell that installs the pinned release from the same repository URL, and a
``parameters`` cell ``PROFILE = None`` that the next cells resolve; it ends with a summary. CPU notebooks are stored
without outputs (the build executes them); the GPU chapter, which the build does not execute, is stored with them.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

import manu_lite

ROOT = Path(__file__).resolve().parents[1]
# The book's notebooks; the student copies of the assignments (derived by notebooks/assignments/make_student.py,
# tested in tests/test_checks.py) are not book pages.
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if "student" not in p.parts)
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO = CONFIG["repository"]["url"]
BRANCH = CONFIG["repository"]["branch"]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_notebook_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    listed = set(re.findall(r"^\s*-\s*file:\s*(notebooks/\S+)", toc, re.M))
    assert {rel(p)[: -len(".ipynb")] for p in NOTEBOOKS} == listed
    assert len([p for p in NOTEBOOKS if "assignments" not in p.parts]) == 6
    assert len([p for p in NOTEBOOKS if "assignments" in p.parts]) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell holds the title"
    owner_repo = REPO.removeprefix("https://github.com/")
    badge = f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{rel(path)}"
    assert badge in first.source, f"the Colab badge must link to {badge}"
    assert 'src="data:image/svg+xml;base64,' in first.source, "the badge image is inline (the book renders offline)"
    assert "Learning objectives" in first.source
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = code[0].source
    assert f'REPO = "{REPO}"' in setup and f'TAG = "v{manu_lite.__version__}"' in setup
    assert 'find_spec("manu_lite") is None' in setup and "pip" in setup
    # Colab: the gpu extra when CUDA is present, a dry run that refuses to replace torch, failures explained.
    assert "[gpu]" in setup and "cuda.is_available()" in setup and "--dry-run" in setup and "RuntimeError" in setup
    assert code[1].metadata.get("tags") == ["parameters"] and "PROFILE = None" in code[1].source.splitlines()
    assert "resolve_profile(PROFILE)" in code[2].source
    assert nb.cells[-1].cell_type == "markdown" and "## Summary" in nb.cells[-1].source
    outputs = [o for c in code for o in c.get("outputs", [])]
    if path.name.startswith("06_"):
        assert outputs and not [o for o in outputs if o.get("output_type") == "error"], \
            "the GPU chapter is not executed by the build: store it with the outputs of a run"
    else:
        assert not outputs, "CPU notebooks are stored without outputs: the book build executes them"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "assignments" in p.parts], ids=lambda p: p.stem)
def test_assignment_layout(path):
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert "**Difficulty**" in text and "**Time**" in text
    assert "{exercise}" in text and "{solution-start}" in text and ":class: dropdown" in text and "{solution-end}" in text


def test_no_pyplot_state_in_notebooks():
    """Figures come from manu_lite (pyplot-free Figures shown as PNG): a kernel's backend can't lose them."""
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                assert "plt.show" not in cell.source and "import matplotlib.pyplot" not in cell.source, path.name


# The module(s) each chapter teaches (book/package_map.md). Helpers every chapter uses (config, profiles, viz,
# models, finetune) do not count: a chapter must import its own module(s) at least as often as any other.
CHAPTER_MODULES = {"01": {"bench", "evaluate"}, "02": {"hooks", "stats"}, "03": {"importance", "experiments"},
                   "04": {"prune", "manu", "experiments"}, "05": {"compare"}, "06": {"evaluate", "manu"},
                   "a1": {"checks", "checks_extra", "hooks"}, "a2": {"checks", "checks_extra", "stats"},
                   "a3": {"checks", "checks_extra", "hooks"},
                   "a4": {"checks", "checks_extra", "importance", "experiments"}}
SHARED_HELPERS = {"config", "profiles", "viz", "models", "finetune"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_imports_mainly_its_chapters_module(path):
    counts: dict[str, int] = {}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            for match in re.finditer(r"from manu_lite\.(\w+) import|from manu_lite import (\w+)", cell.source):
                module = match.group(1) or match.group(2)
                counts[module] = counts.get(module, 0) + 1
    own = CHAPTER_MODULES[path.stem.split("_")[0]]
    others = {m: n for m, n in counts.items() if m not in own | SHARED_HELPERS}
    assert max((counts.get(m, 0) for m in own), default=0) >= max(others.values(), default=0), (
        f"{path.name} imports {counts}: its chapter's module(s) {sorted(own)} should come first")
    assert any(counts.get(m) for m in own), f"{path.name} never imports its chapter's module(s) {sorted(own)}"


def test_the_package_map_lists_every_module():
    page = (ROOT / "book" / "package_map.md").read_text()
    listed = set(re.findall(r"`(\w+)`", page))
    modules = {p.stem for p in (ROOT / "manu_lite").glob("*.py") if not p.stem.startswith("_")}
    assert modules <= listed, f"book/package_map.md lacks {sorted(modules - listed)}"


FINDINGS = [p for p in NOTEBOOKS if p.name[:2] in {"01", "02", "03", "04"}]
# A number typed into prose: a decimal, or digits followed by % or "points"; math, code, roles and directives removed.
TYPED_NUMBER = re.compile(r"(?<![\w.{-])\d+(\.\d+)?\s*(%|points?\b)|(?<![\w.-])\d+\.\d+")


def _prose(source: str) -> str:
    source = re.sub(r"```.*?```", " ", source, flags=re.S)          # fenced blocks (figure directives, code)
    source = re.sub(r"\$\$.*?\$\$|\$[^$\n]+\$", " ", source, flags=re.S)  # math
    source = re.sub(r"\{[\w:]+\}`[^`]*`|`[^`]*`", " ", source)           # roles ({glue:text}`x:.1f`) and code
    return source


@pytest.mark.parametrize("path", FINDINGS, ids=lambda p: p.stem)
def test_chapters_end_with_what_we_found_and_type_no_results(path):
    """Chapters 01-04 end with "What we found" (after the summary), and every result their prose quotes is glued
    from the run (myst-nb glue), never typed: a typed number goes stale the day the run changes."""
    nb = nbformat.read(path, as_version=4)
    last = nb.cells[-1].source
    assert "## What we found" in last and last.index("## Summary") < last.index("## What we found"), path.name
    found = last[last.index("## What we found"):]
    assert "{glue:text}" in found and "does not show" in found, f"{path.name}: a finding with its size and limits"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = TYPED_NUMBER.search(_prose(cell.source))
            assert not m, f"{path.name}: a number typed into the prose ({m.group(0)!r}); glue it from the run"
