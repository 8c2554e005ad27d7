"""Evaluation and statistics pinned to their meaning (issue 19): each test fails on a named one-line bug.

- ``generate`` returns only the new tokens (a stub model whose continuation is known);
- Test_Set rows are scored on one of ``record.images``, never the original image;
- a ``Correct_Answer`` naming a null option is refused;
- the mllmu few-shot path, and lower bounds on the vanilla model (an evaluator returning 0 fails);
- recall rows picked by hand (not by ``token_mask_from_batch``), every statistic compared.
"""
from __future__ import annotations

import math

import pytest
import torch

import manu_lite.evaluate as evaluate_module
from bench_rows import eval_row, write_raw
from manu_lite.bench import BenchSchemaError, load_bench
from manu_lite.config import EvalConfig
from manu_lite.evaluate import evaluate, evaluate_set, generate
from manu_lite.hooks import find_sites, record_neurons, token_mask_from_batch
from manu_lite.models import Item, tokenizer_of
from manu_lite.stats import collect_stats
from tiny_models import PAD, tiny_llava

CONTINUATION = " Riga in Latvia"


class _StubGenerator(torch.nn.Module):
    """``generate`` appends a known continuation to whatever prompt (left-padded batch) it gets."""

    def __init__(self, new_ids):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = torch.tensor(new_ids)
        self.prompts = []

    def generate(self, input_ids, max_new_tokens, **_):
        self.prompts.append(input_ids.clone())
        new = self.new_ids[:max_new_tokens].expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)


def test_generate_returns_only_the_new_tokens(small_vanilla):
    _, processor, adapter = small_vanilla
    tokenizer = tokenizer_of(processor)
    new_ids = tokenizer(CONTINUATION, add_special_tokens=False)["input_ids"]
    stub = _StubGenerator(new_ids)
    items = [Item("Where was she born?", "text_only"), Item("And where, in a much longer question, was he?", "text_only")]
    out = generate(stub, processor, adapter, items, EvalConfig(max_new_tokens=len(new_ids), batch_size=2))
    assert out == [CONTINUATION.strip()] * 2
    # The prompt's last token decodes to visible text, so keeping it would change the answer.
    last = stub.prompts[0][0, -1].item()
    assert tokenizer.decode([last], skip_special_tokens=True).strip()


def _capture_generate(monkeypatch, answer=lambda item: ""):
    calls = []

    def fake(model, processor, adapter, items, config, progress=False, desc="generate"):
        calls.append(list(items))
        return [answer(item) for item in items]

    monkeypatch.setattr(evaluate_module, "generate", fake)
    return calls


def test_test_set_is_scored_on_one_of_the_transformed_images(small_world, small_vanilla, monkeypatch):
    model, processor, adapter = small_vanilla
    records = small_world.test
    assert records and all(r.images for r in records)
    calls = _capture_generate(monkeypatch)
    evaluate_set(model, processor, adapter, records, "test", "image_text",
                 EvalConfig(tasks=("generation", "cloze")))
    items = [i for call in calls for i in call]
    assert items
    for item in items:
        owner = [r for r in records if any(item.image is im for im in r.images)]
        assert len(owner) == 1, "the item's image is none of the records' transformed images"
        assert item.image is not owner[0].image
    # The other sets keep the original image.
    calls.clear()
    evaluate_set(model, processor, adapter, small_world.forget, "forget", "image_text", EvalConfig(tasks=("cloze",)))
    assert {id(i.image) for call in calls for i in call} <= {id(r.image) for r in small_world.forget}


# Not cloze: its two few-shot profiles are drawn from the scored set, i.e. both of small_world's Test_Set people.
@pytest.mark.parametrize("task", ["generation", "mc"])
def test_mllmu_test_set_is_scored_on_the_drawn_transformed_image(small_world, small_vanilla, monkeypatch, task):
    # The benchmark draws one transformed image per Test_Set row and task; the original portrait is never scored.
    model, processor, _ = small_vanilla
    records = small_world.test
    calls = _capture_generate(monkeypatch)
    meta = {"draws": {}, "dropped_shots": {}, "prompts": []}
    config = EvalConfig(mc_protocol="mllmu", tasks=(task,), few_shot=0)
    evaluate_module.evaluate_set_mllmu(model, processor, records, "test", "image_text", config,
                                       {r.id: r for r in small_world.forget}, meta)
    drawn = meta["draws"][f"test/image_text/{task}"]["test_image_index"]
    assert set(drawn) == {r.id for r in records}
    items = [i for call in calls for i in call]
    assert items
    for item in items:
        owner = [r for r in records if any(item.image is im for im in r.images)]
        assert len(owner) == 1 and item.image is not owner[0].image, "not one of the row's transformed images"
        assert item.image is owner[0].images[drawn[owner[0].id]], "not the image the run manifest records"


def test_correct_answer_naming_a_null_option_is_refused(tmp_path):
    row = eval_row()
    question = row["Classification_Task"]["Image_Textual_Questions"][0]
    question["Options"]["D"] = None  # three options present: A, B, C
    question["Correct_Answer"] = "D"
    write_raw(tmp_path, "Full_Set", [row])
    with pytest.raises(BenchSchemaError, match="Correct_Answer 'D' is not one of the options"):
        load_bench(str(tmp_path), "Full_Set")


def _question_of(item, records, rendering):
    matches = [q for r in records for q in r.mc.get(rendering, [])
               if item.question.startswith(q.question + "\n")
               and all(f"{letter}: {text}" in item.question for letter, text in q.options.items())]
    assert matches, item.question
    return matches[0]


@pytest.mark.parametrize("rendering", ["image_text", "text_only"])
def test_mllmu_few_shot_path_parses_letters_and_uses_retain_examples(small_world, small_vanilla, monkeypatch,
                                                                     rendering):
    model, processor, adapter = small_vanilla
    records = small_world.forget
    config = EvalConfig(mc_protocol="mllmu", few_shot=1, tasks=("mc",))
    # A model answering every question right scores 1; one answering a wrong letter scores 0.
    calls = _capture_generate(monkeypatch, lambda item: _question_of(item, records, rendering).answer + ") yes")
    right = evaluate_set(model, processor, adapter, records, "forget", rendering, config,
                         few_shot_pool=small_world.retain)
    n = sum(len(r.mc.get(rendering, [])) for r in records)
    assert right["mc"]["n"] == n and right["mc"]["value"] == 1.0
    items = calls[0]
    for item in items:
        # One in-context example from the retain pool: its question and the letter of its answer.
        shots = [(r, q) for r in small_world.retain for q in r.mc.get(rendering, []) if q.question in item.prefix]
        assert shots and f"{adapter.answer_prefix}{shots[0][1].answer}" in item.prefix
        if rendering == "image_text":
            assert item.prefix_images and all(any(im is r.image for r in small_world.retain)
                                              for im in item.prefix_images)
        else:
            assert item.prefix_images == ()

    def wrong(item):
        return next(letter for letter in _question_of(item, records, rendering).options
                    if letter != _question_of(item, records, rendering).answer)

    _capture_generate(monkeypatch, wrong)
    assert evaluate_set(model, processor, adapter, records, "forget", rendering, config,
                        few_shot_pool=small_world.retain)["mc"]["value"] == 0.0


def test_vanilla_scores_have_lower_bounds_on_the_forget_set(small_world, small_vanilla):
    model, processor, adapter = small_vanilla
    config = EvalConfig(instructions=False, max_new_tokens=24, sets=("forget",))
    results = evaluate(model, processor, adapter, small_world, config, progress=False)
    values = {(r["rendering"], r["task"]): r["value"] for r in results}
    assert set(values) == {(r, t) for r in ("image_text", "text_only") for t in ("mc", "generation", "cloze")}
    # The vanilla model was trained on the forget people: far above chance (MC 25 %, ROUGE-L ~0, cloze ~0).
    for (rendering, task), value in values.items():
        assert value > LOWER_BOUNDS[task], (rendering, task, value)


# Measured on this world: MC 0.9 / 1.0, ROUGE-L 0.81 / 0.84, cloze 0.1 / 0.375 (image+text / text-only).
LOWER_BOUNDS = {"mc": 0.6, "generation": 0.5, "cloze": 0.05}


# ------------------------------------------------------------------------------------- recall rows by hand
def _left_padded_batch():
    """Three text rows of 12 positions; row 0 left-padded at position 0 *and* labelled at position 1 (so the
    position before an answer token is padding), rows 1, 2 right-padded (lengths 10 and 8), answers the last four
    real tokens."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 100, (3, 12), generator=g)
    attention = torch.ones(3, 12, dtype=torch.long)
    labels = torch.full((3, 12), -100)
    for b, length in enumerate((12, 10, 8)):
        ids[b, length:] = PAD
        attention[b, length:] = 0
        labels[b, length - 4:length] = ids[b, length - 4:length]
    ids[0, 0], attention[0, 0], labels[0, 1] = PAD, 0, ids[0, 1]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


# (row, position) whose next token is an answer token and which is not padding — listed by hand.
RECALL_ROWS = [(0, 7), (0, 8), (0, 9), (0, 10), (1, 5), (1, 6), (1, 7), (1, 8), (2, 3), (2, 4), (2, 5), (2, 6)]
ALL_ROWS = [(0, t) for t in range(1, 12)] + [(1, t) for t in range(10)] + [(2, t) for t in range(8)]


def test_token_mask_matches_the_hand_listed_rows():
    batch = _left_padded_batch()
    for positions, rows in (("recall", RECALL_ROWS), ("all", ALL_ROWS)):
        expected = torch.zeros(3, 12, dtype=torch.bool)
        for b, t in rows:
            expected[b, t] = True
        assert torch.equal(token_mask_from_batch(batch, positions), expected), positions


@pytest.mark.parametrize("positions, rows", [("recall", RECALL_ROWS), ("all", ALL_ROWS)])
def test_collected_statistics_equal_formulas_on_hand_picked_rows(positions, rows):
    model, _ = tiny_llava(seed=2)
    sites = find_sites(model, ("language",))
    batch = _left_padded_batch()
    acts = {}
    with record_neurons(model, sites, lambda s, a: acts.__setitem__(s.name, a.detach().double())), torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "labels"})
    tau = 0.05
    table = collect_stats(model, [batch], sites, positions=positions, tau=tau, progress=False)
    b_idx = torch.tensor([b for b, _ in rows])
    t_idx = torch.tensor([t for _, t in rows])
    for site in sites:
        a = acts[site.name][b_idx, t_idx]                      # [len(rows), width], picked by hand
        n = a.shape[0]
        mean = a.mean(0)
        s = table[site.name]
        expected = {
            "count": torch.tensor(float(n), dtype=torch.float64),
            "sum_abs": a.abs().sum(0), "sum": a.sum(0), "sum_sq": (a * a).sum(0),
            "m2": ((a - mean) ** 2).sum(0), "count_above": (a.abs() > tau).sum(0).double(),
        }
        for name, value in expected.items():
            assert torch.allclose(getattr(s, name).double(), value, rtol=1e-6, atol=1e-9), (site.name, name)
        derived = {
            "mean_abs": a.abs().mean(0), "freq": (a.abs() > tau).double().mean(0), "mean": mean,
            "mean_sq": (a * a).mean(0), "var": a.var(0, unbiased=False), "var_unbiased": a.var(0, unbiased=True),
            "std": a.std(0, unbiased=False), "std_unbiased": a.std(0, unbiased=True), "rms": (a * a).mean(0).sqrt(),
        }
        for name, value in derived.items():
            assert torch.allclose(getattr(s, name).double(), value, rtol=1e-6, atol=1e-9), (site.name, name)
        assert s.count.item() == len(rows) and not math.isnan(s.std.sum().item())
