"""LLaVA-Bench (In-the-Wild) with a pluggable judge; the judge-free default is NOT the paper's number.

The original benchmark (60 questions on 24 images) asks GPT-4 to rate, for each question, a reference answer
(GPT-4's own, written from a text description of the image) and the model's answer on 1-10; LLaVA's
``llava/eval/summarize_gpt_review.py`` reports ``mean(model score) / mean(reference score) * 100`` per
category and over all questions. That needs a GPT-4 (or other LLM) judge, which this package does not call.

A :class:`Judge` maps ``(question, reference, answer)`` to a score in [0, 1], or to a pair
``(reference score, answer score)`` from which the relative score is formed as above. :class:`RougeLJudge`
is judge-free (ROUGE-L F1 of the answer against the reference answer); its records go to the set
``"llava_bench_judge_free"`` so that they are never mistaken for the paper's column. A judge whose
``paper_comparable`` is true writes ``set="llava_bench"``.

Data: the hub copy ``lmms-lab/llava-bench-in-the-wild`` (split ``train``): ``question_id, question, image,
caption, gpt_answer, category, image_id``; a local parquet directory in that layout also works.
"""
from __future__ import annotations

import io
from typing import Protocol, runtime_checkable

from PIL import Image

from .evaluate import Results, generate, rouge_l
from .models import Item

REQUIRED = ("question", "image", "gpt_answer", "category")


@runtime_checkable
class Judge(Protocol):
    name: str
    metric: str
    paper_comparable: bool

    def __call__(self, question: str, reference: str, answer: str) -> float | tuple[float, float]: ...


class RougeLJudge:
    """Judge-free stand-in: ROUGE-L F1 (stemmed) of the answer against the GPT-4 reference answer. Cheap and
    deterministic; it rewards wording close to GPT-4's, not helpfulness. Not comparable with the paper."""

    name = "rougeL-vs-reference"
    metric = "rougeL_vs_reference"
    paper_comparable = False

    def __call__(self, question: str, reference: str, answer: str) -> float:
        return rouge_l(reference, answer)


def load_llava_bench(source: str = "lmms-lab/llava-bench-in-the-wild", split: str = "train", limit=None,
                     cache_dir=None):
    """The benchmark as a ``datasets.Dataset`` with undecoded images (decoded per batch by the evaluator)."""
    import datasets

    table = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"LLaVA-Bench table from {source!r} lacks column(s) {missing} (has {table.column_names}); "
                         "fix: use the lmms-lab/llava-bench-in-the-wild layout: " + ", ".join(REQUIRED))
    if isinstance(table.features["image"], datasets.Image):
        table = table.cast_column("image", datasets.Image(decode=False))
    return table.select(range(min(limit, len(table)))) if limit is not None else table


def _decode(value) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    data = value.get("bytes") if isinstance(value, dict) else None
    return Image.open(io.BytesIO(data) if data else value["path"]).convert("RGB")


class _Settings:
    def __init__(self, batch_size: int, max_new_tokens: int):
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens


def evaluate_llava_bench(model, processor, adapter, table, judge: Judge | None = None, method: str = "vanilla",
                         batch_size: int = 8, max_new_tokens: int = 512, details: list | None = None) -> Results:
    """Answer every question (one image each, greedy) and score it with ``judge`` (default :class:`RougeLJudge`).
    Records: ``task`` = a category or ``"all"``, ``metric`` = the judge's."""
    judge = judge or RougeLJudge()
    settings = _Settings(batch_size, max_new_tokens)
    scores: dict[str, list] = {}
    was_training = model.training
    model.eval()
    for start in range(0, len(table), batch_size):
        rows = table[start:start + batch_size]  # a column dict; images decoded for this batch only
        items = [Item(q, "image_text", _decode(img)) for q, img in zip(rows["question"], rows["image"])]
        answers = generate(model, processor, adapter, items, settings)
        for q, ref, cat, answer in zip(rows["question"], rows["gpt_answer"], rows["category"], answers):
            score = judge(q, ref, answer)
            scores.setdefault(cat, []).append(score)
            if details is not None:
                details.append({"question": q, "category": cat, "reference": ref, "answer": answer, "score": score})
    model.train(was_training)
    results = Results()
    set_name = "llava_bench" if judge.paper_comparable else "llava_bench_judge_free"
    for task, values in [*sorted(scores.items()), ("all", [v for vs in scores.values() for v in vs])]:
        results.append({"method": method, "set": set_name, "rendering": "image_text", "task": task,
                        "metric": judge.metric, "value": _aggregate(values), "n": len(values)})
    results.meta = {"judge": judge.name, "paper_comparable": judge.paper_comparable, "max_new_tokens": max_new_tokens}
    return results


def _aggregate(values: list) -> float:
    """Mean of scores; for (reference, answer) pairs, LLaVA's relative score mean(answer) / mean(reference)."""
    if not values:
        return float("nan")
    if isinstance(values[0], (tuple, list)):
        reference = sum(v[0] for v in values) / len(values)
        return (sum(v[1] for v in values) / len(values)) / reference if reference else float("nan")
    return sum(float(v) for v in values) / len(values)
