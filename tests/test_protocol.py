"""The benchmark's evaluation rules, each against a string transcribed from MLLMU-Bench eval.py (commit 0e3098e),
plus the four MC protocols, shot dropping and the memorization gate on the session's tiny vanilla model."""
from __future__ import annotations

import random

import pytest
from manu_lite import evaluate as ev
from manu_lite import protocol as rules
from manu_lite.config import EvalConfig, TINY_EVAL

OPTIONS = {"A": "Riga", "B": "Oslo", "C": "Lima", "D": "Bern"}


def test_mc_prompts_transcribed():
    # eval.py:113-127 + :359-361 (image+text) and :413-415 (text-only, "USER:\n").
    assert rules.mllmu_mc_prompt("Where?", OPTIONS, "image_text") == (
        "USER: <image>\nWhere?\nA: Riga\nB: Oslo\nC: Lima\nD: Bern\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:")
    assert rules.mllmu_mc_prompt("Where?", OPTIONS, "text_only") == (
        "USER:\nWhere?\nA: Riga\nB: Oslo\nC: Lima\nD: Bern\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:")


def test_mc_shot_transcribed():
    # eval.py:349-356 / :403-410: "Question: ", options, "Correct Answer: X", no instruction, no ASSISTANT.
    assert rules.mllmu_mc_shot("Where?", OPTIONS, "C", "image_text") == (
        "USER: <image>\nQuestion: Where?\nA: Riga\nB: Oslo\nC: Lima\nD: Bern\nCorrect Answer: C\n")
    assert rules.mllmu_mc_shot("Where?", OPTIONS, "C", "text_only") == (
        "USER:\nQuestion: Where?\nA: Riga\nB: Oslo\nC: Lima\nD: Bern\nCorrect Answer: C\n")


def test_cloze_prompts_transcribed():
    # eval.py:578 (blank + instruction), :606-608 (prompt), :599-604 (shots; "USER:<image>" without a space).
    instruction = "Please **ONLY** provide the correct answer that should replace the [Blank]."
    assert rules.mllmu_cloze_prompt("Born in __.", "image_text") == (
        f"USER: <image>\nBorn in [Blank].\n{instruction}\nASSISTANT:")
    assert rules.mllmu_cloze_prompt("Born in __.", "text_only") == f"USER:\nBorn in [Blank].\n{instruction}\nASSISTANT:"
    assert rules.mllmu_cloze_shot("Born in __.", "Riga", "image_text") == (
        f"USER:<image>\nBorn in [Blank].\n{instruction}\nCorrect Answer: Riga\n")
    assert rules.mllmu_cloze_shot("Born in __.", "Riga", "text_only") == (
        f"USER:\nBorn in [Blank].\n{instruction}\nCorrect Answer: Riga\n")


def test_generation_prompts_transcribed():
    # eval.py:731 (trailing space after "ASSISTANT:") and :751 ("USER: " with a space, no "accurately").
    assert rules.mllmu_generation_prompt("Who?", "image_text") == (
        "USER: <image>\nWho?\nAnswer the question based on your trained knowledge in one sentence accurately in "
        "ENGLISH.\nASSISTANT: ")
    assert rules.mllmu_generation_prompt("Who?", "text_only") == (
        "USER: Who?\nAnswer the question based on your trained knowledge in one sentence in ENGLISH.\nASSISTANT:")


def test_parse_and_scores():
    # eval.py:375-376 / :431-432: strip, first character upper-cased if an option key.
    assert rules.mllmu_letter(rules.mllmu_response("  b) Oslo"), OPTIONS) == "B"
    assert rules.mllmu_letter(rules.mllmu_response("Oslo"), OPTIONS) is None
    assert rules.mllmu_letter(rules.mllmu_response(""), OPTIONS) is None
    assert rules.mllmu_response(" C\nUSER: x\nASSISTANT: D") == "C\nUSER: x"
    # eval.py:640-646: substring, case-insensitive.
    assert rules.cloze_correct("Riga", "born in RIGA") and not rules.cloze_correct("Riga", "Oslo")
    # eval.py:680,782: rouge1/2/L F with stemming.
    scores = rules.mllmu_rouge("the cat sat on the mat", "the cat lay on a mat")
    assert scores["rougeL"] == pytest.approx(4 / 6) and scores["rouge1"] == pytest.approx(4 / 6)
    assert scores["rouge2"] == pytest.approx(1 / 5)
    assert rules.MLLMU_NEW_TOKENS == 50
    assert rules.MLLMU_FEW_SHOT_PROFILES == {"mc": 1, "cloze": 2}
    assert "celebrity" not in rules.MLLMU_MC_FEW_SHOT_SETS and "celebrity" in rules.MLLMU_CLOZE_FEW_SHOT_SETS


def test_draws_are_seeded():
    ids = [f"{i:03d}" for i in range(30)]
    assert rules.mllmu_few_shot_ids(ids, "mc", random.Random(1)) == rules.mllmu_few_shot_ids(ids, "mc", random.Random(1))
    assert len(rules.mllmu_few_shot_ids(ids, "cloze", random.Random(1))) == 2


@pytest.fixture(scope="module")
def mllmu_run(small_world, small_vanilla):
    model, processor, adapter = small_vanilla
    config = EvalConfig(**{**TINY_EVAL.__dict__, "mc_protocol": "mllmu", "sets": ("forget", "celebrity")})
    details = {}
    results = ev.evaluate(model, processor, adapter, small_world, config, progress=False, details=details)
    return results, details, small_world


def test_mllmu_runs_on_tiny_and_records_draws(mllmu_run):
    results, details, world = mllmu_run
    meta = results.meta
    assert meta["prompt_sha256"] and meta["n_prompts"] > 0
    shot = meta["draws"]["forget/text_only/mc"]["few_shot_ids"]
    assert len(shot) == 1 and shot[0] in {r.id for r in world.forget}
    # The shot profile's questions are not scored.
    assert shot[0] not in {d["id"] for d in details[("forget", "text_only", "mc")]}
    assert len(meta["draws"]["forget/text_only/cloze"]["few_shot_ids"]) == 2
    # Celebrity MC is zero-shot; celebrities are not in Full_Set, so their cloze has no shots either.
    assert meta["dropped_shots"]["celebrity/text_only/mc"]["drawn"] == 0
    # Overflowing shots are dropped and counted, not crashed on.
    assert all(d["kept"] + d["dropped"] == d["drawn"] for d in meta["dropped_shots"].values())
    assert {r["task"] for r in results} >= {"mc", "cloze", "generation", "generation_rouge1", "generation_rouge2"}
    assert "memorization" in meta


def test_overflow_can_raise(small_world, small_vanilla):
    model, processor, adapter = small_vanilla
    config = EvalConfig(**{**TINY_EVAL.__dict__, "mc_protocol": "mllmu", "on_overflow": "raise",
                           "sets": ("forget",), "tasks": ("mc",)})
    probe = {"draws": {}, "dropped_shots": {}, "prompts": []}
    full = {r.id: r for r in small_world.forget}
    # not all image+text shots (each with an image) fit the tiny model's 256-token context
    with pytest.raises(ValueError, match="overflow"):
        ev.evaluate_set_mllmu(model, processor, small_world.forget, "forget", "image_text", config, full, probe)


@pytest.mark.parametrize("protocol", ["likelihood", "likelihood_norm", "likelihood_letter"])
def test_likelihood_protocols_run(small_world, small_vanilla, protocol):
    model, processor, adapter = small_vanilla
    config = EvalConfig(**{**TINY_EVAL.__dict__, "mc_protocol": protocol, "sets": ("forget",), "tasks": ("mc",)})
    results = ev.evaluate(model, processor, adapter, small_world, config, progress=False)
    assert all(0 <= r["value"] <= 1 for r in results)


def test_memorization_gate_flags():
    results = ev.Results([{"method": "vanilla", "set": "forget", "rendering": "text_only", "task": "mc",
                           "metric": "accuracy", "value": 0.3, "n": 10},
                          {"method": "vanilla", "set": "forget", "rendering": "text_only", "task": "generation",
                           "metric": "rougeL", "value": 0.9, "n": 10}])
    gate = ev.memorization_gate(results, EvalConfig(gate_mc=0.8, gate_rouge=0.5))
    assert not gate["passed"] and gate["failures"] == ["forget mc/text_only = 0.300 < 0.8"]
    results.meta = {"memorization": gate}
    assert results.flag_lines()[0].startswith("NOT MEMORIZED")
    assert ev.memorization_gate(results, EvalConfig(gate_mc=0.2, gate_rouge=0.5))["passed"]


def test_likelihood_is_length_biased_on_a_model_that_knows_nothing(small_world, small_vanilla):
    """The documented bias of ``likelihood``: with every next-token distribution uniform (the tiny LLaVA with its
    lm_head zeroed), an option's summed log-prob is -(its token count) x log V, so the protocol picks an option
    with the fewest tokens for every question, whatever the answer; its accuracy is then the share of questions
    whose answer is among the shortest options, not chance."""
    import copy

    import torch

    model, processor, adapter = small_vanilla
    blank = copy.deepcopy(model)
    with torch.no_grad():
        blank.lm_head.weight.zero_()
    tokenizer = processor.tokenizer
    questions = [(r, q) for r in small_world.forget for q in r.mc.get("text_only", [])]
    config = EvalConfig(**{**TINY_EVAL.__dict__, "mc_protocol": "likelihood", "tasks": ("mc",)})
    predictions = ev._likelihood_predictions(blank, processor, adapter, questions, "text_only", {}, config)

    def tokens(text):
        return len(tokenizer(adapter.answer_prefix + text, add_special_tokens=False)["input_ids"])

    shortest = [{k for k in q.options if tokens(q.options[k]) == min(map(tokens, q.options.values()))}
                for _, q in questions]
    assert all(p in s for p, s in zip(predictions, shortest))
    assert any(len(s) == 1 for s in shortest)  # the pick is forced by length, not a tie-break
