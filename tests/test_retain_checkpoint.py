"""The hub path of the retain model: a user-supplied checkpoint (here a tiny random-init LLaVA saved locally, loaded
offline) through ``profiles.load_retain_model(name, retain=PATH)`` and ``manu-lite compare --retain PATH``."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def retain_checkpoint(small_vanilla, tmp_path_factory):
    """A real ``LlavaForConditionalGeneration`` with the vanilla's config and tokenizer, fresh random weights,
    saved with its processor like a hub checkpoint."""
    from transformers import LlavaForConditionalGeneration

    model, processor, _ = small_vanilla
    torch.manual_seed(123)
    fresh = LlavaForConditionalGeneration(model.config).eval()
    path = tmp_path_factory.mktemp("retain-checkpoint")
    fresh.save_pretrained(path)
    processor.save_pretrained(path)
    return path, fresh


def test_load_retain_model_reads_the_checkpoint(retain_checkpoint, monkeypatch):
    from manu_lite.profiles import load_retain_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, fresh = retain_checkpoint
    model, processor, adapter = load_retain_model("llava-hf/llava-1.5-7b-hf", retain=str(path), dtype="float32")
    assert type(model).__name__ == "LlavaForConditionalGeneration" and adapter.family == "llava"
    saved, loaded = fresh.state_dict(), model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert processor.tokenizer.get_vocab() == retain_checkpoint_vocab(path)


def retain_checkpoint_vocab(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True).get_vocab()


def test_a_hub_model_without_a_retain_checkpoint_is_refused():
    from manu_lite.profiles import load_retain_model

    with pytest.raises(ValueError, match="pass retain="):
        load_retain_model("llava-hf/llava-1.5-7b-hf")
    with pytest.raises(OSError, match="could not load"):
        load_retain_model("llava-hf/llava-1.5-7b-hf", retain="/nonexistent/retain-checkpoint")


def test_compare_cli_scores_the_given_retain_checkpoint(small_bench, small_world, small_vanilla, retain_checkpoint,
                                                        tmp_path, monkeypatch, capsys):
    """``--retain PATH`` is the Retain row: its scores are those of the checkpoint evaluated on its own."""
    from manu_lite.cli import main
    from manu_lite.compare import CompareConfig
    from manu_lite.evaluate import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, fresh = retain_checkpoint
    out = tmp_path / "run"
    assert main(["compare", "--data", str(small_bench), "--forget", "forget_10", "--epochs", "25", "--model", "tiny",
                 "--retain", str(path), "--methods", "vanilla", "--no-sweeps", "--no-attacks", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Retain" in printed and "closest to the retain model" in printed
    records = json.loads((out / "results.json").read_text())
    row = {(r["set"], r["rendering"], r["task"]): r["value"] for r in records if r["method"] == "Retain"}
    _, processor, adapter = small_vanilla
    direct = evaluate(fresh, processor, adapter, small_world, CompareConfig().evaluation, method="Retain",
                      progress=False)
    assert row == {(r["set"], r["rendering"], r["task"]): r["value"] for r in direct}
    vanilla = {(r["set"], r["rendering"], r["task"]): r["value"] for r in records if r["method"] == "Vanilla"}
    assert vanilla != row  # random weights, not the vanilla model: the checkpoint was used
    assert (out / "unlearning_metrics.json").exists()
