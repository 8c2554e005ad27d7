"""Artifacts are written atomically (complete or absent, never half-written) and get the permissions of a normal
write: ``0o666`` less the umask, so that a course server or a web server serving a run directory can read them."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from manu_lite import artifacts, bench, report, viz
from manu_lite.prune import NeuronMask
from manu_lite.stats import StatsTable

from bench_rows import eval_row


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def plain_write_mode(tmp_path: Path) -> int:
    """The mode ``open(path, "w")`` gives under the current umask (and the directory's default ACL, if any)."""
    probe = tmp_path / "probe"
    probe.write_text("")
    try:
        return mode(probe)
    finally:
        probe.unlink()


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def _figure(path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    return [viz.save_figure(fig, path / "fig.png", {"points": 2}), path / "fig.json"]


def _mask(path):
    NeuronMask({"language.0.down_proj": [1, 3]}).save(path / "mask")
    return [path / "mask" / "mask.json", path / "mask" / "mask.safetensors"]


def _table(path):
    report.write_table(pd.DataFrame({"forget": [0.5]}, index=["MANU"]), path / "table")
    return [path / "table.csv", path / "table.md"]


def _manifest(path):
    run = artifacts.RunManifest(path / "run", {"seed": 0})
    (path / "run" / "a.json").parent.mkdir(exist_ok=True)
    artifacts.write_json(path / "run" / "a.json", {"x": 1})
    run.complete("step", [path / "run" / "a.json"])
    return [path / "run" / "manifest.json", path / "run" / "a.json"]


# Every writer of the package that produces a file (all go through artifacts.atomic_path / write_json).
WRITERS = {
    "write_json (results.json, summary.json, …)": lambda p: [artifacts.write_json(p / "results.json", [1])],
    "RunManifest": _manifest,
    "NeuronMask.save": _mask,
    "StatsTable.save": lambda p: (StatsTable().save(p / "stats.safetensors"), [p / "stats.safetensors"])[1],
    "bench.write_split (parquet)": lambda p: [bench.write_split([eval_row()], bench.EVAL_SCHEMA, p, "forget_5")],
    "report.write_table": _table,
    "viz.save_figure": _figure,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_artifacts_get_the_mode_of_a_normal_write(writer, umask, tmp_path):
    want = plain_write_mode(tmp_path)
    assert want == 0o666 & ~umask  # (tmp_path has no default ACL: the umask alone decides)
    files = WRITERS[writer](tmp_path / "out")
    for path in files:
        assert Path(path).is_file()
        assert oct(mode(path)) == oct(want), f"{writer}: {path} is {oct(mode(path))}, a plain write gives {oct(want)}"
    # Directories the writer made are normal too (0o777 less the umask).
    assert oct(mode(tmp_path / "out")) == oct(0o777 & ~umask)
    assert no_temp_files(tmp_path)


def test_umask_022_gives_0644_and_077_gives_0600(tmp_path):
    old = os.umask(0o022)
    try:
        artifacts.write_json(tmp_path / "open.json", {"a": 1})
        os.umask(0o077)
        artifacts.write_json(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(old)
    assert mode(tmp_path / "open.json") == 0o644
    assert mode(tmp_path / "private.json") == 0o600


def test_overwrite_takes_the_current_umask_not_the_old_file_mode(tmp_path):
    old = os.umask(0o077)
    try:
        artifacts.write_json(tmp_path / "r.json", 1)
        os.umask(0o022)
        artifacts.write_json(tmp_path / "r.json", 2)  # as open(path, "w") on a new file would, via the rename
    finally:
        os.umask(old)
    assert mode(tmp_path / "r.json") == 0o644 and json.loads((tmp_path / "r.json").read_text()) == 2


def test_failed_write_leaves_no_half_written_file(tmp_path):
    target = tmp_path / "sub" / "results.json"
    with pytest.raises(RuntimeError, match="disk full"):
        with artifacts.atomic_path(target) as tmp:
            Path(tmp).write_text('{"half": ')
            raise RuntimeError("disk full")
    assert not target.exists() and no_temp_files(tmp_path)
    # An existing artifact keeps its complete previous content (and mode) when a rewrite fails.
    artifacts.write_json(target, {"complete": True})
    before = mode(target)
    with pytest.raises(TypeError):
        artifacts.write_json(target, {"bad": object()})  # json fails half-way through the dump
    assert json.loads(target.read_text()) == {"complete": True} and mode(target) == before
    assert no_temp_files(tmp_path)
    # A real writer failing mid-way: pyarrow rejects a row that does not fit the schema.
    with pytest.raises(Exception):
        bench.write_split([{"ID": 7}], bench.EVAL_SCHEMA, tmp_path, "forget_5")
    assert not (tmp_path / "forget_5" / "train-00000-of-00001.parquet").exists() and no_temp_files(tmp_path)


def test_temporary_names_are_unique_and_exclusive(tmp_path, monkeypatch):
    paths = []
    for _ in range(3):
        with artifacts.atomic_path(tmp_path / "a.bin") as tmp:
            paths.append(tmp)
            assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".a.bin.")
            Path(tmp).write_bytes(b"x")
    assert len(set(paths)) == 3
    # Every candidate name taken: a clear error instead of overwriting someone else's file.
    monkeypatch.setattr(artifacts.secrets, "token_hex", lambda n: "same")
    (tmp_path / ".a.bin.same.tmp").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match=r"delete the stale"):
        with artifacts.atomic_path(tmp_path / "a.bin"):
            pass
    assert (tmp_path / ".a.bin.same.tmp").read_bytes() == b"not ours"
