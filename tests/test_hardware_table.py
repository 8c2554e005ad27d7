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
