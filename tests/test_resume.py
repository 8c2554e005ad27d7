"""Run directories: a manifest of hashed steps; a killed demo resumed with --resume gives the same results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from manu_lite.artifacts import CorruptArtifactError, RunManifest

from conftest import SMALL_EPOCHS


def test_manifest_detects_changed_and_missing_files(tmp_path):
    run = RunManifest(tmp_path, {"seed": 0})
    artifact = tmp_path / "a.json"
    artifact.write_text("[1]")
    run.complete("step", [artifact])
    resumed = RunManifest(tmp_path, {"seed": 0}, resume=True)
    assert resumed.done("step") and not resumed.done("other")
    artifact.write_text("[2]")
    with pytest.raises(CorruptArtifactError, match="hash mismatch"):
        resumed.done("step")
    artifact.unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        resumed.done("step")
    with pytest.raises(ValueError, match="other settings"):
        RunManifest(tmp_path, {"seed": 1}, resume=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["environment"]["packages"]["torch"]


def _demo_args(small_bench, out):
    return ["demo", "--data", str(small_bench), "--out", str(out), "--epochs", str(SMALL_EPOCHS)]


def test_killed_demo_resumes_to_the_same_results(tmp_path, small_bench, small_vanilla, model_cache):
    from manu_lite.cli import main

    reference = tmp_path / "uninterrupted"
    assert main(_demo_args(small_bench, reference)) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "MANU_LITE_CACHE": str(model_cache), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "manu_lite", *_demo_args(small_bench, killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "manifest.json"
    deadline = time.time() + 300
    # Kill the process for real (SIGKILL, no cleanup) as soon as the vanilla evaluation is recorded.
    while time.time() < deadline and process.poll() is None:
        if manifest.exists() and "evaluate-vanilla" in manifest.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps = json.loads(manifest.read_text())["steps"]
    assert "evaluate-vanilla" in steps and "evaluate-manu" not in steps
    assert not (killed / "results.json").exists()

    assert main([*_demo_args(small_bench, killed), "--resume"]) == 0
    assert json.loads((killed / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    assert (killed / "manu" / "mask.safetensors").read_bytes() == (reference / "manu" / "mask.safetensors").read_bytes()


def test_the_full_benchmark_resumes_inside_a_split(tmp_path, small_world, small_vanilla, monkeypatch):
    """Chapter 06's runner (workflow.benchmark_split): killed in the middle of a split, it resumes from the steps
    recorded with their hashes (statistics, mask, adapters, results) without recomputing them, ends with the
    results of an uninterrupted run, prints every step's time and memory, and leaves the model as it was."""
    if os.environ.get("CI") == "true":
        __import__("peft")
    else:
        pytest.importorskip("peft")
    import copy
    import dataclasses

    import torch

    from manu_lite import baselines, workflow
    from manu_lite.config import TINY_EVAL, TINY_MANU
    from manu_lite.steps import StepRun

    vanilla, processor, adapter = small_vanilla
    model = copy.deepcopy(vanilla)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    evaluation = dataclasses.replace(TINY_EVAL, sets=("forget", "retain"), tasks=("mc",))
    kwargs = dict(methods=("manu", "ga"), manu=TINY_MANU, evaluation=evaluation, batch_size=8,
                  unlearn_config=baselines.UnlearnConfig(steps=2, batch_size=4, lr=1e-2, lora_r=4))
    settings = {"split": "forget_10", "methods": ["manu", "ga"]}

    def run(out, resume=False, echo=None):
        steps = StepRun(out, settings, resume=resume, echo=echo)
        return workflow.benchmark_split(steps, model, processor, adapter, small_world, **kwargs), steps

    (reference, _), _ = run(tmp_path / "uninterrupted")
    real_evaluate = workflow.evaluate

    def killed_at_ga(*args, method=None, **kw):
        if method == "GA":
            raise KeyboardInterrupt("session lost")
        return real_evaluate(*args, method=method, **kw)

    monkeypatch.setattr(workflow, "evaluate", killed_at_ga)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run")
    monkeypatch.setattr(workflow, "evaluate", real_evaluate)
    done = json.loads((tmp_path / "run" / "manifest.json").read_text())["steps"]
    assert list(done) == ["evaluate-vanilla", "manu", "evaluate-manu", "unlearn-ga"]
    assert all(done[s]["cost"]["seconds"] > 0 for s in done)
    assert (tmp_path / "run" / "manu" / "stats" / "forget_text_only.safetensors").exists()

    recomputed = []
    monkeypatch.setattr(workflow, "manu_unlearn", lambda *a, **k: recomputed.append("manu"))
    monkeypatch.setattr(baselines, "unlearn_with", lambda *a, **k: recomputed.append("ga"))
    lines: list[str] = []
    (resumed, _), steps = run(tmp_path / "run", resume=True, echo=lines.append)
    assert not recomputed  # statistics, mask and adapters read back from their files
    assert list(resumed) == list(reference)  # the GA adapters reloaded from disk score as the trained ones did
    assert [(c["step"], c["resumed"]) for c in steps.costs] == [
        ("evaluate-vanilla", True), ("manu", True), ("evaluate-manu", True), ("unlearn-ga", True),
        ("evaluate-ga", False)]
    assert len(lines) == 5 and all(" s, peak RSS +" in line for line in lines) and "done before" in lines[0]
    after = dict(model.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], w) for n, w in before.items())

    (tmp_path / "run" / "manu" / "mask" / "mask.json").write_text("{}")
    with pytest.raises(CorruptArtifactError, match="manu"):
        run(tmp_path / "run", resume=True)
