"""Benchmark figures on the book's pages, generated at build time from the JSON the benchmarks write (committed
under ``benchmarks/results/``), so no figure on those pages is typed by hand:

- ``{bench-scale-table} benchmarks/results/bench_scale_<dtype>.json``: the hardware page's CPU table
  (``benchmarks/bench_scale.py``, the JSON line it prints last);
- ``{method-table} benchmarks/results/method_table.json``: the three MANU methods and the defects emulation,
  mean ± std over the forget splits (``benchmarks/method_table.py``);
- ``{method-value}`KEY``` in prose: one number of that JSON — ``reference a=30 forget/cloze/image_text`` (a drop,
  mean ± std over splits), ``jaccard reference|balanced a=30`` (an overlap), ``splits`` or ``retain_people``.
"""
from __future__ import annotations

import json
from pathlib import Path

import statistics

from docutils import nodes
from docutils.parsers.rst import Directive, directives

METHOD_TABLE = "benchmarks/results/method_table.json"
# The columns of the method table: (set/task/rendering, header).
METHOD_COLUMNS = [("forget/cloze/image_text", "forget cloze, image+text"),
                  ("forget/cloze/text_only", "forget cloze, text-only"),
                  ("forget/generation/image_text", "forget ROUGE-L, image+text"),
                  ("forget/generation/text_only", "forget ROUGE-L, text-only"),
                  ("retain/generation/image_text", "retain ROUGE-L, image+text"),
                  ("retain/generation/text_only", "retain ROUGE-L, text-only"),
                  ("celebrity/cloze/image_text", "celebrity cloze, image+text")]


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


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:+.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:+.1f}"


def method_value(result: dict, key: str) -> str:
    """One number of a method_table result, as the prose shows it (``KeyError`` naming what exists)."""
    if key in ("splits", "retain_people"):
        value = result[key]
        return ", ".join(value) if isinstance(value, list) else str(value)
    if key.startswith("jaccard "):
        values = result["jaccard"][key[len("jaccard "):]]
        mean = statistics.mean(values)
        return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"
    row, _, column = key.rpartition(" ")
    if row not in result["drops"]:
        raise KeyError(f"{row!r} is not a row of the method table; rows: {sorted(result['drops'])}")
    return _mean_std([split[column] for split in result["drops"][row]])


def method_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """One row per (method, alpha): neurons selected (mean over splits) and the drops of METHOD_COLUMNS."""
    rows = []
    for key in result["drops"]:
        n = round(statistics.mean(result["selected"][key]))
        cells = [method_value(result, f"{key} {column}") for column, _ in METHOD_COLUMNS]
        rows.append([key.replace(" a=", ", α = "), str(n), *cells])
    return ["method", "neurons"] + [h for _, h in METHOD_COLUMNS], rows


def _load(document, relative: str) -> dict:
    path = Path(document.settings.env.srcdir) / relative
    document.settings.record_dependencies.add(str(path))
    return json.loads(path.read_text())


class MethodTable(Directive):
    required_arguments = 1

    def run(self):
        header, rows = method_rows(_load(self.state.document, self.arguments[0]))
        return [_table(header, rows)]


def method_value_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    try:
        value = method_value(_load(inliner.document, METHOD_TABLE), text)
    except KeyError as error:
        message = inliner.reporter.error(f"method-value {text!r}: {error}", line=lineno)
        return [inliner.problematic(rawtext, rawtext, message)], [message]
    return [nodes.Text(value)], []


def setup(app):
    app.add_directive("bench-scale-table", BenchScaleTable)
    app.add_directive("method-table", MethodTable)
    app.add_role("method-value", method_value_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
