"""Mutation testing of the library's core modules (issue 19, item 4). Not run in CI: it is slow.

    python benchmarks/mutation.py                          # every module below, with its tests (hours)
    python benchmarks/mutation.py --modules stats          # one module
    python benchmarks/mutation.py --modules importance --tests tests/test_meaning_selection.py
    python benchmarks/mutation.py --tool ast               # the built-in fallback runner
    python benchmarks/mutation.py --modules prune --sample 120 --seed 19 --json out.json   # a seeded sample
    python benchmarks/mutation.py --modules prune --rerun out.json   # only out.json's survivors, with today's tests
    python benchmarks/mutation.py --named-bugs             # issue 19's 13 bugs, each injected, its test run

Each run works in a scratch copy of the repository (``--workdir``, default a temporary directory), never in the
working tree. With ``--tool mutmut`` (the default when mutmut >= 3 is installed: ``pip install mutmut``) the copy
gets a ``[tool.mutmut]`` section naming the module and its tests, ``mutmut run`` mutates it and
``mutmut export-cicd-stats`` / ``mutmut results`` give the counts and the survivors. ``--tool ast`` is a small
documented fallback for machines without mutmut: it parses the module, applies one operator mutation at a time
(comparison flips such as ``>`` → ``>=``, arithmetic swaps ``+``/``-``, ``*``/``/``, ``and``/``or``, integer
constants ±1, ``True``/``False``), runs the tests with ``pytest -x`` and counts the mutants the tests kill.

Prints one line per module — mutants, killed, survived, timeouts, not covered (no selected test reaches the
mutated function), the score killed/mutants (a Wilson 95 % interval for a sample) and the wall time — then the
surviving mutants, to be judged (equivalent mutants are survivors no test can kill; the target is >= 90 % of the
non-equivalent ones). mutmut runs, per mutant, only the selected tests that reach the mutated function; in the
scratch copy the tests share one model cache (see ``SHARED_CACHE_FIXTURE``) so the tiny vanilla is trained once.
On 2 shared cores a module's full set takes about 1-3 s per mutant; ``--sample`` bounds it.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Module -> the test files that exercise it (fast ones first; the meaning tests of issue 19 included).
TESTS = {
    "stats": ["tests/test_importance.py", "tests/test_meaning_selection.py", "tests/test_meaning_eval.py",
              "tests/test_hooks.py", "tests/test_meaning_stats.py"],
    "importance": ["tests/test_importance.py", "tests/test_meaning_selection.py", "tests/test_meaning_importance.py"],
    "prune": ["tests/test_prune.py", "tests/test_meaning_prune_biases.py", "tests/test_meaning_prune.py"],
    "hooks": ["tests/test_hooks.py", "tests/test_meaning_eval.py", "tests/test_meaning_selection.py",
              "tests/test_meaning_hooks.py"],
    "sites": ["tests/test_hooks.py", "tests/test_architectures.py", "tests/test_importance.py",
              "tests/test_meaning_sites.py"],
    "evaluate": ["tests/test_evaluate.py", "tests/test_meaning_eval.py", "tests/test_meaning_evaluate.py",
                 "tests/test_protocol.py"],
    "baselines": ["tests/test_baselines.py", "tests/test_meaning_baselines.py", "tests/test_meaning_losses.py"],
}


def scratch_copy(workdir: Path, rev: str | None = "HEAD") -> Path:
    """The package, tests, benchmarks and project files copied to ``workdir`` (no .git, no venv, no caches).

    From the git revision ``rev`` (``git archive``; the default, ``HEAD``, is what CI tests), or from the working
    tree when ``rev`` is None — which, where several people edit one tree, may catch a half-made change."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    names = ["manu_lite", "tests", "benchmarks", "pyproject.toml", "setup.cfg", "pytest.ini", "conftest.py"]
    if rev is not None:
        present = [n for n in names if subprocess.run(["git", "cat-file", "-e", f"{rev}:{n}"], cwd=ROOT,
                                                      capture_output=True).returncode == 0]
        archive = subprocess.run(["git", "archive", rev, *present], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
        return workdir
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutants")
    for name in names[:3]:
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    for name in names[3:]:
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, workdir / name)
    return workdir


def _env(workdir: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(workdir), MUTATION_RUN="1")


# ------------------------------------------------------------------------------------------------ mutmut
# Appended to the scratch copy's tests/conftest.py (never to the repository's): every mutant's test run shares one
# model cache, so the tiny vanilla LLaVA is trained once (by mutmut's stats run) instead of once per mutant. Sound
# because the training code (finetune, models, bench) is never one of the mutated modules and does not import them.
SHARED_CACHE_FIXTURE = """

# --- added by benchmarks/mutation.py in its scratch copy: one model cache for every mutant's test run
@pytest.fixture(scope="session")
def model_cache():
    path = __import__("pathlib").Path(os.environ["MUTATION_MODEL_CACHE"])
    path.mkdir(parents=True, exist_ok=True)
    os.environ["MANU_LITE_CACHE"] = str(path)
    yield path
"""
# mutmut's exit codes -> the statuses counted here (mutmut.stats.status_by_exit_code, grouped).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", -24: "timeout",
          24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def _meta(copy: Path, module: str) -> dict:
    path = copy / "mutants" / "manu_lite" / f"{module}.py.meta"
    return json.loads(path.read_text())["exit_code_by_key"] if path.exists() else {}


def run_mutmut(module: str, tests: list[str], workdir: Path, max_children: int, sample: int | None = None,
               seed: int = 0, timeout_constant: float = 5.0, only: list[str] | None = None,
               rev: str | None = "HEAD") -> dict:
    """mutmut 3 on ``manu_lite/<module>.py`` with ``tests`` in a scratch copy.

    With ``sample``, mutmut first generates every mutant (a run that matches no mutant name), then a seeded
    ``random.Random(seed).sample`` of ``sample`` names is run: the score is then an estimate (binomial interval).
    ``timeout_constant`` is added to each mutant's test time before mutmut's 15x multiplier: its default (1 s)
    ignores fixture setup, which is not in the timed test durations. ``only`` runs just the named mutants (say, a
    previous run's survivors, to check that new tests kill them).
    """
    import random

    copy = scratch_copy(workdir, rev)
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text() if pyproject.exists() else ""
    # mutmut re-runs only the tests that reach a mutant's function, so a test file that does not reach the module
    # costs its one stats run and nothing per mutant.
    text += ("\n[tool.mutmut]\n"
             "source_paths = [\"manu_lite\"]\n"
             f"only_mutate = [\"manu_lite/{module}.py\"]\n"
             f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
             "pytest_add_cli_args = [\"-q\", \"-p\", \"no:cacheprovider\"]\n"
             f"timeout_constant = {timeout_constant}\n"
             "also_copy = [\"tests\", \"benchmarks\"]\n")
    pyproject.write_text(text)
    conftest = copy / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + SHARED_CACHE_FIXTURE)
    env = dict(_env(copy), MUTATION_MODEL_CACHE=str(workdir.parent / f".mutation-model-cache-{module}"))
    mutmut = [sys.executable, "-m", "mutmut"]
    names: list[str] = sorted(only or [])
    if sample and not names:
        # generates the mutants and the test-to-function map; the pattern matches no mutant, so none is run
        subprocess.run([*mutmut, "run", "--max-children", str(max_children), f"manu_lite.{module}.no_such_*"],
                       cwd=copy, env=env, check=False)
        keys = sorted(_meta(copy, module))
        names = sorted(random.Random(seed).sample(keys, min(sample, len(keys))))
    subprocess.run([*mutmut, "run", "--max-children", str(max_children), *names], cwd=copy, env=env, check=False)
    codes = _meta(copy, module)
    if names:
        codes = {k: codes[k] for k in names}
    counts: dict[str, int] = {}
    for code in codes.values():
        status = STATUS.get(code, "suspicious")
        counts[status] = counts.get(status, 0) + 1
    survivors = sorted(k for k, c in codes.items() if STATUS.get(c) in ("survived", "no tests", "suspicious"))
    killed = counts.get("killed", 0)
    return {"module": module, "tool": "mutmut", "killed": killed, "total": len(codes), "counts": counts,
            "survivors": survivors, "sample": sample if not only else None, "seed": seed if sample else None,
            "rerun": len(only or []), "workdir": str(copy),
            "population": len(_meta(copy, module))}


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


def run_ast(module: str, tests: list[str], workdir: Path, limit: int | None, timeout: int,
            rev: str | None = "HEAD") -> dict:
    copy = scratch_copy(workdir, rev)
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
    return {"module": module, "tool": "ast", "killed": killed, "total": len(mutants), "survivors": survivors,
            "counts": {"killed": killed, "survived": len(survivors)}}


# ------------------------------------------------------------------------------------------ the named bugs
# Issue 19's thirteen one-line bugs that once passed the whole suite: (file, original text, the bug, the test that
# must fail on it). ``--named-bugs`` injects each in a scratch copy and runs its test alone.
_MS, _ME, _MB = "tests/test_meaning_selection.py::", "tests/test_meaning_eval.py::", "tests/test_meaning_baselines.py::"
NAMED_BUGS = [
    ("eps outside the denominator in paper_score", "manu_lite/importance.py",
     "return i_f / (paper_importance(retain_multi, retain_text, eps, weights, reduction) + eps)",
     "return i_f / paper_importance(retain_multi, retain_text, eps, weights, reduction) + eps",
     _MS + "test_paper_score_eps_sits_in_the_denominator_with_zero_retain_importance"),
    ("count_above counting |a| >= tau", "manu_lite/stats.py",
     "a.sub_(self.tau).sign_().clamp_(min=0).sum(0, dtype=f64)", "(a >= self.tau).sum(0, dtype=f64)",
     _MS + "test_count_above_is_strictly_greater_than_tau"),
    ("union selection ignoring config's scope", "manu_lite/importance.py",
     "return select_union(list(score_per_rendering(stats, config).values()), config.alpha,\n"
     "                            config.selection_scope)",
     "return select_union(list(score_per_rendering(stats, config).values()), config.alpha)",
     _MS + "test_select_balanced_honours_config_scope"),
    ("paper and reference formulations swapped", "manu_lite/importance.py",
     'if config.formulation == "paper":\n        return {name: paper_score(',
     'if config.formulation == "reference":\n        return {name: paper_score(',
     _MS + "test_scores_equal_the_named_function_per_formulation"),
    ("manu_unlearn ignoring config.positions", "manu_lite/manu.py", "positions=config.positions, ", "",
     _MS + "test_report_token_counts_are_the_recall_and_all_counts_by_hand"),
    ("recall mask without the attention mask", "manu_lite/hooks.py", "return recall & mask", "return recall",
     _ME + "test_token_mask_matches_the_hand_listed_rows"),
    ("generate keeping the last prompt token", "manu_lite/evaluate.py",
     'generated[:, batch["input_ids"].shape[1]:]', 'generated[:, batch["input_ids"].shape[1] - 1:]',
     _ME + "test_generate_returns_only_the_new_tokens"),
    ("Test_Set scored on the original image", "manu_lite/evaluate.py", "return rng.choice(record.images)",
     "return record.image", _ME + "test_test_set_is_scored_on_one_of_the_transformed_images"),
    ("Correct_Answer checked against A-D", "manu_lite/bench.py", "if answer not in options:",
     'if answer not in "ABCD":', _ME + "test_correct_answer_naming_a_null_option_is_refused"),
    ("NPO on the batch-mean log-ratio", "manu_lite/baselines.py",
     "x = answer_nll(model, forget, per_sequence=True) - reference_nll",
     "x = (answer_nll(model, forget, per_sequence=True) - reference_nll).mean()",
     _MB + "test_npo_gradient_is_per_sequence_weighted_ascent"),
    ("KL direction reversed", "manu_lite/baselines.py", "per_token = (ref.exp() * (ref - cur)).sum(-1)",
     "per_token = (cur.exp() * (cur - ref)).sum(-1)", _MB + "test_answer_kl_is_kl_of_reference_to_model_by_hand"),
    ("the frozen reference being the live model", "manu_lite/baselines.py",
     "self.copy = None if lora else copy.deepcopy(model).eval().requires_grad_(False)",
     "self.copy = None if lora else model", _MB + "test_frozen_reference_stays_the_vanilla_model_after_a_step"),
    ("GradDiff/KL retain batches drawn from the forget people", "manu_lite/baselines.py",
     "retain_items = training_items(world.retain_train, renderings)",
     "retain_items = training_items(world.forget_train, renderings)",
     _MB + "test_retain_batches_hold_only_retain_people"),
]


def run_named_bugs(workdir: Path, rev: str | None = "HEAD", numbers: list[int] | None = None) -> list[dict]:
    """Each of :data:`NAMED_BUGS` injected alone in a scratch copy of ``rev``; its test must pass on the clean copy
    and fail on the bug. One row per bug: the bug, its test, whether the tests passed clean (one run of all
    thirteen) and whether this one failed on the bug."""
    copy = scratch_copy(workdir, rev)
    conftest = copy / "tests" / "conftest.py"
    conftest.write_text(conftest.read_text() + SHARED_CACHE_FIXTURE)
    env = dict(_env(copy), MUTATION_MODEL_CACHE=str(workdir.parent / ".mutation-model-cache-named-bugs"))

    def passes(*tests: str) -> bool:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True).returncode == 0

    chosen = [(n, bug) for n, bug in enumerate(NAMED_BUGS, 1) if not numbers or n in numbers]
    clean = passes(*sorted({bug[4] for _, bug in chosen}))  # their tests pass on the clean copy
    rows = []
    for n, (bug, path, original, injected, test) in chosen:
        target = copy / path
        text = target.read_text()
        if text.count(original) != 1:
            rows.append({"bug": bug, "test": test, "error": f"the original text is not once in {path}"})
            print(f"{n:2d}. {bug}: cannot inject (the code changed: {original!r} not found once in {path})")
            continue
        target.write_text(text.replace(original, injected))
        try:
            killed = not passes(test)
        finally:
            target.write_text(text)
        rows.append({"bug": bug, "test": test, "passes_clean": clean, "killed": killed})
        print(f"{n:2d}. {bug}: {test.split('::')[1]} "
              f"{'passes clean, fails on the bug: KILLED' if clean and killed else 'NOT KILLED' if clean else 'FAILS CLEAN'}",
              flush=True)
    return rows


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a proportion ``k / n``: the interval of a sampled score."""
    if n == 0:
        return float("nan"), float("nan")
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return centre - half, centre + half


def summary(report: dict, equivalent: int = 0) -> str:
    """One line: mutants, killed, survived, timeouts, not covered, and the score over non-equivalent mutants
    (``equivalent`` survivors, judged by hand, leave the denominator; timeouts count as not killed)."""
    c = report.get("counts", {})
    n, k = report["total"] - equivalent, report["killed"]
    line = (f"{report['module']}: mutants {report['total']}"
            + (f" (seeded sample, seed {report['seed']}, of {report['population']})" if report.get("sample") else "")
            + (" (an earlier run's survivors, rerun)" if report.get("rerun") else "")
            + f", killed {k}, survived {c.get('survived', 0)}, timeouts {c.get('timeout', 0)}, "
              f"not covered {c.get('no tests', 0)}, suspicious {c.get('suspicious', 0)}"
            + (f", NOT CHECKED {c['not checked']} (mutmut ran none of them: did its clean test run fail?)"
               if c.get("not checked") else "")
            + (f", equivalent {equivalent}" if equivalent else "")
            + (f"; score {100 * k / n:.1f} %" if n else "; score n/a"))
    if report.get("sample") and n:
        low, high = wilson(k, n)
        line += f" (95 % interval {100 * low:.1f}-{100 * high:.1f} %)"
    return line


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", default=list(TESTS), choices=list(TESTS))
    parser.add_argument("--tests", nargs="+", help="test files (default: each module's own, see TESTS)")
    parser.add_argument("--keyword", "-k", default=None, help="pytest -k expression selecting the fast tests")
    parser.add_argument("--tool", choices=("mutmut", "ast"), default=None,
                        help="default: mutmut when installed, else the AST fallback")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--sample", type=int, default=None,
                        help="mutmut: run a seeded random sample of this many mutants per module (an estimate)")
    parser.add_argument("--seed", type=int, default=0, help="mutmut: the sample's seed")
    parser.add_argument("--timeout-constant", type=float, default=5.0,
                        help="mutmut: seconds added to a mutant's test time before its 15x timeout multiplier")
    parser.add_argument("--rerun", type=Path, default=None,
                        help="mutmut: run only the survivors listed in this earlier --json report, per module")
    parser.add_argument("--rev", default="HEAD",
                        help="the git revision to test (default HEAD); 'worktree' copies the working tree as it is")
    parser.add_argument("--named-bugs", nargs="*", type=int, default=None, metavar="N",
                        help="inject each of issue 19's thirteen named bugs (or bugs N ...) and run its test")
    parser.add_argument("--json", type=Path, default=None, help="write the reports (counts, survivors) here")
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
    # one commit for every module, named in each report (HEAD moves while a long run goes on)
    rev = None if args.rev == "worktree" else subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT,
                                                             capture_output=True, text=True, check=True).stdout.strip()
    if args.named_bugs is not None:
        workdir = args.workdir / "named-bugs" if args.workdir else Path(tempfile.mkdtemp(prefix="named-bugs-"))
        rows = run_named_bugs(workdir, rev, args.named_bugs)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        killed = sum(bool(r.get("passes_clean") and r.get("killed")) for r in rows)
        print(f"named bugs: {killed}/{len(rows)} killed by their test")
        return rows
    reports = []
    for module in args.modules:
        tests = args.tests or [t for t in TESTS[module] if (ROOT / t).exists()]
        if args.keyword:
            tests = [*tests, "-k", args.keyword]
        workdir = args.workdir / module if args.workdir else Path(tempfile.mkdtemp(prefix=f"mutation-{module}-"))
        start = time.perf_counter()
        if tool == "mutmut":
            only = None
            if args.rerun:
                only = [name for r in json.loads(args.rerun.read_text()) if r["module"] == module
                        for name in r["survivors"]]
                if not only:
                    print(f"{module}: no survivors to rerun in {args.rerun}")
                    continue
            report = run_mutmut(module, tests, workdir, args.max_children, args.sample, args.seed,
                                args.timeout_constant, only, rev)
        else:
            report = run_ast(module, tests, workdir, args.limit, args.timeout, rev)
        report["wall_s"] = round(time.perf_counter() - start)
        report["tests"] = tests
        report["rev"] = rev or "worktree"
        print(f"{summary(report)}; tests {' '.join(tests)}; at {report['rev']}; {report['wall_s']} s")
        for line in report["survivors"]:
            print(f"  survived: {line}")
        reports.append(report)
        if args.json:
            args.json.write_text(json.dumps(reports, indent=1))
    return reports


if __name__ == "__main__":
    main()
