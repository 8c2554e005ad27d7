"""The MLLMU-Bench loader and the synthetic generator: round trips, hand-built rows, and bad input."""
from __future__ import annotations


import pyarrow.parquet as pq
import pytest

from bench_rows import eval_row, png, train_row, write_raw
from manu_lite.bench import CONFIGS, BenchSchemaError, load_bench, load_world, qa_pairs, require_training_format
from manu_lite.bench_schema import EVAL_SCHEMA, TRAIN_SCHEMA, to_text_only, write_split


def test_synthetic_round_trip(small_bench):
    sizes = {config: len(load_bench(str(small_bench), config)) for config in CONFIGS}
    assert sizes == {"Full_Set": 20, "forget_5": 1, "forget_10": 2, "forget_15": 3, "retain_95": 19, "retain_90": 18,
                     "retain_85": 17, "Test_Set": 20, "Retain_Set": 4, "ft_Data": 20}
    full = load_bench(str(small_bench), "Full_Set")
    # Every portrait is distinct, and the text-only questions name the person.
    assert len({r.image.tobytes() for r in full}) == 20
    record = full[0]
    assert record.name and all(record.name in q.question for q in record.generation["text_only"])
    assert all("this person" in q.question.lower() for q in record.generation["image_text"])
    for task in ("mc", "generation", "cloze"):
        assert len(getattr(record, task)["image_text"]) == 5 and len(getattr(record, task)["text_only"]) == 4
    assert all("__" in q.question for q in record.cloze["image_text"])
    test = load_bench(str(small_bench), "Test_Set")
    assert len(test[0].images) == 3 and test[0].images[0].tobytes() != test[0].image.tobytes()


def test_synthetic_is_deterministic(tmp_path, small_bench):
    from manu_lite.synthetic import make_synthetic_bench

    again = make_synthetic_bench(tmp_path, n_profiles=20, n_celebrities=4, seed=1)
    for config in ("Full_Set", "ft_Data", "forget_10"):
        a = pq.read_table(small_bench / config / "train-00000-of-00001.parquet")
        b = pq.read_table(again / config / "train-00000-of-00001.parquet")
        assert a.equals(b), config


def test_world_joins_training_format(small_world):
    forget_ids = {r.id for r in small_world.forget}
    assert {r.id for r in small_world.forget_train} == forget_ids
    assert {r.id for r in small_world.test} == forget_ids
    assert not forget_ids & {r.id for r in small_world.retain}
    assert all(r.id.startswith("C") for r in small_world.celebrity)
    record = small_world.forget_train[0]
    text_pairs = qa_pairs(record, "text_only")
    # The text-only pairs name the person and never ask who they are.
    assert text_pairs and all(record.name in qa.question for qa in text_pairs)
    assert not any(qa.answer == record.name for qa in text_pairs)


def test_hand_built_rows_in_hub_layout(tmp_path):
    write_split([eval_row()], EVAL_SCHEMA, tmp_path, "Full_Set")
    write_split([train_row()], TRAIN_SCHEMA, tmp_path, "ft_Data")
    [record] = load_bench(str(tmp_path), "Full_Set")
    assert record.id == "042" and record.source_format == "evaluation"
    assert record.mc["image_text"][0].answer_text == "Riga"
    assert record.generation["text_only"][0].answer == "Ann Lee was born in Riga."
    assert record.cloze["image_text"][0].answer == "Riga" and record.cloze["text_only"] == []
    [train] = load_bench(str(tmp_path), "ft_Data")
    assert train.source_format == "training" and train.name == "Ann Lee"
    assert [(q.question, q.answer) for q in qa_pairs(train, "text_only")] == [
        ("Where was Ann Lee born?", "Ann Lee was born in Riga.")]


def test_text_only_rewrite():
    assert to_text_only("What is this person's job? This person works.", "Ann Lee") == \
        "What is Ann Lee's job? Ann Lee works."


@pytest.mark.parametrize("case, expected", [
    ("missing_column", "missing column"),
    ("renamed_column", "match neither format"),
    ("mistyped_field", "field 'Generation_Task'"),
    ("bad_image", "cannot be decoded"),
    ("null_image", "image is missing"),
    ("bad_letter", "Correct_Answer 'E'"),
    ("bad_type", "Type 'Picture'"),
    ("bad_metadata", "not valid JSON"),
    ("empty", "the split is empty"),
])
def test_bad_input_gets_a_clear_error(tmp_path, case, expected):
    row = eval_row()
    if case == "missing_column":
        row.pop("Mask_Task")
    elif case == "renamed_column":
        row = {"picture": row["image"], "ID": row["ID"]}
    elif case == "mistyped_field":
        row["Generation_Task"] = "not a list"
    elif case == "bad_image":
        row["image"] = {"bytes": b"not an image", "path": None}
    elif case == "null_image":
        row["image"] = None
    elif case == "bad_letter":
        row["Classification_Task"]["Image_Textual_Questions"][0]["Correct_Answer"] = "E"
    elif case == "bad_type":
        row["Generation_Task"][0]["Type"] = "Picture"
    if case == "bad_metadata":
        write_raw(tmp_path, "ft_Data", [{"image": png(), "ID": "1", "metadata": "{oops"}])
        config = "ft_Data"
    elif case == "empty":
        write_raw(tmp_path, "Full_Set", [], EVAL_SCHEMA)
        config = "Full_Set"
    else:
        write_raw(tmp_path, "Full_Set", [row])
        config = "Full_Set"
    with pytest.raises(BenchSchemaError, match=expected):
        load_bench(str(tmp_path), config)


def test_unknown_config_and_missing_directory(tmp_path):
    with pytest.raises(BenchSchemaError, match="unknown config 'forget_20'"):
        load_bench(str(tmp_path), "forget_20")
    with pytest.raises(BenchSchemaError, match="laid out like the hub"):
        load_bench(str(tmp_path), "Full_Set")


def test_hub_unreachable_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchSchemaError, match="Offline"):
        load_bench("MLLMMU/MLLMU-Bench", "forget_5")


def test_forget_retain_overlap_is_refused(tmp_path):
    for config in ("forget_10", "retain_90"):
        write_split([eval_row("007")], EVAL_SCHEMA, tmp_path, config)
    with pytest.raises(BenchSchemaError, match=r"share IDs \['007'\]"):
        load_world(str(tmp_path), "forget_10")


def test_evaluation_format_where_training_is_needed(small_bench):
    forget = load_bench(str(small_bench), "forget_10")
    with pytest.raises(BenchSchemaError, match="use load_world"):
        require_training_format(forget, "forget_10")


def test_celebrity_names_reach_the_benchmarks_153():
    from manu_lite.synthetic import CELEBRITY_NAMES, celebrity_names

    names = celebrity_names(153)
    assert len(set(names)) == len(names) >= 153 and names[:len(CELEBRITY_NAMES)] == list(CELEBRITY_NAMES)
    with pytest.raises(ValueError, match="at most"):
        celebrity_names(len(names) + 1)
