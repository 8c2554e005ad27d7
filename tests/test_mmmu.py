"""MMMU and LLaVA-Bench: a fixture in MMMU's schema (hub layout, parquet, read back through ``datasets``), the
transcribed prompt and parsing rules on hand-written responses, the evaluator on a random tiny LLaVA, and the
schema errors."""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import random

import datasets
import pytest
import torch
from PIL import Image

from manu_lite import mmmu
from manu_lite.mmmu import (MMMUConfig, MMMUSchemaError, build_prompt, evaluate_mmmu, load_mmmu, normalize_answer,
                            open_correct, parse_multiple_choice, parse_open, place_images)

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def _png(k: int, size=(40, 24)) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", size, COLORS[k % len(COLORS)]).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _row(qid, question, options, answer, kind, n_images, subfield="Calculus"):
    row = {"id": qid, "question": question, "options": options, "explanation": "", "img_type": "['Diagrams']",
           "answer": answer, "topic_difficulty": "Easy", "question_type": kind, "subfield": subfield}
    row.update({f"image_{k}": _png(k) if k <= n_images else None for k in range(1, 8)})
    return row


FIXTURE = {
    "Math": [
        _row("validation_Math_1", "<image 1> and <image 2> show two graphs. Which one is steeper?",
             "['the first', 'the second', 'neither']", "B", "multiple-choice", 2),
        _row("validation_Math_2", "What is the area of the shape in <image 1>? Compare with <image 3> and <image 2>.",
             "[]", "12", "open", 3),
        _row("validation_Math_3", "Give the ratio shown in <image 1>.", "[]", "['24/7', '3.429']", "open", 1),
    ],
    "Art": [
        _row("validation_Art_1", "Which painting uses the same palette as <image 1>?",
             "['<image 2>', '<image 3>', '<image 4>', '<image 5>']", "C", "multiple-choice", 5, "Painting"),
        _row("validation_Art_2", "Which era is this work from?", "['Baroque', 'Rococo']", "A", "multiple-choice", 1,
             "Art History"),
    ],
}


def write_fixture(root, tables=FIXTURE, readme=True):
    """``<root>/<Subject>/validation-00000-of-00001.parquet`` with MMMU's features, and the hub README configs."""
    features = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "options": datasets.Value("string"), "explanation": datasets.Value("string"),
                                  **{f"image_{k}": datasets.Image() for k in range(1, 8)},
                                  "img_type": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "topic_difficulty": datasets.Value("string"),
                                  "question_type": datasets.Value("string"), "subfield": datasets.Value("string")})
    config_lines = ["---", "configs:"]
    for subject, rows in tables.items():
        (root / subject).mkdir(parents=True, exist_ok=True)
        columns = {name: [r[name] for r in rows] for name in features}
        datasets.Dataset.from_dict(columns, features=features).to_parquet(
            str(root / subject / "validation-00000-of-00001.parquet"))
        config_lines += [f"- config_name: {subject}", "  data_files:", "  - split: validation",
                         f"    path: {subject}/validation-*"]
    if readme:
        (root / "README.md").write_text("\n".join(config_lines + ["---", ""]))
    return root


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    datasets.disable_progress_bars()
    return write_fixture(tmp_path_factory.mktemp("mmmu"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-datasets-cache"))


# ------------------------------------------------------------------------------------------------ loader
def test_loader_reads_hub_layout(fixture_dir, cache):
    data = load_mmmu(str(fixture_dir), cache_dir=cache)
    assert [q.subject for q in data.questions] == ["Art", "Art", "Math", "Math", "Math"]  # SUBJECTS order
    by_id = {q.id: q for q in data.questions}
    mc = by_id["validation_Math_1"]
    assert mc.options == ("the first", "the second", "neither") and mc.letters == ("A", "B", "C")
    assert mc.images == (1, 2) and mc.answer == "B" and mc.subfield == "Calculus"
    assert by_id["validation_Math_3"].answer == ("24/7", "3.429")  # a list answer stored as a string
    assert by_id["validation_Art_1"].images == (1, 2, 3, 4, 5)
    images = data.images(by_id["validation_Math_2"])
    assert sorted(images) == [1, 2, 3] and images[3].size == (40, 24)
    assert images[2].getpixel((0, 0)) == COLORS[2]


def test_loader_without_readme_and_subject_subset(tmp_path, cache):
    root = write_fixture(tmp_path, readme=False)  # plain parquet folders: read with the parquet builder
    data = load_mmmu(str(root), subjects=["Math"], limit=2, seed=3, cache_dir=cache)
    again = load_mmmu(str(root), subjects="Math", limit=2, seed=3, cache_dir=cache)
    assert len(data.questions) == 2 and [q.id for q in data.questions] == [q.id for q in again.questions]
    assert {q.subject for q in data.questions} == {"Math"}
    with pytest.raises(ValueError, match="unknown MMMU subject"):
        load_mmmu(str(root), subjects=["Alchemy"], cache_dir=cache)


def _bad(tmp_path, cache, **change):
    row = dict(FIXTURE["Math"][0], **change)
    root = write_fixture(tmp_path, {"Math": [FIXTURE["Math"][1], row]})
    with pytest.raises(MMMUSchemaError) as info:
        load_mmmu(str(root), cache_dir=cache)
    return str(info.value)


def test_bad_schema_names_field_row_and_fix(tmp_path, cache):
    message = _bad(tmp_path / "a", cache, options="A) first, B) second")
    assert "field 'options'" in message and "row 1" in message and "validation_Math_1" in message
    assert "fix:" in message and "str(list_of_option_strings)" in message
    message = _bad(tmp_path / "b", cache, answer="E")
    assert "field 'answer'" in message and "['A', 'B', 'C']" in message
    message = _bad(tmp_path / "c", cache, question_type="short-answer")
    assert "field 'question_type'" in message and "multiple-choice" in message
    message = _bad(tmp_path / "d", cache, question="See <image 4>.")  # only image_1 and image_2 exist
    assert "field 'image_4'" in message and "<image 4>" in message


def test_missing_column_is_reported(tmp_path, cache):
    datasets.Dataset.from_dict({"id": ["x"], "question": ["q"]}).to_parquet(
        str((tmp_path / "Math").mkdir() or tmp_path / "Math" / "validation-00000-of-00001.parquet"))
    with pytest.raises(MMMUSchemaError, match=r"no column\(s\) \['options', 'answer', 'question_type'\]"):
        load_mmmu(str(tmp_path), cache_dir=cache)


# ------------------------------------------------------------------------------------------------ prompts
def test_prompt_strings_of_construct_prompt(fixture_dir, cache):
    by_id = {q.id: q for q in load_mmmu(str(fixture_dir), cache_dir=cache).questions}
    assert build_prompt(by_id["validation_Math_1"]) == (
        "<image 1> and <image 2> show two graphs. Which one is steeper?\n(A) the first\n(B) the second\n"
        "(C) neither\n\nAnswer with the option's letter from the given choices directly.")
    assert build_prompt(by_id["validation_Math_2"]) == (
        "What is the area of the shape in <image 1>? Compare with <image 3> and <image 2>.\n"
        "Answer the question using a single word or phrase.")


def test_place_images():
    text, order = place_images("A <image 2> then <image 1>, again <image 2>.", (1, 2, 3))
    assert text == "<image>\nA <image> then <image>, again <image 2>." and order == [3, 2, 1]
    text, order = place_images("A <image 2> then <image 1>.", (1, 2), "first_image")
    assert text == "A <image 2> then <image 1>." and order == [1]
    with pytest.raises(ValueError, match="image_mode"):
        place_images("x", (1,), "all")


def test_chat_adapters_get_image_slots_at_the_placeholders():
    from manu_lite.models import PromptAdapter

    class Recorder:
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            self.content = messages[0]["content"]
            return "rendered"

    recorder = Recorder()
    text, _ = place_images("Compare <image 1> with <image 2>.", (1, 2))
    assert mmmu._Interleaved(PromptAdapter("chat", recorder)).prompt(text, "text_only") == "rendered"
    assert recorder.content == [{"type": "text", "text": "Compare "}, {"type": "image"},
                                {"type": "text", "text": " with "}, {"type": "image"}, {"type": "text", "text": "."}]
    assert mmmu._Interleaved(PromptAdapter("llava")).prompt(text, "text_only") == f"USER: {text}\nASSISTANT:"


# --------------------------------------------------------------------------------- multiple-choice rule
OPTIONS = {"A": "one attendant", "B": "two attendants", "C": "three attendants", "D": "four attendants"}


@pytest.mark.parametrize("response, expected", [
    ("(B)", ("B", "bracket")),
    ("The answer is (A), not (C).", ("C", "bracket")),  # several: the latest last occurrence
    ("(D) because D is bigger than (A)", ("A", "bracket")),  # brackets win over bare letters
    ("B.", ("B", "letter")),  # end punctuation stripped, then " B " matches
    ("'C'", ("C", "letter")),
    ("A or B", ("B", "letter")),
    ("I would pick the option with two attendants here", ("B", "content")),  # > 5 words: option text
    ("maybe one attendant or three attendants, final", ("C", "content")),
    ("Banana", None),  # "B" inside a word is no answer: random
    ("two attendants", None),  # content is only tried beyond 5 words
    ("C)", None),  # neither "(C)" nor " C " occurs
    (".,A,.", None),  # "," is stripped before ".": ",A," is left, and " A " does not occur
])
def test_parse_multiple_choice(response, expected):
    letter, how = parse_multiple_choice(response, OPTIONS, random.Random(7))
    if expected is None:
        assert how == "random" and letter == random.Random(7).choice(list(OPTIONS))
    else:
        assert (letter, how) == expected


def test_random_fallback_is_seeded():
    draws = {parse_multiple_choice("no idea", OPTIONS, random.Random(f"42-mmmu-q{i}"))[0] for i in range(40)}
    again = {parse_multiple_choice("no idea", OPTIONS, random.Random(f"42-mmmu-q{i}"))[0] for i in range(40)}
    assert draws == again and len(draws) > 1


# ------------------------------------------------------------------------------------------- open rule
@pytest.mark.parametrize("response, expected", [
    ("The answer is 42.", {42.0}),  # tails after "answer " and "is ": the shortest, "42"
    ("Paris", {"paris"}),  # no key phrase: the whole response
    ("3,000 dollars", {"3,000 dollars", 3000.0, 0.0}),  # comma number, and the plain "000" after the comma
    ("Let me compute.\nSo the result = 5", {5.0}),  # '=' counts on the last line only
    ("x is 1.005e3", {1005.0, 1.0, 3.0}),  # scientific, plus the plain "1" and "3" the third pattern finds
    ("so the answer is -12,345.5 units", {"-12,345.5 units", -12345.0, 345.5}),
    ("the value could be 7 or so 8\nfinal answer: 9", {8.0, 9.0, "answer: 9"}),  # shortest tail per line
    ("It is b", {" b", "b "}),  # a single character is padded
    ("The Capital. It is Rome", {"rome"}),  # lower-cased before the sentence split: one part
])
def test_parse_open(response, expected):
    assert set(parse_open(response)) == expected


def test_open_scoring():
    assert open_correct("42", parse_open("The answer is 42."))
    assert open_correct("12", parse_open("12.001"))  # numbers compared after rounding to 2 decimals
    assert not open_correct("12", parse_open("12.1"))
    assert open_correct(("24/7", "3.429"), parse_open("so it is 3.429"))
    assert open_correct("Paris", ["the city of paris"])  # a string answer inside a string prediction
    assert not open_correct("a", ["banana"])  # " a" / "a " do not occur in "banana"
    assert normalize_answer(" 1,234.567 ") == [1234.57]


# ----------------------------------------------------------------------------------------- evaluator
@pytest.fixture(scope="module")
def random_tiny():
    from manu_lite.models import build_tiny

    corpus = ["USER: <image>\nWhat is the area? Answer the question using a single word or phrase.\nASSISTANT: 12",
              "(A) the first\n(B) the second\nAnswer with the option's letter from the given choices directly."] * 10
    return build_tiny(corpus)


def test_evaluator_records_and_determinism(random_tiny, fixture_dir, cache):
    model, processor, adapter = random_tiny
    config = MMMUConfig(max_new_tokens=4, batch_size=3)
    details: list = []
    results = evaluate_mmmu(model, processor, adapter, str(fixture_dir), config, method="vanilla", details=details,
                            cache_dir=cache)
    assert [(r["set"], r["rendering"], r["task"], r["n"]) for r in results] == [
        ("mmmu", "image_text", "Art", 2), ("mmmu", "image_text", "Math", 3), ("mmmu", "image_text", "overall", 5)]
    assert all(set(r) == {"method", "set", "rendering", "task", "metric", "value", "n"} for r in results)
    assert all(r["metric"] == "accuracy" and 0 <= r["value"] <= 1 for r in results)
    assert results.value("vanilla", "mmmu", "overall", "image_text") == sum(d["correct"] for d in details) / 5
    assert list(results.frame().columns) == ["method", "set", "rendering", "task", "metric", "value", "n"]
    assert len(details) == 5 and {d["how"] for d in details if d["question_type"] == "open"} == {"open"}
    again = evaluate_mmmu(model, processor, adapter, str(fixture_dir), config, cache_dir=cache)
    assert list(again) == list(results) and again.meta["prompt_sha256"] == results.meta["prompt_sha256"]
    first = evaluate_mmmu(model, processor, adapter, str(fixture_dir), MMMUConfig(max_new_tokens=4,
                          image_mode="first_image"), cache_dir=cache)
    assert first.meta["prompt_sha256"] != results.meta["prompt_sha256"] and len(first) == 3


def test_one_image_token_per_placeholder_and_batch_decoding(random_tiny, fixture_dir, cache, monkeypatch):
    from manu_lite.models import encode_item

    model, processor, adapter = random_tiny
    data = load_mmmu(str(fixture_dir), cache_dir=cache)
    events, seen = [], []
    decode = mmmu.MMMUData.images
    monkeypatch.setattr(mmmu.MMMUData, "images", lambda self, q: events.append("decode") or decode(self, q))

    def fake_generate(model_, processor_, use, items, config):
        events.append("generate")
        for item in items:
            ids = encode_item(processor, use, item)["input_ids"][0]
            seen.append(((ids == model.config.image_token_index).sum().item(), len(item.prefix_images)))
        return ["(A)"] * len(items)

    monkeypatch.setattr(mmmu, "generate", fake_generate)
    results = evaluate_mmmu(model, processor, adapter, data, MMMUConfig(batch_size=2))
    assert [n_images for _, n_images in seen] == [5, 1, 2, 3, 1]  # every image_k, each at its placeholder
    assert all(tokens == 16 * n for tokens, n in seen)  # 16 tokens per image in the tiny LLaVA
    # Images are decoded batch by batch: never more than batch_size decodes before a generate call.
    runs = "".join("d" if e == "decode" else "g" for e in events).split("g")
    assert max(len(r) for r in runs) <= 2
    assert results.value("vanilla", "mmmu", "Art", "image_text") == 0.5  # "(A)": Art_2 (answer A) right only


# ---------------------------------------------------------------------------------------------- LLaVA-Bench
def _llava_bench_table(root):
    rows = {"question_id": [0, 1, 2], "question": ["What is shown?", "Describe the colours.", "What is odd here?"],
            "image": [_png(k) for k in range(3)], "caption": ["a square"] * 3,
            "gpt_answer": ["A red square.", "Green and blue.", "Nothing is odd."],
            "category": ["conv", "detail", "complex"], "image_id": ["a", "b", "c"]}
    features = datasets.Features({"question_id": datasets.Value("int8"), "question": datasets.Value("string"),
                                  "image": datasets.Image(), "caption": datasets.Value("string"),
                                  "gpt_answer": datasets.Value("string"), "category": datasets.Value("string"),
                                  "image_id": datasets.Value("string")})
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def test_llava_bench_judge_free_and_pluggable(random_tiny, tmp_path, cache):
    from manu_lite.llava_bench import Judge, RougeLJudge, evaluate_llava_bench, load_llava_bench

    model, processor, adapter = random_tiny
    table = load_llava_bench(str(_llava_bench_table(tmp_path)), cache_dir=cache)
    assert isinstance(RougeLJudge(), Judge) and not RougeLJudge.paper_comparable
    results = evaluate_llava_bench(model, processor, adapter, table, batch_size=2, max_new_tokens=4)
    assert {r["set"] for r in results} == {"llava_bench_judge_free"}  # never mistaken for the paper's column
    assert [r["task"] for r in results] == ["complex", "conv", "detail", "all"]
    assert all(r["metric"] == "rougeL_vs_reference" and 0 <= r["value"] <= 1 for r in results)

    class PairJudge:  # a GPT-4-style judge: (reference score, answer score), reported as their ratio of means
        name, metric, paper_comparable = "stub-pairs", "relative_score", True

        def __call__(self, question, reference, answer):
            return (8.0, 4.0 + len(question) % 2)

    paired = evaluate_llava_bench(model, processor, adapter, table, PairJudge(), batch_size=2, max_new_tokens=2)
    overall = paired.value("vanilla", "llava_bench", "all", "image_text")
    expected = sum(4.0 + len(q) % 2 for q in table["question"]) / 3 / 8.0
    assert overall == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ in the comparison
def test_compare_reports_mmmu_per_method_on_the_lora_path(small_world, small_vanilla, fixture_dir, tmp_path,
                                                          monkeypatch):
    """compare with ``mmmu_source`` (the GPU profiles' path): MMMU records for vanilla and after each method, in
    mmmu.json, a column of the paper table and the summary; LoRA baselines and MANU run on the one model (no
    deep copy of it), which is the vanilla model again afterwards."""
    __import__("peft") if os.environ.get("CI") == "true" else pytest.importorskip("peft")  # CI: never skipped
    from manu_lite import compare as compare_module
    from manu_lite.baselines import UnlearnConfig
    from manu_lite.compare import CompareConfig, compare
    from manu_lite.config import TINY_EVAL, TINY_MANU

    model = copy.deepcopy(small_vanilla[0])
    processor, adapter = small_vanilla[1:]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    real_deepcopy = copy.deepcopy
    monkeypatch.setattr(compare_module.copy, "deepcopy", lambda obj, *a, **k: (
        pytest.fail(f"compare deep-copied a {type(obj).__name__}") if isinstance(obj, torch.nn.Module)
        else real_deepcopy(obj, *a, **k)))
    config = CompareConfig(methods=("vanilla", "manu-balanced", "ga"), manu=TINY_MANU, sweeps=False, attacks=False,
                           unlearning_metrics=False,
                           evaluation=dataclasses.replace(TINY_EVAL, sets=("forget", "retain"), tasks=("mc",)),
                           unlearn=UnlearnConfig(steps=2, batch_size=4, lora=True, lora_r=4),
                           mmmu_source=str(fixture_dir), mmmu=MMMUConfig(max_new_tokens=4, subjects=("Math",)))
    result = compare(model, processor, adapter, small_world, tmp_path, config, progress=False)
    stored = json.loads((tmp_path / "mmmu.json").read_text())
    assert stored == list(result.mmmu)
    assert {(r["method"], r["task"]) for r in stored} == {(m, t) for m in ("Vanilla", "MANU-balanced", "GA")
                                                         for t in ("Math", "overall")}
    assert all(r["set"] == "mmmu" and r["n"] == 3 and 0 <= r["value"] <= 1 for r in stored)
    table = (tmp_path / "table.md").read_text()
    assert "MMMU %" in table
    for label in ("Vanilla", "MANU-balanced", "GA"):
        row = result.summary["methods"][label]["mmmu"]
        assert row["n"] == 3 and row["accuracy"] == result.mmmu.value(label, "mmmu", "overall", "image_text")
    assert result.summary["methods"]["Vanilla"]["mmmu"]["drop"] == 0
    assert {n: p for n, p in model.named_parameters()}.keys() == weights.keys()
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # the vanilla model again
