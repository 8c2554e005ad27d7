"""Bootstrap intervals and the paired test of :mod:`manu_lite.scores` on hand-made per-question scores with a
known distribution, and benchmarks/gold_standard.py's report on them."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from manu_lite import scores as S


def records(method, values, set_name="forget", rendering="image_text", task="mc", people=None):
    people = people or [f"p{i}" for i in range(len(values))]
    return [{"method": method, "set": set_name, "rendering": rendering, "task": task, "id": who, "value": float(v)}
            for v, who in zip(values, people)]


def test_interval_width_matches_the_binomial_standard_error():
    # 400 questions, half right: the mean's standard error is sqrt(.25/400) = 0.025, a 95 % interval +-4.9 points.
    values = np.array([1, 0] * 200)
    q = records("Vanilla", np.ones(400)) + records("GA", values)
    boot = S.Bootstrap(q, n_boot=4000, seed=0)
    ci = S.drop_intervals(boot)["GA"]["forget"]["image_text"]
    assert ci["value"] == pytest.approx(50.0)
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * 2.5, rel=0.1)
    assert ci["low"] < 50 < ci["high"]


def test_percentile_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        q = records("Vanilla", np.ones(100)) + records("GA", rng.random(100) < 0.3)
        ci = S.drop_intervals(S.Bootstrap(q, n_boot=500, seed=trial))["GA"]["forget"]["image_text"]
        covered += ci["low"] <= 70 <= ci["high"]
    assert 0.89 <= covered / 200 <= 0.99


def test_deterministic_by_seed():
    rng = np.random.default_rng(2)
    q = records("Retain", rng.random(30)) + records("KL", rng.random(30))
    a, b = S.Bootstrap(q, n_boot=300, seed=7), S.Bootstrap(q, n_boot=300, seed=7)
    c = S.Bootstrap(q, n_boot=300, seed=8)
    key = ("KL", "forget", "image_text", "mc")
    assert np.array_equal(a.draws[key], b.draws[key])
    assert not np.array_equal(a.draws[key], c.draws[key])
    assert S.distance_intervals(a) == S.distance_intervals(b)


def test_points_equal_the_aggregate_scores():
    rng = np.random.default_rng(3)
    q = []
    for method in ("Vanilla", "Retain", "GA"):
        for s in ("forget", "retain"):
            for r in ("image_text", "text_only"):
                for t in ("mc", "cloze", "generation"):
                    q += records(method, rng.random(12), s, r, t)
    boot = S.Bootstrap(q, n_boot=50)
    assert S.distance_intervals(boot)["GA"]["text_only"]["value"] == pytest.approx(
        S.distance_to_retain(S.question_results(q), "GA")["text_only"])
    assert S.drop_intervals(boot)["GA"]["retain"]["image_text"]["value"] == pytest.approx(
        S.drops(S.question_results(q))["GA"]["retain"]["image_text"])
    assert "Retain" not in S.distance_intervals(boot)


def test_pairing_cancels_the_shared_question_difficulty():
    # Question difficulty varies wildly, the method is the vanilla minus exactly 0.1 on every question: the paired
    # drop is exactly 10 points on every replicate.
    difficulty = np.linspace(0.1, 1.0, 50)
    q = records("Vanilla", difficulty) + records("NPO", difficulty - 0.1)
    ci = S.drop_intervals(S.Bootstrap(q, n_boot=200))["NPO"]["forget"]["image_text"]
    assert ci["low"] == pytest.approx(10) and ci["high"] == pytest.approx(10)


def test_person_bootstrap_is_wider_when_a_persons_questions_agree():
    # 4 people x 10 questions; two people all right, two all wrong: 40 questions but only 4 independent units.
    people = [f"p{i // 10}" for i in range(40)]
    values = [1.0 if i // 10 < 2 else 0.0 for i in range(40)]
    q = records("Vanilla", np.ones(40), people=people) + records("GA", values, people=people)
    by_question = S.drop_intervals(S.Bootstrap(q, unit="question", n_boot=2000))["GA"]["forget"]["image_text"]
    by_person = S.drop_intervals(S.Bootstrap(q, unit="person", n_boot=2000))["GA"]["forget"]["image_text"]
    assert by_person["high"] - by_person["low"] > 2 * (by_question["high"] - by_question["low"])
    assert by_person["value"] == by_question["value"] == pytest.approx(50)


def test_paired_test_separates_a_closer_method_and_not_an_equal_one():
    rng = np.random.default_rng(4)
    boots, ties = [], []
    for split in range(3):
        retain = rng.random(60)
        near, far = retain + rng.normal(0, 0.02, 60), retain + 0.2 + rng.normal(0, 0.02, 60)
        q = records("Retain", retain) + records("KL", near) + records("GA", far) + records("Twin", near)
        boots.append(S.Bootstrap(q, n_boot=1000, seed=split))
    test = S.paired_distance_test(boots, "KL", "GA", "image_text")
    assert test["difference"] < -15 and test["high"] < 0 and test["p"] == pytest.approx(1 / 1000)
    assert test["a_closer_splits"] == 3 and test["splits"] == 3
    same = S.paired_distance_test(boots, "KL", "Twin", "image_text")
    assert same["difference"] == 0 and same["p"] == 1.0
    pooled = S.pooled_interval([S.distance_replicates(b, "GA", "image_text") for b in boots])
    assert pooled["low"] < pooled["value"] < pooled["high"] and pooled["std"] >= 0


def test_bad_input_is_named():
    q = records("Retain", [1, 0, 1]) + records("GA", [1, 0])
    with pytest.raises(ValueError, match="other questions"):
        S.Bootstrap(q)
    with pytest.raises(ValueError, match="unit"):
        S.Bootstrap(records("GA", [1.0]), unit="sentence")
    with pytest.raises(ValueError, match="no per-question records"):
        S.Bootstrap([])
    with pytest.raises(ValueError, match="n_boot"):
        S.paired_distance_test([S.Bootstrap(records("Retain", [1, 0]) + records("GA", [0, 0]), n_boot=10),
                                S.Bootstrap(records("Retain", [1, 0]) + records("GA", [0, 0]), n_boot=20)],
                               "GA", "GA", "image_text")


def test_question_records_from_evaluate_details():
    details = {("forget", "text_only", "mc"): [{"id": "a", "question": "q", "value": 1.0},
                                              {"id": "b", "question": "r", "value": 0.0}]}
    assert S.question_records(details, "GA") == [
        {"method": "GA", "set": "forget", "rendering": "text_only", "task": "mc", "id": "a", "value": 1.0},
        {"method": "GA", "set": "forget", "rendering": "text_only", "task": "mc", "id": "b", "value": 0.0}]


def test_gold_standard_report_names_the_closest_method_with_its_test():
    spec = importlib.util.spec_from_file_location("gold_standard", Path(__file__).parents[1] / "benchmarks" /
                                                  "gold_standard.py")
    gold = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gold)
    rng = np.random.default_rng(5)
    runs = []
    for split in ("forget_5", "forget_10", "forget_15"):
        retain = rng.random(40)
        q = (records("Retain", retain) + records("Vanilla", np.ones(40)) + records("KL", retain + 0.01)
             + records("GA", np.zeros(40)))
        cell = {"distance": None, "forget_quality": 0.5, "privleak_loss": 10.0, "privleak_min_k_pp": None,
                "extraction": 0.1, "collapse": 0.0}
        rows = {m: {"image_text": cell, "text_only": cell} for m in ("Retain", "Vanilla", "KL", "GA")}
        runs.append({"split": split, "rows": rows, "timings": {"compare": 1.0}, "questions": q})
    text = gold.report(runs, n_boot=200)
    assert "closest to the retain model (image_text): KL" in text
    assert "vs GA" in text and "KL closer on 3/3 splits" in text
    with pytest.raises(SystemExit, match="per-question"):
        gold.report([{**runs[0], "questions": []}])


def test_retain_subsample_effect_by_hand():
    spec = importlib.util.spec_from_file_location("retain_subsample", Path(__file__).parents[1] / "benchmarks" /
                                                  "retain_subsample.py")
    sub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sub)
    people = ["a", "b", "c", "d"]
    q = []
    for method, retain_values in (("Vanilla", [1, 1, 1, 1]), ("Retain", [1, 1, 1, 1]), ("GA", [1, 1, 0, 0])):
        for r in ("image_text", "text_only"):
            q += records(method, retain_values, "retain", r, "mc", people)
            q += records(method, [0.5 if method != "Vanilla" else 1.0], "forget", r, "mc", ["f"])
    # GA's retain score: 0.5 on all four people, 1.0 on the sample {a, b}: drop 50 -> 0 points. Its distance to the
    # retain model over 2 cells (forget: GA = retain = 0.5; retain: 0.5 vs 1): (0 + 50) / 2 = 25 full, 0 on the sample.
    effect = sub.effects(q, {"a", "b"})["GA"]["image_text"]
    assert effect["retain_drop"] == (pytest.approx(50), pytest.approx(0))
    assert effect["distance"] == (pytest.approx(25), pytest.approx(0))
    everyone = sub.effects(q, set(people))["GA"]["text_only"]
    assert everyone["retain_drop"][0] == everyone["retain_drop"][1]
    assert len(sub.with_sample(q, {"a"})) == len(q) - 3 * 2 * 3
