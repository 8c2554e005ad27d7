"""The hardware page's CPU table is generated from the benchmark's JSON (book/_ext/bench_tables.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import bench_tables  # noqa: E402

RESULTS = sorted((ROOT / "benchmarks" / "results").glob("bench_scale_*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_rows_carry_the_json_values(path):
    result = json.loads(path.read_text())
    header, rows = bench_tables.rows_of(result)
    assert len(header) == 4 and all(len(r) == 4 for r in rows)
    cells = {r[1]: r[2] for r in rows}
    recall = result["overhead"]["recall"]
    assert cells[f"hooked / plain, recall positions (median of {recall['pairs']} pairs)"].startswith(
        f"{recall['ratio_median']:.3f}")
    assert cells["statistics held by MANU, full 32 + 24 layers"] == \
        f"{result['memory']['extrapolated']['ours_bytes_manu'] / 1e6:.1f} MB"
    ga = result["cost"]["measured"]["baselines"]["ga/lora"]["manu_over_baseline_at_book_settings"]
    assert f"{ga:.2f}×" in [r[2] for r in rows if "ga/lora" in r[1]]


def test_the_hardware_page_uses_the_generated_tables():
    page = (ROOT / "book" / "hardware.md").read_text()
    for path in RESULTS:
        assert f"```{{bench-scale-table}} {path.relative_to(ROOT).as_posix()}" in page


# ---- the method table (benchmarks/method_table.py's JSON) -----------------------------------------------------
FAKE_METHODS = {
    "splits": ["forget_5", "forget_10", "forget_15"], "retain_people": 10,
    "selected": {"reference a=30": [150, 153, 156]},
    "drops": {"reference a=30": [{c: 10.0 * i + j for j, (c, _) in enumerate(bench_tables.METHOD_COLUMNS)}
                                 for i in range(3)]},
    "jaccard": {"reference|balanced a=30": [0.5, 0.6, 0.7]},
}


def test_method_values_are_mean_and_sample_std_over_splits():
    # forget/cloze/image_text is column 0: 0, 10, 20 -> mean 10, sample std 10.
    assert bench_tables.method_value(FAKE_METHODS, "reference a=30 forget/cloze/image_text") == "+10.0 ± 10.0"
    assert bench_tables.method_value(FAKE_METHODS, "jaccard reference|balanced a=30") == "0.60 ± 0.10"
    assert bench_tables.method_value(FAKE_METHODS, "splits") == "forget_5, forget_10, forget_15"
    with pytest.raises(KeyError, match="rows: \\['reference a=30'\\]"):
        bench_tables.method_value(FAKE_METHODS, "paper a=30 forget/cloze/image_text")


def test_method_rows_hold_every_column():
    header, rows = bench_tables.method_rows(FAKE_METHODS)
    assert header[:2] == ["method", "neurons"] and len(header) == 2 + len(bench_tables.METHOD_COLUMNS)
    assert rows == [["reference, α = 30", "153"] + [f"{10.0 + j:+.1f} ± 10.0"
                                                   for j in range(len(bench_tables.METHOD_COLUMNS))]]


def test_paper_vs_code_takes_every_method_figure_from_the_json():
    page = (ROOT / "book" / "paper_vs_code.md").read_text()
    for name in ("method_table.json", "method_table_both_towers.json"):
        assert f"```{{method-table}} benchmarks/results/{name}" in page
    result = json.loads((ROOT / bench_tables.METHOD_TABLE).read_text())
    keys = __import__("re").findall(r"\{method-value\}`([^`]+)`", page)
    assert len(keys) >= 15
    for key in keys:  # every quoted figure resolves (a KeyError would be a build error)
        bench_tables.method_value(result, key)
