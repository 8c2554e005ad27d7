"""Tidy evaluation results: records ``{method, set, rendering, task, metric, value, n}`` with the run's metadata,
table helpers, and the memorization gate."""
from __future__ import annotations


from .artifacts import write_json
from .config import EvalConfig


class Results(list):
    """A list of tidy records ``{method, set, rendering, task, metric, value, n}`` with table helpers.

    ``meta`` holds what the run drew and decided: protocol, seeded draws (few-shot IDs, Test_Set image indices),
    the SHA-256 of every prompt, dropped few-shot examples and, for ``method="vanilla"``, the memorization gate.
    """

    meta: dict = {}

    def flag_lines(self) -> list[str]:
        """Warnings to print beside the table (memorization gate, dropped few-shot examples)."""
        lines = []
        gate = self.meta.get("memorization")
        if gate and not gate["passed"]:
            lines.append("NOT MEMORIZED: the vanilla model does not know the forget set ("
                         + "; ".join(gate["failures"] or ["nothing measured"]) + "); unlearning scores are moot")
        if self.meta.get("dropped_shots_total"):
            lines.append(f"{self.meta['dropped_shots_total']} few-shot examples dropped to fit the context")
        return lines

    def frame(self):
        import pandas as pd

        return pd.DataFrame(list(self), columns=["method", "set", "rendering", "task", "metric", "value", "n"])

    def table(self):
        """Methods × (set, task, rendering), values in percent."""
        frame = self.frame()
        frame["value"] = frame["value"] * 100
        pivot = frame.pivot_table(index="method", columns=["set", "task", "rendering"], values="value", sort=False)
        return pivot.round(1)

    def value(self, method: str, set: str, task: str, rendering: str) -> float:
        for record in self:
            if (record["method"], record["set"], record["task"], record["rendering"]) == (method, set, task, rendering):
                return record["value"]
        raise KeyError(f"no result for method={method!r} set={set!r} task={task!r} rendering={rendering!r}")

    def save(self, path) -> None:
        """The records to ``path``; ``meta`` (draws, prompt hash, dropped shots, gate) beside it as
        ``<stem>.meta.json`` for the run manifest."""
        from pathlib import Path

        write_json(path, list(self))
        if self.meta:
            write_json(Path(path).with_suffix(".meta.json"), self.meta)

    def __repr__(self) -> str:
        methods = sorted({r["method"] for r in self})
        return f"Results({len(self)} records, methods={methods})"


def results_frame(results):
    """Scores in percent, rows (set, task), columns (method, rendering): a compact view of
    :class:`~manu_lite.evaluate.Results` for a notebook."""
    frame = results.frame()
    frame["value"] = 100 * frame["value"]
    table = frame.pivot_table(index=["set", "task"], columns=["method", "rendering"], values="value", sort=False)
    return table.round(1)


def memorization_gate(results, config: EvalConfig) -> dict:
    """Does the (vanilla) model know the forget set? Forget MC accuracy and ROUGE-L per rendering against
    ``config.gate_mc`` / ``config.gate_rouge``. ``passed`` is False when any measured value is below its
    threshold: unlearning measured on such a run removes facts that were never learned."""
    failures, checked = [], {}
    for record in results:
        if record["set"] != "forget":
            continue
        threshold = {"mc": config.gate_mc, "generation": config.gate_rouge}.get(record["task"])
        if threshold is None:
            continue
        key = f"{record['task']}/{record['rendering']}"
        checked[key] = record["value"]
        if not record["value"] >= threshold:
            failures.append(f"forget {key} = {record['value']:.3f} < {threshold}")
    return {"passed": not failures and bool(checked), "checked": checked, "failures": failures,
            "thresholds": {"mc": config.gate_mc, "rougeL": config.gate_rouge}}
