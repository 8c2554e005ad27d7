"""Memorization fine-tuning: loss on answer tokens only, learning, caching, determinism, and the CLI end to end."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from manu_lite.evaluate import EvalConfig, evaluate
from manu_lite.artifacts import CorruptArtifactError
from manu_lite.bench import load_world
from manu_lite.finetune import (TrainConfig, epoch_batches, load_cached, model_cache_path, save_cached, tokenizer_corpus,
                                train, training_items, vanilla_model, vanilla_records, world_fingerprint)
from manu_lite.models import PromptAdapter, build_tiny, encode_item

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


def test_every_forget_split_shares_one_vanilla_but_not_one_retain_model(small_bench):
    worlds = [load_world(str(small_bench), split) for split in ("forget_5", "forget_10", "forget_15")]
    assert len({tuple(r.id for r in w.forget_train) for w in worlds}) == 3
    assert len({world_fingerprint(w) for w in worlds}) == 1
    assert len({model_cache_path(w) for w in worlds}) == 1
    assert len({model_cache_path(w, retain=True) for w in worlds}) == 3
    # The data still matters: a world with one answer changed is another model.
    changed = load_world(str(small_bench), "forget_5")
    record = changed.retain_train[0]
    changed.retain_train[0] = dataclasses.replace(record, train_qa=[dataclasses.replace(record.train_qa[0],
                                                                                      answer="another answer")]
                                                  + record.train_qa[1:])
    assert world_fingerprint(changed) != world_fingerprint(worlds[0])


def test_a_corrupted_cache_entry_raises_with_its_path_and_the_fix(tmp_path, small_world):
    records = vanilla_records(small_world)[:2]
    model, processor, _ = build_tiny(tokenizer_corpus(records, PromptAdapter()), seed=0)
    entry = save_cached(tmp_path / "tiny-llava-x", model, processor, {"steps": 0})
    loaded, _ = load_cached(entry)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="hash mismatch in model.safetensors") as info:
        load_cached(entry)
    assert str(entry) in str(info.value) and "delete the directory" in str(info.value)
    weights.unlink()
    with pytest.raises(CorruptArtifactError, match="model.safetensors"):
        load_cached(entry)


def test_vanilla_model_refuses_a_corrupted_cache_entry(tmp_path, small_world, small_vanilla, monkeypatch):
    import shutil

    entry = model_cache_path(small_world, config=TrainConfig(epochs=SMALL_EPOCHS))
    assert entry.is_dir()
    monkeypatch.setenv("MANU_LITE_CACHE", str(tmp_path))
    copy = shutil.copytree(entry, tmp_path / entry.name)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace("ASSISTANT", "ASSISTENT"))
    with pytest.raises(CorruptArtifactError, match="tokenizer.json"):
        vanilla_model(small_world, config=TrainConfig(epochs=SMALL_EPOCHS), progress=False)


def test_length_buckets_keep_every_item_once_and_group_lengths(small_world):
    records = vanilla_records(small_world)[:4]
    model, processor, adapter = build_tiny(tokenizer_corpus(records, PromptAdapter()), seed=0)
    items = training_items(records)
    items = items + [type(item)(item.question * 8, item.rendering, item.image, item.answer) for item in items[:16]]
    encoded = [encode_item(processor, adapter, item) for item in items]
    for buckets in (1, 4):
        config = TrainConfig(batch_size=8, length_buckets=buckets)
        batches = list(epoch_batches(processor, adapter, items, encoded, config, 0))
        assert sum(len(b["input_ids"]) for b in batches) == len(items)
        padding = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
        if buckets == 1:
            mixed = padding
    assert padding < mixed / 2, (padding, mixed)
