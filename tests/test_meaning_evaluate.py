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
