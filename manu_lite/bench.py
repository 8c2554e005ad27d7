"""MLLMU-Bench loading: one loader, through ``datasets``, for the hub (a pinned revision) and for local parquet,
and :class:`World`, everything one experiment reads.

The hub dataset ``MLLMMU/MLLMU-Bench`` stores one ``train`` split per config as ``<config>/train-*.parquet``
(the schema and typed records: :mod:`manu_lite.bench_schema`). Rows are streamed through ``datasets``' parquet
reader with image decoding off: a record keeps its image encoded (bytes, or a path resolved against the parquet
file's folder) and the pixels are decoded per batch (:func:`manu_lite.models.encode_item`).

Unlearning needs the training format for the forget/retain people; the hub's ``forget_N`` configs are in the
evaluation format (a frequent confusion), so :func:`load_world` joins them with ``ft_Data`` by ``ID``. IDs are
matched as numbers when they are digits (``17``, ``"17"`` and ``"017"`` are one person), and an ``ft_Data`` row
gets its evaluation row's ``answer``/``biography``, where the person's name is when ``metadata`` lacks it.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

# Re-exported: the schema and record names chapter 01 and the evaluators read with the loader (one import).
from .bench_schema import (CLASSIFICATION_KEYS, EVAL_SCHEMA, OPTION_LETTERS, TRAIN_SCHEMA, TYPE_TO_RENDERING,
                           BenchImage, BenchSchemaError, MCQuestion, OpenQuestion, ParquetCell, ProfileRecord,
                           file_stamp, qa_pairs, write_split)

__all__ = ["EVAL_SCHEMA", "OPTION_LETTERS", "TRAIN_SCHEMA", "BenchSchemaError", "MCQuestion", "ProfileRecord", "World",
           "load_bench", "load_world", "qa_pairs", "require_training_format", "write_split"]

HUB_DATASET = "MLLMMU/MLLMU-Bench"
# The hub's main branch when this loader was written (tree e91a01e, "Update README.md"); pass revision="main"
# to read whatever the hub holds now.
HUB_REVISION = "e91a01eb060b61be8dbde7edb48b121341bd0890"
CONFIGS = ("Full_Set", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85",
           "Test_Set", "Retain_Set", "ft_Data")
FORGET_PERCENTS = (5, 10, 15)
EVAL_COLUMNS = ("image", "ID", "Classification_Task", "Generation_Task", "Mask_Task")
TRAIN_COLUMNS = ("image", "ID", "metadata")


# --------------------------------------------------------------------------------------------------- fields
def _kind(value) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _require(row, key: str, kind, where: str):
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(row, dict):
        raise BenchSchemaError(f"{where}: is {_kind(row)}, expected an object with field {key!r}; fix: store it as "
                               f"an object with {key!r}, or re-export the split")
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchSchemaError(f"{where}: field {key!r} is {_kind(value)}, expected {want}; fix: store {key!r} as "
                               f"a {want.split()[0]}, or re-export the split")
    return value


def id_key(value: str | int) -> str:
    """The key IDs are matched by: digits compare as numbers (``17``, ``"17"``, ``"017"`` → ``"17"``)."""
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


def _id(row: dict, where: str) -> str:
    value = _require(row, "ID", (str, int), where)
    if not str(value).strip():
        raise BenchSchemaError(f"{where}: field 'ID' is empty; set 'ID' to the person's ID (e.g. '017')")
    return str(value).strip()


def _image(cell, where: str, folder: Path, at: ParquetCell | None = None) -> BenchImage:
    """An image cell (the ``Image`` feature's ``{bytes, path}``, bare bytes or a path) as a :class:`BenchImage`;
    a relative path is read from the parquet file's folder. With ``at`` (where the cell sits in its file), stored
    bytes are checked and then left in the file (read back when the image is opened)."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, (bytes, str)):
        data, path = (cell, None) if isinstance(cell, bytes) else (None, cell)
    else:
        data = path = None
    if cell is None or not (isinstance(data, bytes) and data or isinstance(path, str) and path):
        got = "missing (null)" if cell is None else f"{_kind(cell)} without bytes or path"
        raise BenchSchemaError(f"{where}: image is {got}; every row needs an image: store it as {{'bytes': <PNG/JPEG "
                               "bytes>, 'path': None}, the Hugging Face Image feature's struct")
    if not data:
        resolved = Path(path) if Path(path).is_absolute() else folder / path
        if not resolved.is_file():
            raise BenchSchemaError(f"{where}: image path {path!r} not found at {resolved} (a relative path is read "
                                   "from the parquet file's folder); fix: put the file there or store its bytes in "
                                   "image['bytes']")
        path = str(resolved)
    return BenchImage(data or None, None if data else path, where, at if data else None)


def _questions(row: dict, key: str, where: str) -> list[dict]:
    items = _require(row, key, (list, tuple), where)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BenchSchemaError(f"{where} {key}[{i}]: is {_kind(item)}, expected an object; fix: store each item "
                                   f"of {key!r} as an object (e.g. {{'Question': ...}}), or re-export the split")
    return list(items)


def _mc(item: dict, at: str) -> MCQuestion:
    options = {k: v for k, v in _require(item, "Options", dict, at).items() if v is not None}
    bad = sorted(k for k, v in options.items() if not isinstance(v, str))
    if bad or not options:
        raise BenchSchemaError(f"{at}: Options {bad or '(all null)'} must hold option texts (strings); fix: "
                               "store them as Options={'A': '...', 'B': '...', 'C': '...', 'D': '...'}")
    answer = _require(item, "Correct_Answer", str, at).strip()
    if answer not in options:
        raise BenchSchemaError(f"{at}: Correct_Answer {answer!r} is not one of the options {sorted(options)}; "
                               "set Correct_Answer to the letter of the right option")
    return MCQuestion(_require(item, "Question", str, at), options, answer)


# --------------------------------------------------------------------------------------------------- rows
def _no_cell(column: str, index: int | None = None) -> None:
    """``cell_at`` for records that keep their image bytes (no parquet cell)."""
    return None


def _parse_eval_row(row: dict, where: str, folder: Path, cell_at=_no_cell) -> ProfileRecord:
    text = {k: row.get(k) if isinstance(row.get(k), str) else "" for k in ("biography", "question", "answer")}
    record = ProfileRecord(id=_id(row, where), image=_image(row.get("image"), where, folder, cell_at("image")),
                           **text)
    classification = _require(row, "Classification_Task", dict, where)
    for rendering, key in CLASSIFICATION_KEYS.items():
        at = f"{where} Classification_Task"
        items = _questions(classification, key, at) if classification.get(key) is not None else []
        record.mc[rendering] = [_mc(item, f"{at}.{key}[{i}]") for i, item in enumerate(items)]
    for task, attr in (("Generation_Task", "generation"), ("Mask_Task", "cloze")):
        buckets: dict[str, list[OpenQuestion]] = {"image_text": [], "text_only": []}
        for i, item in enumerate(_questions(row, task, where)):
            at = f"{where} {task}[{i}]"
            kind = item.get("Type")
            if kind not in TYPE_TO_RENDERING:
                raise BenchSchemaError(f"{at}: Type {kind!r} is not one of {sorted(TYPE_TO_RENDERING)}; set Type to "
                                       "'Image_Textual' (the question shows the image) or 'Pure_Text'")
            buckets[TYPE_TO_RENDERING[kind]].append(
                OpenQuestion(_require(item, "Question", str, at), str(_require(item, "Ground_Truth", (str, int), at))))
        setattr(record, attr, buckets)
    images = row.get("images") or []
    if not isinstance(images, (list, tuple)):
        raise BenchSchemaError(f"{where}: field 'images' is {_kind(images)}, expected a list of images; fix the row")
    record.images = [_image(cell, f"{where} images[{i}]", folder, cell_at("images", i))
                     for i, cell in enumerate(images)]
    return record


def _parse_train_row(row: dict, where: str, folder: Path, cell_at=_no_cell) -> ProfileRecord:
    raw = _require(row, "metadata", (str, list), where)
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise BenchSchemaError(f"{where}: metadata is not valid JSON ({exc}); fix: store metadata as a JSON list "
                               "of {'ID', 'Question', 'Answer'} objects") from exc
    if not isinstance(items, list):
        raise BenchSchemaError(f"{where}: metadata is {_kind(items)}, expected a JSON list; fix: store metadata "
                               "as a JSON list of {'ID', 'Question', 'Answer'} objects")
    pairs = []
    for i, item in enumerate(items):
        at = f"{where} metadata[{i}]"
        pairs.append(OpenQuestion(_require(item, "Question", str, at), _require(item, "Answer", str, at)))
    if not pairs:
        raise BenchSchemaError(f"{where}: metadata holds no question/answer pairs; add the person's "
                               "{'ID', 'Question', 'Answer'} pairs, or remove the row")
    return ProfileRecord(id=_id(row, where), image=_image(row.get("image"), where, folder, cell_at("image")),
                         train_qa=pairs, source_format="training")


# --------------------------------------------------------------------------------------------------- files
def _split_files(source: str, config: str, revision: str) -> list[str]:
    if config not in CONFIGS:
        raise BenchSchemaError(f"unknown config {config!r}; choose one of MLLMU-Bench's: {', '.join(CONFIGS)}")
    if os.path.isdir(source):
        files = sorted(glob.glob(os.path.join(source, config, "*.parquet")))
        if not files:
            raise BenchSchemaError(f"no parquet files in {os.path.join(source, config)}; a local copy must be laid "
                                   f"out like the hub: <dir>/{config}/train-00000-of-00001.parquet")
        return files
    where = os.path.abspath(os.path.expanduser(source))
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source) or source.startswith("."):
        raise BenchSchemaError(f"no such directory: {where}; pass a directory laid out like the hub "
                               f"(<dir>/{config}/train-*.parquet), or a hub id such as {HUB_DATASET!r}")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(source, repo_type="dataset", revision=revision, allow_patterns=[f"{config}/*"])
    except Exception as exc:
        raise BenchSchemaError(
            f"could not fetch {source!r} config {config!r} (revision {revision}) from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}), and there is no such directory: {where}. Offline? Download it once "
            "with network access, or pass a local directory laid out like the hub (<dir>/<config>/train-*.parquet); "
            "the tiny profile needs no download (make_synthetic_bench)") from exc
    return _split_files(local, config, revision)


def _stream(path: str, config: str):
    """``(column names, rows)`` of one parquet file, read through ``datasets`` with image decoding off."""
    import datasets
    import pyarrow.dataset
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        if file.metadata.num_rows == 0:  # datasets' streaming reader cannot read a file without rows
            return file.schema_arrow.names, iter(())
        # 16 rows per arrow batch, and no pre-buffering: by default pyarrow buffers a file's column chunks ahead,
        # which on Test_Set (872 MB at the real size) made the peak grow with the file (2.0 GB at 500 profiles).
        scan = pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False, use_buffered_stream=True,
                                                          buffer_size=1 << 20)
        table = datasets.load_dataset("parquet", data_files={"train": [path]}, split="train", streaming=True,
                                      batch_size=16, fragment_scan_options=scan)
        return list(table.features or file.schema_arrow.names), iter(table.decode(False))
    except Exception as exc:
        raise BenchSchemaError(f"{config}: {path} cannot be read as parquet ({type(exc).__name__}: {exc}); "
                               f"re-download or re-export {config}/{Path(path).name}") from exc


def load_bench(source: str, config: str, *, revision: str = HUB_REVISION, keep=None,
               keep_bytes: bool = False) -> list[ProfileRecord]:
    """Load one MLLMU-Bench config from a hub id (at ``revision``) or a local directory laid out like the hub.

    Returns one :class:`ProfileRecord` per row (``keep``: a predicate on :func:`id_key` of a row's ID, to load
    only some people). Images are checked at load and read back from the parquet file when opened
    (:class:`~manu_lite.bench_schema.ParquetCell`), so the records hold no image bytes; ``keep_bytes=True`` keeps
    them in memory instead (for files that will not outlive the records, such as a temporary directory's).
    Raises :class:`BenchSchemaError` naming the row and field when the data does not match the schema, when two
    rows hold one ID, and when the split is empty.
    """
    records, seen = [], {}
    for path in _split_files(source, config, revision):
        columns, rows = _stream(path, config)
        stamp = file_stamp(path)
        if "metadata" in columns:
            required, parse = TRAIN_COLUMNS, _parse_train_row
        elif "Classification_Task" in columns or "Generation_Task" in columns:
            required, parse = EVAL_COLUMNS, _parse_eval_row
        else:
            raise BenchSchemaError(
                f"{config}: columns {sorted(columns)} match neither format: the evaluation format needs "
                f"{', '.join(EVAL_COLUMNS)}; the training format needs {', '.join(TRAIN_COLUMNS)}; rename the "
                "columns to one format's names (e.g. 'image', 'ID', 'metadata')")
        missing = [c for c in required if c not in columns]
        if missing:
            raise BenchSchemaError(f"{config}: missing column(s) {missing} (have {sorted(columns)}); this format "
                                   f"needs {', '.join(required)}: re-export the split with the column(s) {missing}")
        for number, row in enumerate(rows):
            where = f"{config} row {len(seen)}"
            key = id_key(_id(row, where))
            if key in seen:
                raise BenchSchemaError(f"{where}: ID {row['ID']!r} is also the ID of {seen[key]} (IDs match as "
                                       "numbers: 17, '17' and '017' are one person); each person has one row: remove "
                                       f"one of the two rows of ID {row['ID']!r}")
            seen[key] = f"row {len(seen)} ({row['ID']!r})"
            if keep is None or keep(key):
                cell_at = _no_cell if keep_bytes else \
                    (lambda column, index=None: ParquetCell(path, number, column, index, stamp))
                records.append(parse(row, where, Path(path).parent, cell_at))
    if not seen:
        raise BenchSchemaError(f"{config}: the split is empty (0 rows); regenerate it (make_synthetic_bench(...)) "
                               "or re-download it")
    return records


def require_training_format(records: list[ProfileRecord], split: str) -> None:
    """Refuse evaluation-format rows where unlearning needs the training format (``metadata``)."""
    wrong = [r.id for r in records if r.source_format != "training"]
    if wrong:
        raise BenchSchemaError(
            f"{split} is in the evaluation format (no 'metadata' column), but training/unlearning needs the training "
            "format. The hub's forget_N/retain_N configs lack 'metadata': use load_world(source, 'forget_N'), "
            "which joins them with ft_Data by ID")


@dataclass
class World:
    """Everything one experiment reads: evaluation sets and the training-format rows of forget and retain people."""

    source: str
    forget_config: str
    forget: list[ProfileRecord]
    retain: list[ProfileRecord]
    test: list[ProfileRecord]
    celebrity: list[ProfileRecord]
    forget_train: list[ProfileRecord]
    retain_train: list[ProfileRecord]

    @property
    def eval_sets(self) -> dict[str, list[ProfileRecord]]:
        return {"forget": self.forget, "test": self.test, "retain": self.retain, "celebrity": self.celebrity}

    def with_retain_sample(self, people: int | None, seed: int = 0) -> "World":
        """This world with a seeded subsample of ``people`` retain people (itself when ``None`` or not fewer)."""
        if people is None or len(self.retain) <= people:
            return self
        return dataclasses.replace(self, retain=random.Random(seed).sample(self.retain, people))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.eval_sets.items())
        # A local path is shortened to its last part: printed in a notebook, the full path would leak the machine's.
        source = f"…/{Path(self.source).name}" if Path(self.source).is_absolute() else self.source
        return f"World({source!r}, {self.forget_config}: {sizes})"


def load_world(source: str, forget: str = "forget_10", max_retain: int | None = None, seed: int = 0, *,
               revision: str = HUB_REVISION) -> World:
    """Load the four evaluation sets for one forget split and the matching training-format rows.

    ``max_retain`` evaluates a seeded subsample of the retain people (the full set is 85–95 % of 500 on the
    real benchmark). IDs are matched by :func:`id_key`; the training rows and ``Test_Set`` rows take the ID
    spelling of the forget/retain config, and each training row gets its evaluation row's ``question``,
    ``answer`` and ``biography`` (names for the text-only pairs). Raises when forget and retain share an ID or
    when ``ft_Data`` lacks a person.
    """
    match = re.fullmatch(r"forget_(\d+)", forget)
    if not match or int(match.group(1)) not in FORGET_PERCENTS:
        raise BenchSchemaError(f"unknown forget split {forget!r}; choose forget_5, forget_10 or forget_15")
    retain_config = f"retain_{100 - int(match.group(1))}"
    forget_rows = load_bench(source, forget, revision=revision)
    retain_rows = load_bench(source, retain_config, revision=revision)
    retained = {id_key(r.id) for r in retain_rows}
    overlap = sorted(r.id for r in forget_rows if id_key(r.id) in retained)
    if overlap:
        raise BenchSchemaError(f"{forget} and {retain_config} share IDs {overlap[:10]}: a person cannot be both "
                               "forgotten and retained; fix: remove them from "
                               f"{forget!r} or {retain_config!r}")
    forget_ids = {id_key(r.id): r.id for r in forget_rows}
    test = [dataclasses.replace(r, id=forget_ids[id_key(r.id)])
            for r in load_bench(source, "Test_Set", revision=revision, keep=forget_ids.__contains__)]
    training = {id_key(r.id): r for r in load_bench(source, "ft_Data", revision=revision)}
    require_training_format(list(training.values()), "ft_Data")

    def train_rows(rows, split):
        absent = [r.id for r in rows if id_key(r.id) not in training]
        if absent:
            sample = sorted(r.id for r in training.values())[:3]
            raise BenchSchemaError(f"ft_Data has no rows for {split} IDs {absent[:10]} (IDs match as numbers, so "
                                   f"17, '17' and '017' are one person; ft_Data's IDs look like {sample}); use the "
                                   "ft_Data of the same benchmark release as the split")
        return [dataclasses.replace(training[id_key(r.id)], id=r.id, question=r.question, answer=r.answer,
                                    biography=r.biography) for r in rows]

    forget_train, retain_train = train_rows(forget_rows, forget), train_rows(retain_rows, retain_config)
    return World(source, forget, forget_rows, retain_rows, test, load_bench(source, "Retain_Set", revision=revision),
                 forget_train, retain_train).with_retain_sample(max_retain, seed)


# ------------------------------------------------------------------------------------------ as tables
def questions_frame(record):
    """Every question of an evaluation-format record: task, rendering, question, options, answer."""
    import pandas as pd

    rows = []
    for rendering in TYPE_TO_RENDERING.values():
        for q in record.mc.get(rendering, []):
            options = "  ".join(f"{k}: {v}" for k, v in q.options.items())
            rows.append(("mc", rendering, q.question, options, q.answer))
        for task in ("generation", "cloze"):
            for q in getattr(record, task).get(rendering, []):
                rows.append((task, rendering, q.question, "", q.answer))
    return pd.DataFrame(rows, columns=["task", "rendering", "question", "options", "answer"])


def schema_frame(schema, max_depth: int = 4):
    """A pyarrow schema as one row per leaf field: dotted path (``[]`` marks a list) and type."""
    import pandas as pd
    import pyarrow as pa

    rows = []

    def walk(name, dtype, depth):
        if pa.types.is_struct(dtype) and depth < max_depth:
            for child in dtype:
                walk(f"{name}.{child.name}", child.type, depth + 1)
        elif pa.types.is_list(dtype) and depth < max_depth:
            walk(f"{name}[]", dtype.value_type, depth + 1)
        else:
            rows.append({"field": name, "type": str(dtype)})

    for column in schema:
        walk(column.name, column.type, 0)
    return pd.DataFrame(rows)
