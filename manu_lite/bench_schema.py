"""MLLMU-Bench's schema and typed records: what one row of a split holds, in the hub's field order and feature types.

Two row formats exist and both become the same typed :class:`ProfileRecord`:

* **evaluation format** (``Full_Set``, ``forget_N``, ``retain_N``, ``Test_Set``, ``Retain_Set``):
  ``image``, ``ID``, ``Classification_Task``, ``Generation_Task``, ``Mask_Task`` (+ ``biography``, ``question``,
  ``answer``; ``Test_Set`` adds ``images``);
* **training format** (``ft_Data``): ``image``, ``ID``, ``metadata`` (a JSON string of ``{ID, Question, Answer}``).

Images stay encoded (:class:`BenchImage`: the bytes or the file the parquet names) and are decoded when a batch
is encoded, so a record costs its compressed image, not its pixels. :func:`write_split` writes a config with the
``huggingface`` feature metadata the hub's files carry (``image`` an ``Image`` feature, a struct of bytes and path).
"""
from __future__ import annotations

import bisect
import functools
import io
import itertools
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .artifacts import atomic_path

OPTION_LETTERS = ("A", "B", "C", "D")
TYPE_TO_RENDERING = {"Image_Textual": "image_text", "Pure_Text": "text_only"}
CLASSIFICATION_KEYS = {"image_text": "Image_Textual_Questions", "text_only": "Pure_Text_Questions"}
# Phrases the benchmark uses for the pictured person; text-only questions name the person instead.
PERSON_PHRASES = ("this person", "the individual", "this individual", "the person in the image", "the person")
IMAGE_COLUMNS = ("image", "images")


class BenchSchemaError(ValueError):
    """A split does not match the MLLMU-Bench schema; the message names the field, the row and the fix."""


# Field order as the hub's dataset card lists it (MLLMMU/MLLMU-Bench, dataset_info).
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_MC = pa.list_(pa.struct([("Correct_Answer", pa.string()),
                          ("Options", pa.struct([(k, pa.string()) for k in OPTION_LETTERS])),
                          ("Question", pa.string())]))
_OPEN = pa.list_(pa.struct([("Ground_Truth", pa.string()), ("Question", pa.string()), ("Type", pa.string())]))
EVAL_SCHEMA = pa.schema([("image", _IMAGE), ("ID", pa.string()), ("biography", pa.string()),
                         ("question", pa.string()), ("answer", pa.string()),
                         ("Classification_Task", pa.struct([("Image_Textual_Questions", _MC),
                                                            ("Pure_Text_Questions", _MC)])),
                         ("Generation_Task", _OPEN), ("Mask_Task", _OPEN)])
TEST_SCHEMA = EVAL_SCHEMA.append(pa.field("images", pa.list_(_IMAGE)))
TRAIN_SCHEMA = pa.schema([("image", _IMAGE), ("ID", pa.string()), ("metadata", pa.string())])


def hub_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the ``huggingface`` metadata ``datasets`` writes: ``image`` an ``Image`` feature and
    ``images`` a list of them, the rest as their arrow types say (what ``push_to_hub`` stores on the hub)."""
    import datasets

    features = datasets.Features.from_arrow_schema(schema)
    for name in IMAGE_COLUMNS:
        if name in features:
            features[name] = datasets.Image() if name == "image" else datasets.List(datasets.Image())
    return features.arrow_schema


# Rows per parquet row group: what ``datasets`` wrote for image datasets when the hub's files were uploaded
# (PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS = 100); a streaming reader holds one row group at a time.
ROW_GROUP_ROWS = 100


def write_split(rows: list[dict], schema: pa.Schema, out_dir: str | Path, config: str) -> Path:
    """Write one config as ``<out_dir>/<config>/train-00000-of-00001.parquet`` (atomically), with the hub's
    feature metadata (:func:`hub_schema`), in row groups of :data:`ROW_GROUP_ROWS` rows."""
    path = Path(out_dir) / config / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=hub_schema(schema)), tmp, row_group_size=ROW_GROUP_ROWS)
    return path


# --------------------------------------------------------------------------------------------------- images
class ParquetCell(NamedTuple):
    """Where an image's encoded bytes sit: ``column`` of row ``row`` (counted from 0 in the file) of the parquet
    file ``path``; ``index`` is the position in a list column (``Test_Set``'s ``images``), else None. ``stamp``:
    the file's size and modification time when it was loaded, checked before every read."""

    path: str
    row: int
    column: str
    index: int | None
    stamp: tuple[int, int]


def file_stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


# The row groups read last, (path, group, column) -> that column's arrow values: images are read back one row group
# at a time, and evaluation and statistics walk a split in row order, so two groups hold what a batch needs.
_ROW_GROUPS: OrderedDict = OrderedDict()
_ROW_GROUPS_HELD = 2


@functools.lru_cache(maxsize=64)
def _row_group_starts(path: str, stamp: tuple[int, int]) -> list[int]:
    """The first row of each row group of ``path`` (and the row count last), read once per file version."""
    metadata = pq.ParquetFile(path).metadata
    return list(itertools.accumulate((metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)),
                                     initial=0))


def read_cell(cell: ParquetCell) -> bytes:
    """The encoded image bytes at ``cell``, read from its parquet file (one row group, kept for the next reads)."""
    if file_stamp(cell.path) != cell.stamp:
        raise BenchSchemaError(f"{cell.path} changed after it was loaded (size or modification time), so row "
                               f"{cell.row}'s {cell.column} may be another image now; load the split again "
                               "(load_world / load_bench)")
    starts = _row_group_starts(cell.path, cell.stamp)
    group = bisect.bisect_right(starts, cell.row) - 1
    key = (cell.path, cell.stamp, group, cell.column)
    if key not in _ROW_GROUPS:
        _ROW_GROUPS[key] = pq.ParquetFile(cell.path).read_row_group(group, columns=[cell.column]).column(0)
        while len(_ROW_GROUPS) > _ROW_GROUPS_HELD:
            _ROW_GROUPS.popitem(last=False)
    _ROW_GROUPS.move_to_end(key)
    value = _ROW_GROUPS[key][cell.row - starts[group]].as_py()
    value = value[cell.index] if cell.index is not None else value
    return value["bytes"] if isinstance(value, dict) else value


class BenchImage:
    """One image as the parquet stores it: encoded ``data`` (PNG/JPEG bytes), a ``path`` to a file, or a ``cell``
    of the parquet file (:class:`ParquetCell`) whose bytes are read back when the image is opened.

    The loader checks the header (so a row that is not an image fails at load, naming the row) and, by default,
    keeps only the cell: host memory then holds no image bytes, whatever the number of profiles. The pixels are
    decoded by :meth:`open`, a fresh RGB ``PIL.Image`` each call, when a batch is encoded. ``size`` is
    ``(width, height)`` from the header. ``tobytes()`` and ``numpy.asarray(image)`` decode, as a PIL image would.
    """

    __slots__ = ("data", "path", "where", "size", "cell")

    def __init__(self, data: bytes | None, path: str | None, where: str, cell: ParquetCell | None = None):
        self.data, self.path, self.where, self.cell = data, path, where, None
        with self._open() as header:
            self.size = header.size
        if cell is not None:  # the header is checked: keep where the bytes are, not the bytes
            self.data, self.cell = None, cell

    def _open(self, decode: bool = False) -> Image.Image:
        data = self.data or (read_cell(self.cell) if self.cell else None)
        try:
            image = Image.open(io.BytesIO(data) if data else self.path)
            return image.convert("RGB") if decode else image
        except Exception as exc:
            raise BenchSchemaError(f"{self.where}: the image cannot be decoded ({exc}); re-export the row with valid "
                                   "PNG/JPEG bytes in image['bytes']") from exc

    def open(self) -> Image.Image:
        """The decoded image, RGB: [height, width, 3] pixels."""
        return self._open(decode=True)

    def tobytes(self) -> bytes:
        return self.open().tobytes()

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(self.open(), dtype=dtype)

    def __repr__(self) -> str:
        source = (f"{len(self.data)} encoded bytes" if self.data else
                  f"{Path(self.cell.path).name} row {self.cell.row}" if self.cell else repr(self.path))
        return f"BenchImage({self.size[0]}x{self.size[1]}, {source})"


def pil_image(image):
    """A PIL image from a :class:`BenchImage` (decoded now) or a PIL image (as is)."""
    return image.open() if isinstance(image, BenchImage) else image


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


NAME_IN_ANSWER = re.compile(r"name is ([^.,]+)")
# A biography opens with the person's name: capitalised words (with particles such as "de", "van", "al-").
NAME_IN_BIOGRAPHY = re.compile(r"^\s*([A-Z][\w'\-]*(?:\s+(?:(?:de|da|di|van|von|der|al|bin|le|la)\s+)?[A-Z][\w'\-]*)+)")
NOT_A_NAME = {"The", "This", "A", "An", "In", "Born", "He", "She", "They", "His", "Her", "Their", "As", "At"}


@dataclass
class ProfileRecord:
    """One row of an MLLMU-Bench split: one person, their image(s) and their questions per task and rendering.

    ``mc``, ``generation`` and ``cloze`` map a rendering (``"image_text"`` / ``"text_only"``) to its questions
    (evaluation format). ``train_qa`` holds the ``metadata`` pairs (training format, image+text wording).
    ``images`` holds ``Test_Set``'s transformed images. ``image``/``images`` are :class:`BenchImage` (encoded).
    ``question``/``answer`` are the row's top-level pair (the hub's "What is the name …" question).
    """

    id: str
    image: BenchImage | None
    biography: str = ""
    images: list[BenchImage] = field(default_factory=list)
    mc: dict[str, list[MCQuestion]] = field(default_factory=dict)
    generation: dict[str, list[OpenQuestion]] = field(default_factory=dict)
    cloze: dict[str, list[OpenQuestion]] = field(default_factory=dict)
    train_qa: list[OpenQuestion] = field(default_factory=list)
    source_format: str = "evaluation"
    question: str = ""
    answer: str = ""

    def __repr__(self) -> str:
        counts = {task: {r: len(q) for r, q in getattr(self, task).items()} for task in ("mc", "generation", "cloze")}
        size = "no image" if self.image is None else f"image {self.image.size}"
        extra = f", {len(self.train_qa)} training pairs" if self.train_qa else ""
        return f"ProfileRecord(id={self.id!r}, {self.source_format} format, {size}, questions={counts}{extra})"

    @property
    def name(self) -> str | None:
        """The person's name: from a "What is the name …" answer (as the benchmark's own tooling reads it), else
        the row's top-level ``answer``, else the name the ``biography`` opens with."""
        candidates = list(self.train_qa) + list(self.generation.get("image_text", []))
        answers = [qa.answer for qa in candidates if "name" in qa.question.lower()] + [self.answer]
        for match in map(NAME_IN_ANSWER.search, answers):
            if match:
                return match.group(1).strip()
        match = NAME_IN_BIOGRAPHY.match(self.biography)
        return match.group(1) if match and match.group(1).split()[0] not in NOT_A_NAME else None


def to_text_only(text: str, name: str) -> str:
    """Rewrite an image+text question or answer so that it names the person instead of pointing at the image."""
    for phrase in PERSON_PHRASES:
        text = re.sub(rf"\b{phrase}'s\b", f"{name}'s", text, flags=re.IGNORECASE)
        text = re.sub(rf"\b{phrase}\b", name, text, flags=re.IGNORECASE)
    return text


def qa_pairs(record: ProfileRecord, rendering: str) -> list[OpenQuestion]:
    """Question/answer pairs to train (or unlearn) on, in one rendering.

    Training-format rows use their ``metadata``; the text-only rendering names the person (pairs that ask who
    the person is are dropped, as the question would give the answer away). The name comes from
    :attr:`ProfileRecord.name` (``load_world`` gives ``ft_Data`` rows the ``answer``/``biography`` of their
    evaluation row). Evaluation-format rows (e.g. the celebrities, which a real model knows from pre-training)
    derive pairs from their tasks: generation answers, the correct multiple-choice option, and cloze answers.
    """
    if record.source_format == "training":
        if rendering == "image_text":
            return list(record.train_qa)
        name = record.name
        if name is None:
            raise BenchSchemaError(
                f"row ID={record.id}: cannot build text-only pairs, no name found: no 'What is the name …' answer "
                "of the form '… name is <Name>.' in metadata, and no evaluation row's answer/biography naming the "
                "person; add one, load through load_world (it joins the evaluation rows), or train on the "
                "image_text rendering only")
        # Pairs whose image+text answer already holds the name ask who the person is: meaningless once named.
        return [OpenQuestion(to_text_only(qa.question, name), to_text_only(qa.answer, name))
                for qa in record.train_qa if name not in qa.answer]
    pairs = list(record.generation.get(rendering, []))
    pairs += [OpenQuestion(q.question, q.answer_text) for q in record.mc.get(rendering, [])]
    pairs += list(record.cloze.get(rendering, []))
    return pairs
