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
