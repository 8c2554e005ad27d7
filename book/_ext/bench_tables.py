"""``{bench-scale-table} benchmarks/results/bench_scale_<dtype>.json``: the hardware page's CPU table, generated at
build time from the JSON line that ``benchmarks/bench_scale.py`` prints last (committed under
``benchmarks/results/``), so no figure on the page is typed by hand."""
from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives


def _table(header: list[str], rows: list[list[str]]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in header)
    head, body = nodes.thead(), nodes.tbody()
    for cells, part in [(header, head)] + [(r, body) for r in rows]:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=cell)
            row += entry
        part += row
    group += head
    group += body
    return table


def rows_of(result: dict) -> tuple[list[str], list[list[str]]]:
    """The page's rows from one bench_scale result: hook overhead, statistics memory, MANU vs each baseline."""
    dtype = result["dtype"]
    rows = []
    for positions in ("recall", "all"):
        o = result["overhead"][positions]
        rows.append([dtype, f"hooked / plain, {positions} positions (median of {o['pairs']} pairs)",
                     f"{o['ratio_median']:.3f} (quartiles {o['ratio_quartiles'][0]:.3f}–{o['ratio_quartiles'][1]:.3f})",
                     "measured on the slice"])
    memory = result["memory"]["extrapolated"]
    rows.append([dtype, "statistics held by MANU, full 32 + 24 layers", f"{memory['ours_bytes_manu'] / 1e6:.1f} MB",
                 "extrapolated per layer"])
    for scope in ("measured", "extrapolated"):
        for name, b in result["cost"].get(scope, {}).get("baselines", {}).items():
            rows.append([dtype, f"MANU end to end / {name} at the book's settings",
                         f"{b['manu_over_baseline_at_book_settings']:.2f}×",
                         "measured on the slice" if scope == "measured" else "extrapolated per layer"])
    return ["dtype", "quantity (LLaVA-1.5-7B-shaped slice, CPU, 1 thread)", "value", "status"], rows


class BenchScaleTable(Directive):
    required_arguments = 1
    option_spec = {"class": directives.unchanged}

    def run(self):
        root = Path(self.state.document.settings.env.srcdir)
        path = root / self.arguments[0]
        self.state.document.settings.record_dependencies.add(str(path))
        header, rows = rows_of(json.loads(path.read_text()))
        return [_table(header, rows)]


def setup(app):
    app.add_directive("bench-scale-table", BenchScaleTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
