"""Mutation testing of the library's core modules (issue 19, item 4). Not run in CI: it is slow.

    python benchmarks/mutation.py                          # every module below, with its tests (hours)
    python benchmarks/mutation.py --modules stats          # one module
    python benchmarks/mutation.py --modules importance --tests tests/test_meaning_selection.py
    python benchmarks/mutation.py --tool ast               # the built-in fallback runner

Each run works in a scratch copy of the repository (``--workdir``, default a temporary directory), never in the
working tree. With ``--tool mutmut`` (the default when mutmut >= 3 is installed: ``pip install mutmut``) the copy
gets a ``[tool.mutmut]`` section naming the module and its tests, ``mutmut run`` mutates it and
``mutmut export-cicd-stats`` / ``mutmut results`` give the counts and the survivors. ``--tool ast`` is a small
documented fallback for machines without mutmut: it parses the module, applies one operator mutation at a time
(comparison flips such as ``>`` → ``>=``, arithmetic swaps ``+``/``-``, ``*``/``/``, ``and``/``or``, integer
constants ±1, ``True``/``False``), runs the tests with ``pytest -x`` and counts the mutants the tests kill.

Prints one line per module — ``module: killed/total = score %`` — and the surviving mutants, to be judged
(equivalent mutants are survivors no test can kill; the target is >= 90 % of the non-equivalent ones).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Module -> the test files that exercise it (fast ones first; the meaning tests of issue 19 included).
TESTS = {
    "stats": ["tests/test_meaning_selection.py", "tests/test_meaning_eval.py", "tests/test_importance.py"],
    "importance": ["tests/test_meaning_selection.py", "tests/test_importance.py"],
    "prune": ["tests/test_prune.py", "tests/test_meaning_prune_biases.py"],
    "hooks": ["tests/test_hooks.py", "tests/test_meaning_eval.py"],
    "evaluate": ["tests/test_evaluate.py", "tests/test_meaning_eval.py"],
    "baselines": ["tests/test_baselines.py", "tests/test_meaning_baselines.py"],
}


def scratch_copy(workdir: Path) -> Path:
    """The package, tests, benchmarks and project files copied to ``workdir`` (no .git, no venv, no caches)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutants")
    for name in ("manu_lite", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.cfg", "pytest.ini", "conftest.py"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, workdir / name)
    return workdir


def _env(workdir: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(workdir), MUTATION_RUN="1")


# ------------------------------------------------------------------------------------------------ mutmut
def run_mutmut(module: str, tests: list[str], workdir: Path, max_children: int) -> dict:
    copy = scratch_copy(workdir)
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text() if pyproject.exists() else ""
    text += ("\n[tool.mutmut]\n"
             "source_paths = [\"manu_lite\"]\n"
             f"only_mutate = [\"manu_lite/{module}.py\"]\n"
             f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
             "pytest_add_cli_args = [\"-x\", \"-q\", \"-p\", \"no:cacheprovider\"]\n"
             "also_copy = [\"tests\", \"benchmarks\"]\n")
    pyproject.write_text(text)
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "run", "--max-children", str(max_children)], cwd=copy, env=_env(copy), check=False)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=copy, env=_env(copy), check=False, capture_output=True)
    stats_file = copy / "mutants" / "mutmut-cicd-stats.json"
    counts = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    listing = subprocess.run([*mutmut, "results"], cwd=copy, env=_env(copy), capture_output=True, text=True).stdout
    survivors = [ln.strip() for ln in listing.splitlines() if "survived" in ln or "no tests" in ln]
    killed = counts.get("killed", 0)
    judged = killed + counts.get("survived", 0) + counts.get("no_tests", 0) + counts.get("timeout", 0)
    return {"module": module, "tool": "mutmut", "killed": killed, "total": judged, "counts": counts,
            "survivors": survivors}


# ----------------------------------------------------------------------------------------- AST fallback
_SWAPS = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
          ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.And: ast.Or, ast.Or: ast.And,
          ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            ids.add(id(body[0].value))
    return ids


def ast_mutants(source: str) -> list[tuple[int, str, str]]:
    """(index, line description, mutated source) for every single-operator mutation of ``source``."""
    tree = ast.parse(source)
    sites = []
    skip = _docstring_nodes(tree)
    for node in ast.walk(tree):
        ops = []
        if isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in _SWAPS:
            ops = [("op", None)]
        elif isinstance(node, ast.Compare):
            ops = [("cmp", i) for i, op in enumerate(node.ops) if type(op) in _SWAPS]
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            if isinstance(node.value, bool):
                ops = [("bool", None)]
            elif isinstance(node.value, int):
                ops = [("int+1", None)]
        for kind, i in ops:
            sites.append((node.lineno, type(node).__name__, kind, i, ast.dump(node)[:60]))
    mutants = []
    for index, (lineno, _, kind, i, _) in enumerate(sites):
        tree = ast.parse(source)
        count = -1
        for node in ast.walk(tree):
            applicable = ((isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in _SWAPS and kind == "op")
                          or (isinstance(node, ast.Compare) and kind == "cmp" and i < len(node.ops)
                              and type(node.ops[i]) in _SWAPS)
                          or (isinstance(node, ast.Constant) and kind == "bool" and isinstance(node.value, bool))
                          or (isinstance(node, ast.Constant) and kind == "int+1" and isinstance(node.value, int)
                              and not isinstance(node.value, bool)))
            if not applicable or getattr(node, "lineno", None) != lineno:
                continue
            count += 1
            # the k-th applicable node on this line in walk order corresponds to the k-th site of the line
            k = sum(1 for s in sites[:index] if s[0] == lineno and s[2] == kind and s[3] == i)
            if count != k:
                continue
            if kind == "op":
                before = type(node.op).__name__
                node.op = _SWAPS[type(node.op)]()
                what = f"{before} -> {type(node.op).__name__}"
            elif kind == "cmp":
                before = type(node.ops[i]).__name__
                node.ops[i] = _SWAPS[type(node.ops[i])]()
                what = f"{before} -> {type(node.ops[i]).__name__}"
            elif kind == "bool":
                what = f"{node.value} -> {not node.value}"
                node.value = not node.value
            else:
                what = f"{node.value} -> {node.value + 1}"
                node.value = node.value + 1
            mutants.append((index, f"line {lineno}: {what}", ast.unparse(tree)))
            break
    return mutants


def run_ast(module: str, tests: list[str], workdir: Path, limit: int | None, timeout: int) -> dict:
    copy = scratch_copy(workdir)
    target = copy / "manu_lite" / f"{module}.py"
    original = target.read_text()
    mutants = ast_mutants(original)[:limit] if limit else ast_mutants(original)
    killed, survivors = 0, []
    for n, (_, where, source) in enumerate(mutants, 1):
        target.write_text(source)
        try:
            result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                    cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
            dead = result.returncode != 0
        except subprocess.TimeoutExpired:
            dead = True  # a mutant that hangs the tests is caught (as mutmut counts timeouts)
        killed += dead
        if not dead:
            survivors.append(where)
        print(f"  [{n}/{len(mutants)}] {where}: {'killed' if dead else 'SURVIVED'}", flush=True)
    target.write_text(original)
    return {"module": module, "tool": "ast", "killed": killed, "total": len(mutants), "survivors": survivors}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", default=list(TESTS), choices=list(TESTS))
    parser.add_argument("--tests", nargs="+", help="test files (default: each module's own, see TESTS)")
    parser.add_argument("--keyword", "-k", default=None, help="pytest -k expression selecting the fast tests")
    parser.add_argument("--tool", choices=("mutmut", "ast"), default=None,
                        help="default: mutmut when installed, else the AST fallback")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--limit", type=int, default=None, help="AST tool: at most this many mutants per module")
    parser.add_argument("--timeout", type=int, default=600, help="AST tool: seconds per mutant's test run")
    args = parser.parse_args(argv)
    tool = args.tool
    if tool is None:
        try:
            import mutmut  # noqa: F401
            tool = "mutmut"
        except ImportError:
            tool = "ast"
    reports = []
    for module in args.modules:
        tests = args.tests or [t for t in TESTS[module] if (ROOT / t).exists()]
        if args.keyword:
            tests = [*tests, "-k", args.keyword]
        workdir = args.workdir / module if args.workdir else Path(tempfile.mkdtemp(prefix=f"mutation-{module}-"))
        if tool == "mutmut":
            report = run_mutmut(module, tests, workdir, args.max_children)
        else:
            report = run_ast(module, tests, workdir, args.limit, args.timeout)
        score = 100 * report["killed"] / report["total"] if report["total"] else float("nan")
        print(f"{module} ({report['tool']}; tests {' '.join(tests)}): killed {report['killed']}/{report['total']} "
              f"= {score:.1f} % mutation score")
        for line in report["survivors"]:
            print(f"  survived: {line}")
        reports.append(report)
    return reports


if __name__ == "__main__":
    main()
