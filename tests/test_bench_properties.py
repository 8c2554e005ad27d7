"""Property test of the loader: valid bench tables, mutated the ways real files go wrong (a field dropped, renamed
or retyped, empty lists, null images, wrong letters, duplicate IDs, extra columns), either load into usable
records or raise :class:`BenchSchemaError` naming the place and the fix: never a bare KeyError, TypeError,
IndexError or AttributeError, and loading writes nothing beside the data (so nothing half-written). A failed
``write_split`` leaves no file either. Seeded (``derandomize``), small tables: ~250 cases in well under a minute.
"""
from __future__ import annotations

import copy
import re
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench_rows import eval_row, png, train_row, write_raw
from manu_lite.bench import BenchSchemaError, load_bench, qa_pairs
from manu_lite.bench_schema import EVAL_SCHEMA, write_split

CASES = 250
RETYPED = (0, 1.5, "x", None, [], {"x": 1}, b"\x00", True)
FIX = re.compile(r"\b(fix|use|set|store|pass|add|remove|rename|re-export|re-download|regenerate|put|choose)\b")


def _paths(value, prefix=()):
    """Every path into a row: dict keys, and index 0 of lists."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield prefix + (key,)
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list) and value:
        yield prefix + (0,)
        yield from _paths(value[0], prefix + (0,))


def _base(kind: str) -> tuple[str, list[dict]]:
    if kind == "training":
        return "ft_Data", [train_row("001"), train_row("002")]
    rows = [eval_row("001"), eval_row("002")]
    if kind == "test":
        for row in rows:
            row["images"] = [png((0, 90, 0)), png((0, 0, 90))]
        return "Test_Set", rows
    return "Full_Set", rows


def _parent(row, path):
    for key in path[:-1]:
        row = row[key]
    return row


@st.composite
def mutated_tables(draw):
    kind = draw(st.sampled_from(["evaluation", "test", "training"]))
    config, rows = _base(kind)
    mutation = draw(st.sampled_from(["drop", "rename", "retype", "empty_list", "null_image", "wrong_letter",
                                     "duplicate_id", "extra_column"]))
    paths = sorted(_paths(rows[0]), key=str)
    path: tuple = ()
    if mutation in ("drop", "rename", "retype"):
        path = draw(st.sampled_from([p for p in paths if mutation == "retype" or isinstance(p[-1], str)]))
    elif mutation == "empty_list":
        lists = [p for p in paths if isinstance(_parent(rows[0], p)[p[-1]], list)]
        path = draw(st.sampled_from(lists)) if lists else ("metadata",)  # training rows: an empty JSON list
    elif mutation == "null_image":
        path = draw(st.sampled_from([p for p in paths if p[-1] in ("image", "bytes") or p[:1] == ("images",)
                                     and len(p) == 2]))
    elif mutation == "wrong_letter":
        candidates = [p for p in paths if p[-1] == "Correct_Answer"] or [p for p in paths if p[-1] == "metadata"]
        path = draw(st.sampled_from(candidates))
    new_value = draw(st.sampled_from(RETYPED)) if mutation == "retype" else None
    letter = draw(st.sampled_from(["E", "a", "", " B ", "AB", "1"]))
    for i, row in enumerate(rows):
        if mutation == "duplicate_id":
            row["ID"] = draw(st.sampled_from(["001", "1", "0001"])) if i else row["ID"]
            continue
        if mutation == "extra_column":
            row[draw(st.sampled_from(["Directory", "extra", "note"]))] = "x"
            continue
        parent, key = _parent(row, path), path[-1]
        if mutation == "drop":
            del parent[key]
        elif mutation == "rename":
            parent[f"{key}_renamed"] = parent.pop(key)
        elif mutation == "retype":
            parent[key] = copy.deepcopy(new_value)
        elif mutation == "empty_list":
            parent[key] = "[]" if key == "metadata" else []
        elif mutation == "null_image":
            parent[key] = None
        elif key == "metadata":
            parent[key] = parent[key].replace('"Answer"', '"Answr"')
        else:
            parent[key] = letter
    return kind, config, mutation, path, rows


def _use(records) -> None:
    """What the library does with records: names, pairs in both renderings, every image decoded."""
    for record in records:
        repr(record), record.name
        for rendering in ("image_text", "text_only"):
            try:
                qa_pairs(record, rendering)
            except BenchSchemaError as exc:  # a training row without a name, for text-only pairs
                assert "no name found" in str(exc)
        for image in [record.image, *record.images]:
            image.open()


def _check_error(exc: BenchSchemaError, config: str, path: tuple) -> None:
    message = str(exc)
    assert config in message or "row ID=" in message, message
    assert re.search(r"row \d|column|split is empty|row ID=", message), message
    assert FIX.search(message), f"no fix in: {message}"
    names = [k for k in path if isinstance(k, str)]
    assert not names or any(n in message for n in names) or "column" in message or "image" in message, \
        f"{path} not named in: {message}"


def test_mutated_tables_load_or_raise_the_projects_error():
    outcomes: Counter = Counter()

    @settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=mutated_tables())
    def check(case):
        kind, config, mutation, path, rows = case
        with tempfile.TemporaryDirectory() as tmp:
            try:
                write_raw(Path(tmp), config, rows)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                outcomes[(mutation, "unwritable")] += 1  # pyarrow cannot store it: no file to load
                return
            before = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*"))
            try:
                records = load_bench(tmp, config)
                _use(records)
                outcomes[(mutation, "loaded")] += 1
            except BenchSchemaError as exc:
                _check_error(exc, config, path)
                outcomes[(mutation, "refused")] += 1
            assert sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*")) == before, "loading wrote a file"

    check()
    assert sum(n for (_, result), n in outcomes.items() if result != "unwritable") >= 200, outcomes
    kinds = {m for m, _ in outcomes}
    assert kinds == {"drop", "rename", "retype", "empty_list", "null_image", "wrong_letter", "duplicate_id",
                     "extra_column"}, outcomes
    assert {r for _, r in outcomes} >= {"loaded", "refused"}, outcomes


@pytest.mark.parametrize("bad", [{"ID": 7}, {"ID": "1", "Generation_Task": "oops"}])
def test_a_failed_write_leaves_no_file(tmp_path, bad):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        write_split([eval_row(), bad], EVAL_SCHEMA, tmp_path, "Full_Set")
    assert list((tmp_path / "Full_Set").iterdir()) == []
