"""The unlearning metrics on hand-made cases, and the retain model (the vanilla recipe without the forget people)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manu_lite import metrics as M


def test_truth_ratio_by_hand():
    # paraphrased NLL 1.0 per token, perturbed NLLs 2 and 4 (mean 3): ratio exp(-3)/exp(-1) = exp(-2).
    ratios = M.truth_ratios([1.0, 2.0], [[2.0, 4.0], [2.0, 2.0]])
    assert ratios[0] == pytest.approx(math.exp(-2), rel=1e-6)
    assert ratios[1] == pytest.approx(1.0, rel=1e-6)
    # closer to 1 better: min(e^-2, e^2) = e^-2 and 1 → mean.
    assert M.truth_ratio_score(ratios) == pytest.approx((math.exp(-2) + 1) / 2, rel=1e-6)
    assert M.truth_ratio_score([4.0]) == pytest.approx(0.25, rel=1e-6)


def test_forget_quality_is_the_ks_p_value():
    from scipy.stats import ks_2samp

    same = np.linspace(0.1, 1, 20)
    assert M.forget_quality(same, same) == pytest.approx(1.0)
    far = M.forget_quality(np.full(20, 0.01) + np.arange(20) * 1e-3, same)
    assert far < 1e-4
    a, b = [0.1, 0.4, 0.5, 0.9], [0.2, 0.3, 0.8]
    assert M.forget_quality(a, b) == ks_2samp(a, b).pvalue


def test_mia_auc_and_privleak():
    # forget scores (label 0) all below holdout (label 1): AUC 1 — the forget people stand out.
    assert M.mia_auc([0.1, 0.2], [0.5, 0.9]) == 1.0
    assert M.mia_auc([0.5, 0.9], [0.1, 0.2]) == 0.0
    # one tie among 2x2 pairs: (3 + 0.5)/4
    assert M.mia_auc([0.1, 0.5], [0.5, 0.9]) == pytest.approx(0.875)
    assert M.privleak(0.75, 0.5) == pytest.approx(50.0)
    assert M.privleak(0.5, 0.5) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        M.mia_auc([], [1.0])


def test_attack_scores_by_hand():
    lp = [-0.1, -2.0, -0.5, -3.0, -0.2]
    assert M.loss_score(lp) == pytest.approx(1.16)
    # k=0.4 of 5 tokens = the 2 lowest: -3, -2 → 2.5; k tiny keeps one token.
    assert M.min_k_score(lp, 0.4) == pytest.approx(2.5)
    assert M.min_k_score(lp, 0.01) == pytest.approx(3.0)
    import zlib

    assert M.zlib_score(lp, "Paris") == pytest.approx(1.16 / len(zlib.compress(b"Paris")))
    assert M.min_k_pp_score([1.0, -1.0, 0.0], 0.34) == pytest.approx(1.0)


def test_min_k_pp_z_by_hand():
    # two-token vocabulary, p = (0.5, 0.5): mu = log 0.5, variance 0 → clamped to 1e-6; target z = 0.
    # p = (0.9, 0.1): mu = .9 log .9 + .1 log .1, var = E[log p^2] - mu^2.
    p = torch.tensor([[0.9, 0.1]]).log()
    mu = 0.9 * math.log(0.9) + 0.1 * math.log(0.1)
    var = 0.9 * math.log(0.9) ** 2 + 0.1 * math.log(0.1) ** 2 - mu ** 2
    z = M.min_k_pp_z(p, torch.tensor([1]))
    assert z[0] == pytest.approx((math.log(0.1) - mu) / math.sqrt(var), rel=1e-6)
    z0 = M.min_k_pp_z(torch.tensor([[0.5, 0.5]]).log(), torch.tensor([0]))
    assert z0[0] == pytest.approx(0.0, abs=1e-4)  # float32 log over the clamped sigma 1e-3


def test_extraction_strength_and_exact_memorization():
    labels = [5, 6, 7, 8]
    assert M.extraction_strength([5, 6, 7, 8], labels) == 1.0
    assert M.extraction_strength([0, 6, 7, 8], labels) == 0.75
    assert M.extraction_strength([0, 0, 0, 8], labels) == 0.25
    assert M.extraction_strength([5, 6, 7, 0], labels) == 0.0
    assert M.exact_memorization([5, 6, 7, 0], labels) == 0.75


def test_collapse_detector():
    assert M.collapse_kind("") == "empty"
    assert M.collapse_kind(" ... !") == "empty"
    assert M.collapse_kind("the the the") == "repeated"
    assert M.collapse_kind("Paris Paris London Paris Rome Paris") == "repeated"
    assert M.collapse_kind("I don't know.") == "non_answer"
    assert M.collapse_kind("She was born in Paris in 1984.") is None
    share = M.collapse_share(["", "x x x", "She works as a baker.", "Sorry, no idea"])
    assert share["share"] == 0.75 and share["empty"] == 0.25 and share["non_answer"] == 0.25


def test_rank_auc_is_sklearn():
    from manu_lite.attacks import rank_auc

    assert rank_auc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(0.875)


# ------------------------------------------------------------------------------------------- with models
@pytest.fixture(scope="module")
def small_retain(small_world, model_cache):
    from conftest import SMALL_EPOCHS
    from manu_lite.finetune import TrainConfig, retain_model

    return retain_model(small_world, config=TrainConfig(epochs=SMALL_EPOCHS), progress=False)


def test_retain_model_same_steps_and_cached(small_world, small_vanilla, small_retain, model_cache):
    import json

    from conftest import SMALL_EPOCHS
    from manu_lite.finetune import TrainConfig, model_cache_path, training_items, vanilla_records
    from manu_lite.models import iter_batches

    entries = {p.name: json.loads((p / "manu_lite_done.json").read_text()) for p in model_cache.glob("tiny-llava-*")}
    # This world's retain entry (other tests cache other retain models in the same session cache).
    path = model_cache_path(small_world, config=TrainConfig(epochs=SMALL_EPOCHS), retain=True)
    assert path.name in entries
    retain = [entries[path.name]]
    # The small vanilla's steps, counted independently (other tests cache other vanilla models in the same cache).
    config = TrainConfig(epochs=SMALL_EPOCHS)
    items = training_items(vanilla_records(small_world), config.renderings)
    vanilla_steps = SMALL_EPOCHS * sum(1 for _ in iter_batches(small_vanilla[1], small_vanilla[2], items,
                                                              config.batch_size))
    assert any(v["steps"] == vanilla_steps for k, v in entries.items() if "retain" not in k)
    # same number of optimizer steps (epochs scaled for the smaller data), within one epoch of batches.
    assert abs(retain[0]["steps"] - vanilla_steps) <= retain[0]["steps"] / retain[0]["epochs"]
    assert retain[0]["epochs"] >= SMALL_EPOCHS  # equal when the batch count per epoch does not change
    # same tokenizer: losses compare token for token.
    assert small_retain[1].tokenizer.get_vocab() == small_vanilla[1].tokenizer.get_vocab()


def test_model_metrics_vanilla_vs_retain(small_world, small_vanilla, small_retain):
    from manu_lite.finetune import training_items

    holdout = training_items(small_world.retain_train[:2])  # stand-ins: only shapes and ranges are checked here
    got = {name: M.model_metrics(m, p, a, small_world, holdout, batch_size=64)
           for name, (m, p, a) in {"vanilla": small_vanilla, "retain": small_retain}.items()}
    for rendering in ("image_text", "text_only"):
        v, r = got["vanilla"][rendering], got["retain"][rendering]
        # the vanilla memorized the forget people, the retain model never saw them
        assert v["extraction_strength"] > r["extraction_strength"]
        assert v["exact_memorization"] > r["exact_memorization"]
        assert set(v["mia_auc"]) == set(M.MIA_ATTACKS)
    vs = M.against_retain(got["vanilla"], got["retain"])
    same = M.against_retain(got["retain"], got["retain"])
    assert same["text_only"]["forget_quality"] == pytest.approx(1.0)
    assert all(abs(x) < 1e-6 for x in same["image_text"]["privleak"].values())
    assert vs["text_only"]["forget_quality"] <= 1.0


def test_compare_with_retain_row(small_world, small_vanilla, small_retain, tmp_path):
    import json

    from manu_lite.attacks import unseen_people
    from manu_lite.baselines import UnlearnConfig
    from manu_lite.compare import CompareConfig, compare
    from manu_lite.evaluate import EvalConfig

    vanilla, processor, adapter = small_vanilla
    config = CompareConfig(methods=("vanilla", "ga"), unlearn=UnlearnConfig(steps=2, batch_size=8), sweeps=False,
                           attacks=False, evaluation=EvalConfig(instructions=False, max_new_tokens=8, batch_size=64,
                                                                tasks=("cloze",)))
    holdout = unseen_people(small_world, tmp_path, 5, seed=3)
    result = compare(vanilla, processor, adapter, small_world, tmp_path / "run", config, holdout=holdout,
                     progress=False, retain=small_retain)
    methods = result.summary["methods"]
    assert set(methods) == {"Retain", "Vanilla", "GA"}
    assert methods["Retain"]["distance_to_retain"] == {"image_text": 0.0, "text_only": 0.0}
    assert methods["Retain"]["vs_retain"]["text_only"]["forget_quality"] == pytest.approx(1.0)
    for rendering in ("image_text", "text_only"):
        assert methods["Vanilla"]["distance_to_retain"][rendering] > 0
        assert set(methods["GA"]["vs_retain"][rendering]["privleak"]) == {"loss", "zlib", "min_k", "min_k_pp"}
        assert 0 <= methods["GA"]["unlearning"][rendering]["collapse"]["share"] <= 1
    assert set(result.summary["closest_to_retain"]) == {"image_text", "text_only"}
    header = (tmp_path / "run" / "summary.csv").read_text().splitlines()[0]
    assert "dist→retain img+txt" in header and "forget quality text" in header and "collapse img+txt" in header
    assert "Retain" in json.loads((tmp_path / "run" / "unlearning_metrics.json").read_text())["metrics"]


def test_tradeoff_figure_marks_the_retain_target(tmp_path):
    import json

    from manu_lite.report import plot_tradeoff

    drops = {"forget": {"image_text": 10.0, "text_only": 8.0}, "retain": {"image_text": 1.0, "text_only": 2.0}}
    points = [{"label": f"GA {s} steps", "family": "GA", "param": "steps", "x": s, "drops": drops} for s in (1, 2)]
    path = plot_tradeoff(points, tmp_path / "t.png", target={"forget": {"image_text": 30.0, "text_only": 30.0},
                                                             "retain": {"image_text": 0.5, "text_only": 0.5}})
    data = json.loads(path.with_suffix(".json").read_text())
    assert data[-1]["label"] == "retain model (target)" and data[-1]["drops"]["forget"]["text_only"] == 30.0
    assert path.stat().st_size > 1000
