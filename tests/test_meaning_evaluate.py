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


DETAIL_KEYS = {"mc": {"id", "question", "answer", "prediction", "response", "value"},
               "cloze": {"id", "question", "answer", "response", "value"},
               "generation": {"id", "question", "answer", "response", "rouge1", "rouge2", "rougeL", "value"}}


@pytest.mark.parametrize("set_name", ["retain", "celebrity"])
@pytest.mark.parametrize("rendering", ["image_text", "text_only"])
def test_mllmu_few_shot_prefix_is_the_drawn_profiles_shots_in_the_sets_that_use_them(small_world, monkeypatch,
                                                                                     set_name, rendering):
    from manu_lite import protocol

    records = small_world.eval_sets[set_name]
    assert records
    full_set = {r.id: r for r in list(small_world.forget) + list(small_world.retain)}
    asked = []

    def fake_generate(model, processor, adapter, items, config, progress=False, desc="generate"):
        asked.append(items)
        return ["nothing" for _ in items]

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    meta = {"draws": {}, "dropped_shots": {}, "prompts": []}
    # model None: no context length, so every shot is kept
    scores = evaluate_module.evaluate_set_mllmu(None, None, records, set_name, rendering,
                                                EvalConfig(mc_protocol="mllmu"), full_set, meta)
    tasks = EvalConfig().tasks
    assert len(asked) == len(tasks)
    for task, items in zip(tasks, asked):
        ids = meta["draws"][f"{set_name}/{rendering}/{task}"]["few_shot_ids"]
        shots = [full_set[i] for i in ids if i in full_set]
        # the benchmark's few-shot sets: MC in forget/retain/test, cloze in those and celebrity; generation none
        uses = {"mc": protocol.MLLMU_MC_FEW_SHOT_SETS, "cloze": protocol.MLLMU_CLOZE_FEW_SHOT_SETS}.get(task, ())
        # shots come from Full_Set (the fictitious people): a celebrity set draws IDs but finds no profile
        assert bool(shots) == (set_name == "retain" and task != "generation")
        if task == "mc" and set_name in uses:
            text = "".join(protocol.mllmu_mc_shot(q.question, q.options, q.answer, rendering)
                           for r in shots for q in r.mc.get(rendering, []))
            images = [r.image for r in shots for _ in r.mc.get(rendering, [])]
        elif task == "cloze" and set_name in uses:
            text = "".join(protocol.mllmu_cloze_shot(q.question, q.answer, rendering)
                           for r in shots for q in r.cloze.get(rendering, []))
            images = [r.image for r in shots for _ in r.cloze.get(rendering, [])]
        else:
            text, images = "", []
        assert items and all(i.prefix == text for i in items), (task, set_name)
        want_images = tuple(images) if rendering == "image_text" else ()
        assert all(len(i.prefix_images) == len(want_images) and all(a is b for a, b in zip(i.prefix_images,
                                                                                             want_images))
                   for i in items), (task, set_name)
        assert all(i.rendering == rendering and (i.image is None) == (rendering == "text_only") for i in items)
        details = scores[task]["details"]
        assert details and all(set(d) == DETAIL_KEYS[task] for d in details), task
        # the shot profiles' own questions are not scored (a celebrity set's drawn IDs find no profile: none out)
        assert {d["id"] for d in details} == {r.id for r in records if getattr(r, task).get(rendering)} - {r.id for r in shots}
        assert bool(ids) == (task != "generation") and set(ids) <= {r.id for r in records}  # drawn from the set
    assert meta["prompts"] == [i.prefix + i.question for items in asked for i in items]


def _context_model(limit):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=limit))


@pytest.mark.parametrize("limit, kept", [(11, 1), (12, 2), (13, 2), (16, 3)])
def test_fit_shots_keeps_the_most_shots_whose_prompt_plus_new_tokens_fits_exactly(monkeypatch, limit, kept):
    from manu_lite.models import Item

    # one token per character: a prompt is its prefix plus its question
    monkeypatch.setattr(evaluate_module, "_prompt_length", lambda processor, item: len(item.prefix + item.question))
    items = [Item("q", "text_only", None), Item("qq", "text_only", None)]  # the longest question is 2 long
    shots = [("aaaa", None)] * 3
    # k shots: 4k + 2 prompt tokens + 2 new tokens; 12 fits two shots exactly, 11 only one
    assert evaluate_module._fit_shots(_context_model(limit), None, items, shots, EvalConfig(), 2) == (kept, 3 - kept)
    if kept < 3:
        with pytest.raises(ValueError, match=rf"^3 few-shot examples overflow the model's context of {limit} tokens "
                                             rf"\(only {kept} fit\)"):
            evaluate_module._fit_shots(_context_model(limit), None, items, shots, EvalConfig(on_overflow="raise"), 2)
    with pytest.raises(ValueError, match=r"^a prompt without few-shot examples exceeds the model's context of 3 "):
        evaluate_module._fit_shots(_context_model(3), None, items, shots, EvalConfig(), 2)
    assert evaluate_module._fit_shots(_context_model(None), None, items, shots, EvalConfig(), 2) == (3, 0)


def test_only_test_set_rows_are_scored_on_a_transformed_image():
    import random
    from types import SimpleNamespace

    record = SimpleNamespace(image="original", images=["t1", "t2", "t3"])
    for set_name in ("forget", "retain", "celebrity"):
        assert evaluate_module._image(record, set_name, random.Random(0)) == "original"
    assert evaluate_module._image(record, "test", random.Random(0)) == random.Random(0).choice(record.images)
    assert evaluate_module._image(SimpleNamespace(image="original", images=[]), "test", random.Random(0)) == "original"


def test_a_record_without_questions_in_a_rendering_asks_none(small_world, monkeypatch):
    import dataclasses

    record = small_world.forget[0]
    # this record has generation and cloze questions in image_text only
    bare = dataclasses.replace(record, generation={"image_text": record.generation["image_text"]},
                               cloze={"image_text": record.cloze["image_text"]})
    asked = []
    monkeypatch.setattr(evaluate_module, "generate", lambda m, p, a, items, config, **k: asked.append(items) or
                        ["x" for _ in items])
    scores = evaluate_set(None, None, ADAPTER, [bare, small_world.forget[1]], "forget", "text_only",
                          EvalConfig(tasks=("generation", "cloze")))
    assert scores["generation"]["n"] == len(small_world.forget[1].generation["text_only"])
    assert scores["cloze"]["n"] == len(small_world.forget[1].cloze["text_only"])
    assert {d["id"] for t in ("generation", "cloze") for d in scores[t]["details"]} == {small_world.forget[1].id}


def test_mllmu_gives_the_celebrity_set_cloze_shots_but_no_mc_shots(small_world, monkeypatch):
    # with celebrity profiles in Full_Set the drawn IDs are found: eval.py still shows MC examples only in
    # forget/retain/test, cloze examples in celebrity too
    records = small_world.celebrity
    full_set = {r.id: r for r in list(small_world.forget) + list(small_world.retain) + list(records)}
    asked = []
    monkeypatch.setattr(evaluate_module, "generate", lambda m, p, a, items, config, **k: asked.append(items) or
                        ["nothing" for _ in items])
    meta = {"draws": {}, "dropped_shots": {}, "prompts": []}
    evaluate_module.evaluate_set_mllmu(None, None, records, "celebrity", "text_only",
                                       EvalConfig(mc_protocol="mllmu", tasks=("mc", "cloze")), full_set, meta)
    mc, cloze = asked
    assert meta["draws"]["celebrity/text_only/mc"]["few_shot_ids"] and all(i.prefix == "" for i in mc)
    assert meta["dropped_shots"]["celebrity/text_only/mc"] == {"drawn": 0, "kept": 0, "dropped": 0}
    assert cloze and all(i.prefix.startswith("USER:\n") for i in cloze)
    assert meta["dropped_shots"]["celebrity/text_only/cloze"]["drawn"] > 0
