"""``evaluate_set`` pinned where the evaluation tests did not reach (issue 19, mutation survivors), with the model
calls stubbed so that what is asked and how it is scored are read off by hand: the likelihood protocols' items and
their argmax (per character for ``likelihood_norm``), the cloze prompt's ``[Blank]`` and instruction, and the
per-question details."""
from __future__ import annotations

import math

import pytest

import manu_lite.evaluate as evaluate_module
from manu_lite.config import EvalConfig
from manu_lite.evaluate import evaluate_set
from manu_lite.models import PromptAdapter
from manu_lite.protocol import CLOZE_INSTRUCTION

ADAPTER = PromptAdapter("llava")


def _stub_logprobs(monkeypatch, score):
    """option_logprobs returns ``score(item)`` for each item; the items are kept."""
    seen = []

    def fake(model, processor, adapter, items, batch_size):
        seen.extend(items)
        return [score(item) for item in items]

    monkeypatch.setattr(evaluate_module, "option_logprobs", fake)
    return seen


def _mc(records, rendering):
    return [(r, q) for r in records for q in r.mc.get(rendering, [])]


def test_likelihood_letter_scores_each_present_letter_as_the_answer(small_world, monkeypatch):
    records = small_world.forget
    questions = _mc(records, "text_only")
    assert questions
    # the right letter scores -1, every other -5: the argmax must be the right answer every time
    answers = {q.question: q.answer for _, q in questions}
    seen = _stub_logprobs(monkeypatch, lambda item: -1.0 if item.answer == answers[_question(item, questions)]
                          else -5.0)
    scores = evaluate_set(None, None, ADAPTER, records, "forget", "text_only",
                          EvalConfig(tasks=("mc",), mc_protocol="likelihood_letter"))
    assert scores["mc"]["value"] == 1.0 and scores["mc"]["n"] == len(questions)
    per_question = [[i.answer for i in seen if _question(i, questions) == q.question] for _, q in questions]
    assert per_question == [[letter for letter in "ABCD" if letter in q.options] for _, q in questions]
    assert all(i.image is None and i.rendering == "text_only" for i in seen)


def _question(item, questions):
    """The question an item asks (its prompt starts with the question text)."""
    (q,) = {q.question for _, q in questions if item.question.startswith(q.question)}
    return q


def test_likelihood_norm_divides_by_the_option_length_in_characters(small_world, monkeypatch):
    records = small_world.forget
    questions = _mc(records, "text_only")
    right = {(q.question, q.options[q.answer]) for _, q in questions}
    # per character: the right option -0.5, the others -1.0; the raw sums then favour the shortest option
    _stub_logprobs(monkeypatch, lambda item: (-0.5 if (item.question, item.answer) in right else -1.0)
                   * len(item.answer))
    normed = evaluate_set(None, None, ADAPTER, records, "forget", "text_only",
                          EvalConfig(tasks=("mc",), mc_protocol="likelihood_norm"))
    assert normed["mc"]["value"] == 1.0
    raw = evaluate_set(None, None, ADAPTER, records, "forget", "text_only",
                       EvalConfig(tasks=("mc",), mc_protocol="likelihood"))
    by_hand = [max(q.options, key=lambda k: (-0.5 if k == q.answer else -1.0) * len(q.options[k])) == q.answer
               for _, q in questions]
    assert not all(by_hand)  # the raw sum does pick a shorter wrong option somewhere: the two protocols differ
    assert raw["mc"]["value"] == pytest.approx(sum(by_hand) / len(by_hand))


@pytest.mark.parametrize("instructions", [True, False])
def test_cloze_prompt_and_details(small_world, monkeypatch, instructions):
    records = small_world.forget
    questions = [(r, q) for r in records for q in r.cloze.get("text_only", [])]
    assert questions and any("__" in q.question for _, q in questions)
    asked = []

    def fake(model, processor, adapter, items, config, progress=False, desc="generate"):
        asked.extend(items)
        return [q.answer if n % 2 == 0 else "nothing like it" for n, (_, q) in enumerate(questions)]

    monkeypatch.setattr(evaluate_module, "generate", fake)
    scores = evaluate_set(None, None, ADAPTER, records, "forget", "text_only",
                          EvalConfig(tasks=("cloze",), instructions=instructions))
    want = [q.question.replace("__", "[Blank]") + "\n" + CLOZE_INSTRUCTION if instructions else q.question
            for _, q in questions]
    assert [i.question for i in asked] == want
    details = scores["cloze"]["details"]
    assert [set(d) for d in details] == [{"id", "question", "answer", "response", "value"}] * len(questions)
    assert [d["value"] for d in details] == [1.0 if n % 2 == 0 else 0.0 for n in range(len(questions))]
    assert [d["response"] for d in details][:2] == [questions[0][1].answer, "nothing like it"][:len(details)]
    assert scores["cloze"]["value"] == pytest.approx(sum(d["value"] for d in details) / len(details))


def test_an_empty_task_scores_nan_over_zero_questions(small_world, monkeypatch):
    monkeypatch.setattr(evaluate_module, "generate", lambda *a, **k: [])
    scores = evaluate_set(None, None, ADAPTER, [], "forget", "text_only", EvalConfig(tasks=("cloze",)))
    assert math.isnan(scores["cloze"]["value"]) and scores["cloze"]["n"] == 0 and scores["cloze"]["details"] == []


class _Model:
    """Stands in for a model: only ``training``, ``eval()`` and ``train(mode)`` (which refuses a non-bool, as
    ``nn.Module.train`` does)."""

    def __init__(self, training):
        self.training = training

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        return self


@pytest.mark.parametrize("rendering", ["text_only", "image_text"])
def test_evaluate_set_hands_its_model_processor_adapter_and_config_to_every_model_call(small_world, monkeypatch,
                                                                                      rendering):
    model, processor = object(), object()
    records = small_world.forget
    calls = []

    def fake_generate(m, p, a, items, config, progress=False, desc="generate"):
        calls.append(("generate", m, p, a, config, items))
        return ["A" for _ in items]

    def fake_logprobs(m, p, a, items, batch_size):
        calls.append(("logprobs", m, p, a, batch_size, items))
        return [0.0 for _ in items]

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    monkeypatch.setattr(evaluate_module, "option_logprobs", fake_logprobs)
    # the generate-based multiple-choice path (no likelihood protocol, no few-shot examples), then generation and
    # cloze; then the likelihood path
    config = EvalConfig(tasks=("mc", "generation", "cloze"), mc_protocol="mllmu", few_shot=0, batch_size=3)
    evaluate_set(model, processor, ADAPTER, records, "forget", rendering, config)
    likelihood = EvalConfig(tasks=("mc",), mc_protocol="likelihood", batch_size=5)
    evaluate_set(model, processor, ADAPTER, records, "forget", rendering, likelihood)
    assert [c[0] for c in calls] == ["generate"] * 3 + ["logprobs"]
    for kind, m, p, a, extra, items in calls:
        assert m is model and p is processor and a is ADAPTER
        assert extra is (config if kind == "generate" else 5)
        # every item in the rendering asked for, with the record's own image in image_text (none in text_only)
        assert {i.rendering for i in items} == {rendering}
        images = [r.image for r in records if r.image is not None]
        assert all((i.image is None) if rendering == "text_only" else any(i.image is im for im in images)
                   for i in items)
    mc_items = calls[0][5]
    assert [i.question for i in mc_items] == [evaluate_module._mc_prompt(q) for _, q in _mc(records, rendering)]
    assert all(i.answer is None and i.prefix == "" and i.prefix_images == () for i in mc_items)
    assert [i.question for i in calls[1][5]] == [
        f"{q.question}\n{evaluate_module.GENERATION_INSTRUCTION}" for r in records for q in r.generation.get(rendering, [])]


def _scores(set_name, rendering):
    """Distinct made-up scores per (set, rendering, task), as evaluate_set(_mllmu) would return them."""
    base = ["forget", "test", "retain", "celebrity"].index(set_name) * 0.2 + (rendering == "text_only") * 0.05
    return {task: {"value": base + k * 0.01, "n": 10 + k, "details": [{"id": f"{set_name}/{rendering}/{task}"}]}
            for k, task in enumerate(("mc", "generation", "cloze"))}


@pytest.mark.parametrize("method", ["vanilla", "manu"])
def test_evaluate_under_mllmu_collects_rows_details_and_the_prompt_hash(small_world, monkeypatch, method):
    import hashlib

    model, processor, world = _Model(training=True), object(), small_world
    config = EvalConfig(mc_protocol="mllmu", sets=("forget", "retain"))
    seen, metas = [], []

    def fake_mllmu(m, p, records, set_name, rendering, cfg, full_set, meta):
        assert m is model and p is processor and cfg is config and not model.training  # evaluated in eval mode
        assert records is world.eval_sets[set_name]
        assert set(full_set) == {r.id for r in list(world.forget) + list(world.retain)}
        assert all(full_set[r.id] is r for r in list(world.forget) + list(world.retain))
        metas.append(meta)
        meta["prompts"].extend([f"{set_name}-{rendering}-1", f"{set_name}-{rendering}-2"])
        meta["dropped_shots"][f"{set_name}/{rendering}/mc"] = {"drawn": 3, "kept": 1, "dropped": 2}
        seen.append((set_name, rendering))
        return _scores(set_name, rendering)

    monkeypatch.setattr(evaluate_module, "evaluate_set_mllmu", fake_mllmu)
    monkeypatch.setattr(evaluate_module, "evaluate_set", lambda *a, **k: pytest.fail("not the mllmu protocol"))
    gate_args = []
    monkeypatch.setattr(evaluate_module, "memorization_gate",
                        lambda results, cfg: gate_args.append((list(results), cfg)) or {"passed": True})
    details = {}
    by_method = {} if method == "vanilla" else {"method": method}  # vanilla is the default method
    results = evaluate_module.evaluate(model, processor, ADAPTER, world, config, progress=False, details=details,
                                       **by_method)
    pairs = [("forget", "image_text"), ("forget", "text_only"), ("retain", "image_text"), ("retain", "text_only")]
    assert seen == pairs and all(m is metas[0] for m in metas)
    want = [{"method": method, "set": s, "rendering": r, "task": t, "metric": evaluate_module.METRIC[t],
             "value": v["value"], "n": v["n"]} for s, r in pairs for t, v in _scores(s, r).items()]
    assert list(results) == want
    assert details == {(s, r, t): v["details"] for s, r in pairs for t, v in _scores(s, r).items()}
    assert model.training  # put back as it was
    prompts = [f"{s}-{r}-{k}" for s, r in pairs for k in (1, 2)]
    meta = results.meta
    assert meta["prompt_sha256"] == hashlib.sha256("\x00".join(prompts).encode()).hexdigest()
    assert meta["n_prompts"] == 8 and "prompts" not in meta
    assert meta["dropped_shots_total"] == 8 and meta["protocol"] == "mllmu" and meta["seed"] == config.seed
    assert meta["draws"] == {}
    if method == "vanilla":
        assert meta["memorization"] == {"passed": True} and gate_args == [(want, config)]
    else:
        assert "memorization" not in meta and gate_args == []


def test_evaluate_under_a_likelihood_protocol_passes_the_retain_pool_and_hashes_no_prompt(small_world, monkeypatch):
    model, processor, world = _Model(training=False), object(), small_world
    seen = []

    def fake_set(m, p, a, records, set_name, rendering, cfg, few_shot_pool=()):
        assert m is model and p is processor and a is ADAPTER and records is world.eval_sets[set_name]
        assert few_shot_pool is world.retain and cfg.mc_protocol == "likelihood"
        seen.append((set_name, rendering))
        return {"mc": {"value": 0.5, "n": 4, "details": []}}

    monkeypatch.setattr(evaluate_module, "evaluate_set", fake_set)
    monkeypatch.setattr(evaluate_module, "evaluate_set_mllmu", lambda *a, **k: pytest.fail("not a likelihood one"))
    results = evaluate_module.evaluate(model, processor, ADAPTER, world, None, method="npo", progress=False)
    # the default config: every set that has records, both renderings
    assert seen == [(s, r) for s in ("forget", "test", "retain", "celebrity") for r in ("image_text", "text_only")
                    if world.eval_sets[s]]
    assert all(row["method"] == "npo" for row in results) and len(results) == len(seen)
    assert results.meta == {"protocol": "likelihood", "seed": 0, "draws": {}, "dropped_shots": {},
                            "prompt_sha256": None, "n_prompts": 0, "dropped_shots_total": 0}
    assert not model.training
