"""MLLMU-Bench: the schema, the typed records, one loader for the hub and for local parquet, and :class:`World`.

The hub dataset ``MLLMMU/MLLMU-Bench`` stores one ``train`` split per config as ``<config>/train-*.parquet``.
Two row formats exist and both load into the same typed :class:`ProfileRecord`:

* **evaluation format** (``Full_Set``, ``forget_N``, ``retain_N``, ``Test_Set``, ``Retain_Set``):
  ``image``, ``ID``, ``Classification_Task``, ``Generation_Task``, ``Mask_Task`` (+ ``biography``, ``images``);
* **training format** (``ft_Data``): ``image``, ``ID``, ``metadata`` (a JSON string of ``{ID, Question, Answer}``).

Unlearning needs the training format for the forget/retain people; the hub's ``forget_N`` configs are in the
evaluation format (a frequent confusion), so :func:`load_world` joins them with ``ft_Data`` by ``ID``.
:mod:`manu_lite.synthetic` writes the same layout and schema (:func:`write_split`) for fictitious people.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .artifacts import atomic_path

HUB_DATASET = "MLLMMU/MLLMU-Bench"
CONFIGS = ("Full_Set", "forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85",
           "Test_Set", "Retain_Set", "ft_Data")
FORGET_PERCENTS = (5, 10, 15)
EVAL_COLUMNS = ("image", "ID", "Classification_Task", "Generation_Task", "Mask_Task")
TRAIN_COLUMNS = ("image", "ID", "metadata")
TYPE_TO_RENDERING = {"Image_Textual": "image_text", "Pure_Text": "text_only"}
CLASSIFICATION_KEYS = {"image_text": "Image_Textual_Questions", "text_only": "Pure_Text_Questions"}
OPTION_LETTERS = ("A", "B", "C", "D")
# Phrases the benchmark uses for the pictured person; text-only questions name the person instead.
PERSON_PHRASES = ("this person", "the individual", "this individual", "the person in the image", "the person")


class BenchSchemaError(ValueError):
    """A split does not match the MLLMU-Bench schema; the message names the field, the row and the fix."""


_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_MC = pa.list_(pa.struct([("Question", pa.string()),
                          ("Options", pa.struct([(k, pa.string()) for k in OPTION_LETTERS])),
                          ("Correct_Answer", pa.string())]))
_OPEN = pa.list_(pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())]))
EVAL_SCHEMA = pa.schema([("image", _IMAGE), ("ID", pa.string()), ("biography", pa.string()),
                         ("question", pa.string()), ("answer", pa.string()),
                         ("Classification_Task", pa.struct([("Image_Textual_Questions", _MC),
                                                            ("Pure_Text_Questions", _MC)])),
                         ("Generation_Task", _OPEN), ("Mask_Task", _OPEN)])
TEST_SCHEMA = EVAL_SCHEMA.append(pa.field("images", pa.list_(_IMAGE)))
TRAIN_SCHEMA = pa.schema([("image", _IMAGE), ("ID", pa.string()), ("metadata", pa.string())])


def write_split(rows: list[dict], schema: pa.Schema, out_dir: str | Path, config: str) -> Path:
    """Write one config as ``<out_dir>/<config>/train-00000-of-00001.parquet`` (atomically)."""
    path = Path(out_dir) / config / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    return path




# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class MCQuestion:
    """A four-option multiple-choice question; ``answer`` is the correct letter."""

    question: str
    options: dict[str, str]
    answer: str

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]


@dataclass(frozen=True)
class OpenQuestion:
    """A generation question (answer is a sentence) or a cloze (question holds ``__``, answer fills it)."""

    question: str
    answer: str


@dataclass
class ProfileRecord:
    """One row of an MLLMU-Bench split: one person, their image(s) and their questions per task and rendering.

    ``mc``, ``generation`` and ``cloze`` map a rendering (``"image_text"`` / ``"text_only"``) to its questions
    (evaluation format). ``train_qa`` holds the ``metadata`` pairs (training format, image+text wording).
    ``images`` holds ``Test_Set``'s transformed images.
    """

    id: str
    image: Image.Image | None
    biography: str = ""
    images: list[Image.Image] = field(default_factory=list)
    mc: dict[str, list[MCQuestion]] = field(default_factory=dict)
    generation: dict[str, list[OpenQuestion]] = field(default_factory=dict)
    cloze: dict[str, list[OpenQuestion]] = field(default_factory=dict)
    train_qa: list[OpenQuestion] = field(default_factory=list)
    source_format: str = "evaluation"

    def __repr__(self) -> str:
        counts = {task: {r: len(q) for r, q in getattr(self, task).items()} for task in ("mc", "generation", "cloze")}
        size = "no image" if self.image is None else f"image {self.image.size}"
        extra = f", {len(self.train_qa)} training pairs" if self.train_qa else ""
        return f"ProfileRecord(id={self.id!r}, {self.source_format} format, {size}, questions={counts}{extra})"

    @property
    def name(self) -> str | None:
        """The person's name, read from a "What is the name …" answer (as the benchmark's own tooling does)."""
        candidates = list(self.train_qa) + list(self.generation.get("image_text", []))
        for qa in candidates:
            if "name" in qa.question.lower():
                match = re.search(r"name is ([^.,]+)", qa.answer)
                if match:
                    return match.group(1).strip()
        return None


def to_text_only(text: str, name: str) -> str:
    """Rewrite an image+text question or answer so that it names the person instead of pointing at the image."""
    for phrase in PERSON_PHRASES:
        text = re.sub(rf"\b{phrase}'s\b", f"{name}'s", text, flags=re.IGNORECASE)
        text = re.sub(rf"\b{phrase}\b", name, text, flags=re.IGNORECASE)
    return text


def qa_pairs(record: ProfileRecord, rendering: str) -> list[OpenQuestion]:
    """Question/answer pairs to train (or unlearn) on, in one rendering.

    Training-format rows use their ``metadata``; the text-only rendering names the person (pairs that ask who
    the person is are dropped, as the question would give the answer away). Evaluation-format rows (e.g. the celebrities,
    which a real model knows from pre-training) derive pairs from their tasks: generation answers, the correct
    multiple-choice option, and cloze answers.
    """
    if record.source_format == "training":
        if rendering == "image_text":
            return list(record.train_qa)
        name = record.name
        if name is None:
            raise BenchSchemaError(
                f"row ID={record.id}: cannot build text-only pairs, no 'What is the name …' answer of the form "
                "'… name is <Name>.' in metadata; add one, or train on the image_text rendering only")
        # Pairs whose image+text answer already holds the name ask who the person is: meaningless once named.
        return [OpenQuestion(to_text_only(qa.question, name), to_text_only(qa.answer, name))
                for qa in record.train_qa if name not in qa.answer]
    pairs = list(record.generation.get(rendering, []))
    pairs += [OpenQuestion(q.question, q.answer_text) for q in record.mc.get(rendering, [])]
    pairs += list(record.cloze.get(rendering, []))
    return pairs


# --------------------------------------------------------------------------------------------------- loading
def _decode_image(cell, where: str) -> Image.Image:
    if cell is None:
        raise BenchSchemaError(f"{where}: image is missing (null); every row needs an image "
                               "(a dict with 'bytes' or 'path', as the Hugging Face Image feature stores it)")
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
    else:
        data, path = cell, None
    try:
        if data:
            image = Image.open(io.BytesIO(data))
        elif path:
            image = Image.open(path)
        else:
            raise ValueError("neither bytes nor path")
        image.load()
    except Exception as exc:
        raise BenchSchemaError(f"{where}: the image cannot be decoded ({exc}); re-export the row with valid "
                               "PNG/JPEG bytes in image['bytes']") from exc
    return image.convert("RGB")


def _require(row: dict, key: str, kind, where: str):
    value = row.get(key)
    if not isinstance(value, kind):
        got = "missing" if value is None else f"a {type(value).__name__}"
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchSchemaError(f"{where}: field {key!r} is {got}, expected {want}; fix the row or re-export the split")
    return value


def _parse_eval_row(row: dict, where: str) -> ProfileRecord:
    record = ProfileRecord(id=str(_require(row, "ID", (str, int), where)), image=_decode_image(row.get("image"), where),
                           biography=row.get("biography") or "")
    classification = _require(row, "Classification_Task", dict, where)
    for rendering, key in CLASSIFICATION_KEYS.items():
        items = classification.get(key) or []
        questions = []
        for i, item in enumerate(items):
            at = f"{where} Classification_Task.{key}[{i}]"
            options = {k: v for k, v in (_require(item, "Options", dict, at)).items() if v is not None}
            answer = str(_require(item, "Correct_Answer", str, at)).strip()
            if answer not in options:
                raise BenchSchemaError(f"{at}: Correct_Answer {answer!r} is not one of the options {sorted(options)}; "
                                       "set it to the letter of the right option")
            questions.append(MCQuestion(_require(item, "Question", str, at), options, answer))
        record.mc[rendering] = questions
    for task, attr in (("Generation_Task", "generation"), ("Mask_Task", "cloze")):
        buckets: dict[str, list[OpenQuestion]] = {"image_text": [], "text_only": []}
        for i, item in enumerate(_require(row, task, (list, tuple), where)):
            at = f"{where} {task}[{i}]"
            kind = item.get("Type")
            if kind not in TYPE_TO_RENDERING:
                raise BenchSchemaError(f"{at}: Type {kind!r} is not one of {sorted(TYPE_TO_RENDERING)}; set Type to "
                                       "'Image_Textual' (the question shows the image) or 'Pure_Text'")
            buckets[TYPE_TO_RENDERING[kind]].append(
                OpenQuestion(_require(item, "Question", str, at), str(_require(item, "Ground_Truth", (str, int), at))))
        setattr(record, attr, buckets)
    record.images = [_decode_image(cell, f"{where} images[{i}]") for i, cell in enumerate(row.get("images") or [])]
    return record


def _parse_train_row(row: dict, where: str) -> ProfileRecord:
    raw = _require(row, "metadata", (str, list), where)
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise BenchSchemaError(f"{where}: metadata is not valid JSON ({exc}); it must be a JSON list of "
                               "{{'ID', 'Question', 'Answer'}} objects") from exc
    pairs = []
    for i, item in enumerate(items):
        at = f"{where} metadata[{i}]"
        pairs.append(OpenQuestion(_require(item, "Question", str, at), _require(item, "Answer", str, at)))
    if not pairs:
        raise BenchSchemaError(f"{where}: metadata holds no question/answer pairs")
    return ProfileRecord(id=str(_require(row, "ID", (str, int), where)), image=_decode_image(row.get("image"), where),
                         train_qa=pairs, source_format="training")


def _split_files(source: str, config: str) -> list[str]:
    if config not in CONFIGS:
        raise BenchSchemaError(f"unknown config {config!r}; choose one of MLLMU-Bench's: {', '.join(CONFIGS)}")
    if os.path.isdir(source):
        files = sorted(glob.glob(os.path.join(source, config, "*.parquet")))
        if not files:
            raise BenchSchemaError(f"no parquet files in {os.path.join(source, config)}; a local copy must be laid "
                                   f"out like the hub: <dir>/{config}/train-00000-of-00001.parquet")
        return files
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(source, repo_type="dataset", allow_patterns=[f"{config}/*"])
    except Exception as exc:
        raise BenchSchemaError(
            f"could not fetch {source!r} config {config!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Offline? Download it once with network access, or pass a local directory laid out like the hub "
            "(<dir>/<config>/train-*.parquet); the tiny profile needs no download (make_synthetic_bench)") from exc
    return _split_files(local, config)


def load_bench(source: str, config: str) -> list[ProfileRecord]:
    """Load one MLLMU-Bench config from the hub name or a local directory laid out like the hub.

    Returns one :class:`ProfileRecord` per row. Raises :class:`BenchSchemaError` naming the row and field when
    the data does not match the schema, and when the split is empty.
    """
    files = _split_files(source, config)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    columns = set(table.column_names)
    if "metadata" in columns:
        required, parse = TRAIN_COLUMNS, _parse_train_row
    elif "Classification_Task" in columns or "Generation_Task" in columns:
        required, parse = EVAL_COLUMNS, _parse_eval_row
    else:
        raise BenchSchemaError(
            f"{config}: columns {sorted(columns)} match neither format: the evaluation format needs "
            f"{', '.join(EVAL_COLUMNS)}; the training format needs {', '.join(TRAIN_COLUMNS)}")
    missing = [c for c in required if c not in columns]
    if missing:
        raise BenchSchemaError(f"{config}: missing column(s) {missing} (have {sorted(columns)}); "
                               f"this format needs {', '.join(required)}")
    if table.num_rows == 0:
        raise BenchSchemaError(f"{config}: the split is empty (0 rows); regenerate or re-download it")
    return [parse(row, f"{config} row {i}") for i, row in enumerate(table.to_pylist())]


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
        return f"World({self.source!r}, {self.forget_config}: {sizes})"


def load_world(source: str, forget: str = "forget_10", max_retain: int | None = None, seed: int = 0) -> World:
    """Load the four evaluation sets for one forget split and the matching training-format rows.

    ``max_retain`` evaluates a seeded subsample of the retain people (the full set is 85–95 % of 500 on the
    real benchmark). Raises when forget and retain share an ID or when ``ft_Data`` lacks a person.
    """
    match = re.fullmatch(r"forget_(\d+)", forget)
    if not match or int(match.group(1)) not in FORGET_PERCENTS:
        raise BenchSchemaError(f"unknown forget split {forget!r}; choose forget_5, forget_10 or forget_15")
    retain_config = f"retain_{100 - int(match.group(1))}"
    forget_rows, retain_rows = load_bench(source, forget), load_bench(source, retain_config)
    overlap = sorted({r.id for r in forget_rows} & {r.id for r in retain_rows})
    if overlap:
        raise BenchSchemaError(f"{forget} and {retain_config} share IDs {overlap[:10]}: a person cannot be both "
                               "forgotten and retained; fix the split files")
    forget_ids = {r.id for r in forget_rows}
    test = [r for r in load_bench(source, "Test_Set") if r.id in forget_ids]
    training = {r.id: r for r in load_bench(source, "ft_Data")}
    require_training_format(list(training.values()), "ft_Data")

    def train_rows(rows, split):
        absent = [r.id for r in rows if r.id not in training]
        if absent:
            raise BenchSchemaError(f"ft_Data has no rows for {split} IDs {absent[:10]}; use the ft_Data of the same "
                                   "benchmark release as the split")
        return [training[r.id] for r in rows]

    forget_train, retain_train = train_rows(forget_rows, forget), train_rows(retain_rows, retain_config)
    return World(source, forget, forget_rows, retain_rows, test, load_bench(source, "Retain_Set"),
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
