"""The compare workflow end to end on the small world, and its pieces on hand-checkable cases."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from manu_lite.baselines import UnlearnConfig
from manu_lite.attacks import rank_auc, recovery, unseen_people
from manu_lite.compare import CompareConfig, balance, best_at_retain_budget, compare
from manu_lite.cost import measure
from manu_lite.config import ManuConfig
from manu_lite.evaluate import EvalConfig
from manu_lite.finetune import TrainConfig



def test_rank_auc_matches_hand_counts():
    assert rank_auc([3, 4], [1, 2]) == 1.0
    assert rank_auc([1, 2], [3, 4]) == 0.0
    # pairs (pos, neg): (2,1) win, (2,3) loss, (5,1) win, (5,3) win → 3/4
    assert rank_auc([2, 5], [1, 3]) == pytest.approx(0.75)
    # a tie counts one half: (1,1) half, (1,0) win → 0.75
    assert rank_auc([1], [1, 0]) == pytest.approx(0.75)
    assert rank_auc([0.5] * 3, [0.5] * 4) == pytest.approx(0.5)


def test_recovery_balance_and_best_point():
    assert recovery(0.9, 0.5, 0.7) == pytest.approx(0.5)
    assert recovery(0.9, 0.88, 0.9) is None  # under 5 points forgotten: no recovery to speak of
    drops = {"forget": {"image_text": 30.0, "text_only": 10.0}}
    assert balance(drops) == 20.0
    points = [{"label": "a", "drops": {"forget": {"image_text": 40, "text_only": 1}, "retain": {"image_text": 20, "text_only": 0}}},
              {"label": "b", "drops": {"forget": {"image_text": 10, "text_only": 8}, "retain": {"image_text": 4, "text_only": 3}}},
              {"label": "c", "drops": {"forget": {"image_text": 5, "text_only": 12}, "retain": {"image_text": 1, "text_only": 6}}}]
    best = best_at_retain_budget(points)
    assert best["image_text"]["label"] == "b"  # a forgets more but costs 20 retain points
    assert best["text_only"]["label"] == "b"   # c forgets more text, but its text-only retain drop is over budget


def test_measure_reports_time_and_memory():
    with measure() as cost:
        block = torch.ones(64, 2**20)  # 256 MiB, touched
        block.add_(1)
    del block
    assert cost["seconds"] > 0
    assert cost["peak_rss_mb"] > 200 if cost["rss_method"] == "VmHWM" else cost["peak_rss_mb"] >= 0


def test_unseen_people_are_new(small_world, tmp_path):
    people = unseen_people(small_world, tmp_path, 20, seed=7)
    known = {r.name for r in small_world.forget_train + small_world.retain_train}
    assert people and all(p.name not in known for p in people)


def test_compare_end_to_end(small_world, small_vanilla, tmp_path):
    vanilla, processor, adapter = small_vanilla
    snapshot = [p.clone() for p in vanilla.parameters()]
    config = CompareConfig(
        unlearn=UnlearnConfig(steps=2, batch_size=8),
        manu=ManuConfig(alpha=10.0), manu_batch_size=16,
        evaluation=EvalConfig(instructions=False, max_new_tokens=8, batch_size=64, tasks=("cloze",)),
        alphas=(5.0, 10.0), positions=("recall",), step_grid=(1, 2), sweep_retain_people=4,
        relearn=TrainConfig(epochs=1, lr=1e-3, batch_size=8, warmup_steps=0), mia_people=5)
    holdout = unseen_people(small_world, tmp_path, 5, seed=3)
    result = compare(vanilla, processor, adapter, small_world, tmp_path / "run", config, holdout=holdout, progress=False)

    assert all(torch.equal(a, b) for a, b in zip(snapshot, vanilla.parameters()))  # every method ran on a copy
    methods = {r["method"] for r in result.results}
    assert methods == {"Vanilla", "GA", "GradDiff", "KL", "NPO", "MANU-paper", "MANU-reference",
                       "MANU-balanced"}
    out = tmp_path / "run"
    records = json.loads((out / "results.json").read_text())
    assert set(records[0]) == {"method", "set", "rendering", "task", "metric", "value", "n"}
    assert len(records) == 8 * 4 * 2 * 1  # methods × sets × renderings × tasks
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("method,forget cloze img+txt,forget cloze text,test cloze") and "peak MB" in table[0]
    assert len(table) == 9
    assert "| MANU-paper" in (out / "table.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["Vanilla"]["drops"]["forget"]["image_text"] == 0
    assert summary["methods"]["MANU-paper"]["cost"]["seconds"] > 0
    assert 0 <= summary["methods"]["GA"]["mia"]["auc"] <= 1
    assert set(summary["methods"]["GA"]["relearn_forget_score"]) == {"forget", "retain"}
    sweeps = json.loads((out / "sweeps.json").read_text())
    labels = {p["label"] for p in sweeps["points"]}
    assert {"GA 1 steps", "GA 2 steps", "MANU-paper recall α=5", "MANU-reference recall α=10"} <= labels
    # the step sweep evaluates the same state a run with that budget ends in: GA 2 steps == the main GA on forget
    sweep_forget = {(r["rendering"], r["task"]): r["value"] for r in sweeps["records"]
                    if r["method"] == "GA 2 steps" and r["set"] == "forget"}
    main_forget = {(r["rendering"], r["task"]): r["value"] for r in records if r["method"] == "GA" and r["set"] == "forget"}
    assert sweep_forget == pytest.approx(main_forget)
    for name in ("results", "balance", "tradeoff", "pruned_neurons", "robustness"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        json.loads((out / "figures" / f"{name}.json").read_text())
    heat = json.loads((out / "figures" / "pruned_neurons.json").read_text())
    assert any(s.startswith("vision") for s in heat["sites"]) and any(s.startswith("language") for s in heat["sites"])


def test_compare_refuses_unknown_methods():
    with pytest.raises(ValueError, match="unknown method"):
        CompareConfig(methods=("vanilla", "gd"))
    with pytest.raises(ValueError, match="relearn_fraction"):
        replace(CompareConfig(), relearn_fraction=0)
    # Chapter 05 once passed alphas=(10, 10) on colab (the profile's alpha is 10): three sweep points run twice.
    for field_name, values in (("alphas", (10.0, 10.0)), ("step_grid", (5, 20, 5)), ("positions", ("all", "all"))):
        with pytest.raises(ValueError, match=f"{field_name}=.* repeats a value"):
            CompareConfig(**{field_name: values})
    assert CompareConfig(alphas=(10.0, 30.0), step_grid=(5, 20)).alphas == (10.0, 30.0)


def test_profile_compare_trains_lora_baselines_on_hub_profiles_only():
    """Chapter 05's config: on colab/full the baselines train LoRA adapters on the one loaded (4-bit) model; a full
    fine-tune there deep-copied the model and raised in bitsandbytes' 4-bit matmul (issue 14)."""
    from manu_lite.config import PROFILES
    from manu_lite.compare import profile_compare

    tiny = profile_compare("tiny", step_grid=(5,))
    assert not tiny.unlearn.lora and tiny.manu_batch_size == CompareConfig().manu_batch_size
    assert tiny.evaluation == PROFILES["tiny"].evaluation and tiny.manu == PROFILES["tiny"].manu
    for name in ("colab", "full"):
        config = profile_compare(name, step_grid=(5,), attacks=False)
        assert config.unlearn.lora and config.manu_batch_size == PROFILES[name].batch_size
        assert config.evaluation == PROFILES[name].evaluation and config.step_grid == (5,) and not config.attacks
