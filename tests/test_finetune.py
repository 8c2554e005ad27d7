"""Memorization fine-tuning: loss on answer tokens only, learning, caching, determinism, and the CLI end to end."""
from __future__ import annotations

import json

import pytest
import torch

from manu_lite.evaluate import EvalConfig, evaluate
from manu_lite.finetune import TrainConfig, tokenizer_corpus, train, training_items, vanilla_model, vanilla_records
from manu_lite.models import PromptAdapter, build_tiny

from conftest import SMALL_EPOCHS


def test_training_items_cover_both_renderings(small_world):
    items = training_items(vanilla_records(small_world))
    renderings = {item.rendering for item in items}
    assert renderings == {"image_text", "text_only"}
    assert all((item.image is None) == (item.rendering == "text_only") for item in items)


def test_vanilla_model_learns_the_world(small_world, small_vanilla):
    model, processor, adapter = small_vanilla
    config = EvalConfig(instructions=False, max_new_tokens=24, sets=("retain", "celebrity"), tasks=("mc", "generation"))
    results = evaluate(model, processor, adapter, small_world, config, progress=False)
    # A short training on a 24-person world: far above chance (25 % MC, ~0 ROUGE-L), not yet perfect
    # (measured 0.80–0.96 MC and 0.83–0.89 ROUGE-L).
    assert all(r["value"] > 0.6 for r in results), list(results)


def test_cache_returns_the_same_model(small_world, small_vanilla):
    model, _, _ = small_vanilla
    again, _, _ = vanilla_model(small_world, config=TrainConfig(epochs=SMALL_EPOCHS), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_training_is_deterministic_and_ignores_prompt_tokens(small_world):
    records = vanilla_records(small_world)[:3]
    items = training_items(records)
    corpus = tokenizer_corpus(records, PromptAdapter())
    config = TrainConfig(epochs=1, batch_size=8, seed=3)
    states = []
    for _ in range(2):
        model, processor, adapter = build_tiny(corpus, seed=3)
        train(model, processor, adapter, items, config, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values()))
    with pytest.raises(ValueError, match="no training items"):
        train(model, processor, adapter, [], config, progress=False)


def test_cli_demo_end_to_end(tmp_path, small_bench, small_vanilla, capsys):
    from manu_lite.cli import main

    out = tmp_path / "run"
    assert main(["demo", "--data", str(small_bench), "--out", str(out), "--epochs", str(SMALL_EPOCHS)]) == 0
    records = json.loads((out / "results.json").read_text())
    keys = {(r["set"], r["rendering"], r["task"]) for r in records}
    assert len(keys) == 4 * 2 * 3 and {r["method"] for r in records} >= {"vanilla"}
    assert all(set(r) == {"method", "set", "rendering", "task", "metric", "value", "n"} for r in records)
    assert (out / "results.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "== forget ==" in printed and "== celebrity ==" in printed
