"""The loader against data shaped like the hub's, not like our own generator's: names only in the evaluation rows,
images stored as paths beside the parquet, IDs typed differently across configs, a directory that is not there,
and the ``datasets`` reading path (feature metadata, images decoded per batch, items encoded per batch)."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from bench_rows import eval_row, png, write_raw
from manu_lite.bench import BenchSchemaError, load_bench, load_world, qa_pairs
from manu_lite.bench_schema import EVAL_SCHEMA, BenchImage, write_split


def _train_row(pid, name_pair=True):
    pairs = [{"ID": str(pid), "Question": "Where was this person born?", "Answer": "This person was born in Riga."}]
    if name_pair:
        pairs.insert(0, {"ID": str(pid), "Question": "What is the name of this person?",
                         "Answer": "This person's name is Ann Lee."})
    return {"image": png(), "ID": pid, "metadata": json.dumps(pairs)}


def _world_dir(tmp_path, forget_id="017", retain_id="018", train_ids=("017", "018"), name_pair=True, **eval_fields):
    """forget_10 / retain_90 / Test_Set / Retain_Set / ft_Data with one forget and one retain person."""
    for config, pid in (("forget_10", forget_id), ("retain_90", retain_id), ("Test_Set", forget_id)):
        write_split([{**eval_row(pid), **eval_fields}], EVAL_SCHEMA, tmp_path, config)
    write_split([eval_row("C001")], EVAL_SCHEMA, tmp_path, "Retain_Set")
    ids = list(train_ids)
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("ID", pa.int64() if isinstance(ids[0], int) else pa.string()), ("metadata", pa.string())])
    write_raw(tmp_path, "ft_Data", [_train_row(pid, name_pair) for pid in ids], schema)
    return tmp_path


@pytest.mark.parametrize("fields", [{"answer": "This person's name is Ann Lee."},
                                    {"answer": "", "biography": "Ann Lee was born in Riga in 1970."}],
                         ids=["answer", "biography"])
def test_names_come_from_the_evaluation_rows_when_metadata_lacks_them(tmp_path, fields):
    world = load_world(str(_world_dir(tmp_path, name_pair=False, **fields)), "forget_10")
    [record] = world.forget_train
    assert record.name == "Ann Lee"
    assert [(q.question, q.answer) for q in qa_pairs(record, "text_only")] == [
        ("Where was Ann Lee born?", "Ann Lee was born in Riga.")]


def test_without_any_name_text_only_pairs_are_refused_with_the_fix(tmp_path):
    world = load_world(str(_world_dir(tmp_path, name_pair=False, answer="", biography="born in Riga")), "forget_10")
    with pytest.raises(BenchSchemaError, match="no name found.*load_world"):
        qa_pairs(world.forget_train[0], "text_only")


def test_image_paths_are_read_from_the_parquet_folder(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "bench" / "Full_Set"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 6), (1, 2, 3)).save(folder / "017.png")
    write_raw(tmp_path / "bench", "Full_Set", [eval_row("017", image={"bytes": None, "path": "017.png"})])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory has no 017.png
    [record] = load_bench(str(tmp_path / "bench"), "Full_Set")
    assert isinstance(record.image, BenchImage) and record.image.size == (8, 6)
    assert record.image.open().getpixel((0, 0)) == (1, 2, 3)
    (folder / "017.png").unlink()
    with pytest.raises(BenchSchemaError, match=r"image path '017.png' not found at .*Full_Set/017.png"):
        load_bench(str(tmp_path / "bench"), "Full_Set")


@pytest.mark.parametrize("train_ids", [(17, 18), ("17", "18"), ("0017", "0018")], ids=["int", "unpadded", "padded"])
def test_ids_match_as_numbers_across_configs(tmp_path, train_ids):
    world = load_world(str(_world_dir(tmp_path, train_ids=train_ids)), "forget_10")
    # The training rows and Test_Set rows take the forget/retain configs' spelling.
    assert [r.id for r in world.forget_train] == ["017"] and [r.id for r in world.retain_train] == ["018"]
    assert [r.id for r in world.test] == ["017"]


def test_a_person_missing_from_ft_data_names_the_id_forms(tmp_path):
    with pytest.raises(BenchSchemaError, match=r"no rows for forget_10 IDs \['017'\] \(IDs match as numbers.*"
                                               r"look like \['18', '99'\]"):
        load_world(str(_world_dir(tmp_path, train_ids=(18, 99))), "forget_10")


def test_one_person_spelled_twice_in_a_config_is_refused(tmp_path):
    write_split([eval_row("17"), eval_row("017")], EVAL_SCHEMA, tmp_path, "Full_Set")
    with pytest.raises(BenchSchemaError, match=r"row 1: ID '017' is also the ID of row 0 \('17'\)"):
        load_bench(str(tmp_path), "Full_Set")


@pytest.mark.parametrize("source", ["/no/such/bench", "./no_such_bench", "~/no_such_bench_dir"])
def test_a_missing_local_directory_says_so(source):
    with pytest.raises(BenchSchemaError, match="no such directory: /"):
        load_bench(source, "Full_Set")


def test_a_missing_directory_that_could_be_a_hub_id_says_both(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchSchemaError, match=r"no such directory: .*data/bench\. Offline\?"):
        load_bench("data/bench", "Full_Set")


def test_the_synthetic_bench_carries_the_hubs_feature_metadata(small_bench):
    import datasets

    for config, image_columns in (("Full_Set", ["image"]), ("Test_Set", ["image", "images"]), ("ft_Data", ["image"])):
        files = [str(p) for p in (small_bench / config).glob("*.parquet")]
        features = datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True).features
        assert isinstance(features["image"], datasets.Image), config
        assert [c for c in features if c in ("image", "images")] == image_columns
        if "images" in features:
            assert isinstance(features["images"].feature, datasets.Image)
        assert features["ID"] == datasets.Value("string")


def test_records_hold_where_the_images_are_not_their_bytes(small_world, small_bench):
    """The loaded records keep each image's parquet cell (file, row, column, list index), no bytes; opening one
    reads exactly the bytes stored in that cell (compared with pyarrow's own read of the whole column)."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    records = small_world.forget + small_world.test + small_world.forget_train
    images = [r.image for r in records] + [im for r in small_world.test for im in r.images]
    assert all(isinstance(im, BenchImage) and im.data is None and im.cell for im in images)
    for record in small_world.test[:3]:
        for k, image in enumerate([record.image] + record.images):
            column = pq.read_table(image.cell.path, columns=[image.cell.column]).column(0).to_pylist()
            stored = column[image.cell.row] if image.cell.index is None else column[image.cell.row][image.cell.index]
            assert image.cell.index == (None if k == 0 else k - 1)
            assert image.tobytes() == Image.open(io.BytesIO(stored["bytes"])).convert("RGB").tobytes()
    assert len({im.tobytes() for im in small_world.test[0].images}) == len(small_world.test[0].images)


def test_an_image_whose_file_changed_after_load_says_so(tmp_path):
    from manu_lite.bench import load_bench
    from manu_lite.synthetic import make_synthetic_bench

    make_synthetic_bench(tmp_path, n_profiles=20, n_celebrities=4, seed=3)
    records = load_bench(str(tmp_path), "forget_5")
    records[0].image.open()
    kept = load_bench(str(tmp_path), "forget_5", keep_bytes=True)
    assert kept[0].image.data and kept[0].image.cell is None
    make_synthetic_bench(tmp_path, n_profiles=20, n_celebrities=4, seed=4)  # rewritten in place
    with pytest.raises(BenchSchemaError, match=r"changed after it was loaded.*load the split again"):
        records[0].image.open()
    kept[0].image.open()  # bytes kept in memory do not depend on the file


def test_items_are_encoded_per_batch(small_world):
    from manu_lite import models
    from manu_lite.finetune import training_items

    _, processor, adapter = models.build_tiny(["USER: <image>\nWho is this person?\nASSISTANT: Ann Lee."] * 10)
    items = training_items(small_world.forget_train, ("image_text",))
    decoded = []

    class Counting:  # the processor, counting the images it is handed
        tokenizer, image_processor = processor.tokenizer, processor.image_processor

        def __call__(self, **kwargs):
            decoded.extend(kwargs.get("images") or [])
            return processor(**kwargs)

    batches = models.iter_batches(Counting(), adapter, items, 4)
    first = next(batches)
    assert first["input_ids"].shape[0] == 4 and len(decoded) == 4 < len(items)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(items) - 4 and len(decoded) == len(items)
