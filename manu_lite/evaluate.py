"""MLLMU-Bench evaluation: three tasks × four sets × two renderings, as one tidy table.

Tasks: multiple choice (accuracy), open generation (ROUGE-L F1 with stemming, from ``rouge-score``) and cloze
(case-insensitive substring match). Sets: ``forget``, ``test`` (the forget people with transformed images),
``retain`` and ``celebrity``. Renderings: ``image_text`` and ``text_only``.

Multiple choice has two protocols:

* ``"likelihood"``: each option's text is scored by its log-probability as the answer to the question; the
  highest wins. Robust, and it needs no instruction following.
* ``"mllmu"``: the benchmark's own: greedy generation after the options and "Just give ONE letter …", the first
  character is the prediction, optionally after few-shot examples. Faithful, but brittle (a model that does not
  answer with a letter scores zero, and image few-shot overflows small contexts).

Every record has the keys ``method, set, rendering, task, metric, value, n`` with ``value`` in [0, 1].
"""
from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from .artifacts import write_json
from .bench import OPTION_LETTERS, MCQuestion, World
from .config import RENDERINGS, EvalConfig
from .models import (Item, PromptAdapter, tokenizer_of, answer_nll, check_context, collate, encode_item, model_device,
                     to_device)

METRIC = {"mc": "accuracy", "generation": "rougeL", "cloze": "accuracy"}
MC_INSTRUCTION = "Just give ONE letter representing the answer directly."
GENERATION_INSTRUCTION = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
CLOZE_INSTRUCTION = "Please **ONLY** provide the correct answer that should replace the [Blank]."


# -------------------------------------------------------------------------------------------- metrics
_SCORER = None


def rouge_l(reference: str, prediction: str) -> float:
    """ROUGE-L F1 with Porter stemming (``rouge-score``), as the benchmark computes it."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def cloze_correct(ground_truth: str, response: str) -> bool:
    """The benchmark's cloze rule: the answer appears in the response, ignoring case."""
    return ground_truth.strip().lower() in response.lower()


def first_letter(response: str, options: dict[str, str]) -> str | None:
    """The benchmark's multiple-choice parse: the first character, upper-cased, if it names an option."""
    stripped = response.strip()
    letter = stripped[:1].upper()
    return letter if letter in options else None


# ----------------------------------------------------------------------------------------- model calls
def _batches_by_rendering(items: list[Item], batch_size: int):
    """Index lists of at most ``batch_size`` items, each of one rendering (image inputs cannot be mixed)."""
    order = sorted(range(len(items)), key=lambda i: items[i].rendering)
    for k in range(0, len(order), batch_size):
        by_rendering: dict[str, list[int]] = {}
        for i in order[k:k + batch_size]:
            by_rendering.setdefault(items[i].rendering, []).append(i)
        yield from by_rendering.values()


@torch.no_grad()
def generate(model, processor, adapter: PromptAdapter, items: list[Item], config: EvalConfig,
             progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy answers to ``items`` (one rendering or mixed), batched with left padding, in input order."""
    tokenizer = tokenizer_of(processor)
    device = model_device(model)
    outputs: list[str | None] = [None] * len(items)
    for indices in tqdm(list(_batches_by_rendering(items, config.batch_size)), desc=desc, disable=not progress,
                        leave=False):
        encoded = [encode_item(processor, adapter, items[i]) for i in indices]
        batch = collate(encoded, tokenizer.pad_token_id, padding_side="left")
        batch.pop("labels")
        check_context(model, batch["input_ids"], config.max_new_tokens)
        generated = model.generate(**to_device(batch, device), max_new_tokens=config.max_new_tokens,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        for i, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            outputs[i] = text.strip()
    return outputs


@torch.no_grad()
def option_logprobs(model, processor, adapter: PromptAdapter, items: list[Item], batch_size: int) -> list[float]:
    """Summed log-probability of each item's ``answer`` given its prompt (no EOS), in input order."""
    device = model_device(model)
    pad = tokenizer_of(processor).pad_token_id
    scores: list[float] = [0.0] * len(items)
    for indices in _batches_by_rendering(items, batch_size):
        batch = collate([encode_item(processor, adapter, items[i], add_eos=False) for i in indices], pad)
        for i, nll in zip(indices, answer_nll(model, to_device(batch, device), per_sequence=True).tolist()):
            scores[i] = -nll
    return scores


# --------------------------------------------------------------------------------------------- tasks
def _image(record, set_name: str, rng: random.Random):
    # Test_Set rows carry transformed images: evaluate one, chosen with a seeded generator (the benchmark's
    # random.choice was unseeded).
    if set_name == "test" and record.images:
        return rng.choice(record.images)
    return record.image


def _mc_prompt(question: MCQuestion) -> str:
    options = "\n".join(f"{letter}: {question.options[letter]}" for letter in OPTION_LETTERS if letter in question.options)
    return f"{question.question}\n{options}\n{MC_INSTRUCTION}"


def _few_shot_prefix(examples, rendering: str, adapter: PromptAdapter) -> tuple[str, tuple]:
    """In-context multiple-choice examples (question, options, correct letter) and their images."""
    text, images = "", []
    for record in examples:
        for question in record.mc.get(rendering, []):
            text += f"{adapter.prompt(_mc_prompt(question), rendering)}{adapter.answer_prefix}{question.answer}\n"
            if rendering == "image_text":
                images.append(record.image)
    return text, tuple(images)


def evaluate_set(model, processor, adapter: PromptAdapter, records, set_name: str, rendering: str,
                 config: EvalConfig, few_shot_pool=(), progress: bool = False) -> dict[str, dict]:
    """Scores of one set in one rendering: ``{task: {"value": float, "n": int, "details": [...]}}``."""
    rng = random.Random(f"{config.seed}-{set_name}-{rendering}")
    images = {r.id: _image(r, set_name, rng) for r in records} if rendering == "image_text" else {}
    results = {}

    def item(record, question, answer=None, prefix="", prefix_images=()):
        return Item(question, rendering, images.get(record.id), answer, prefix, prefix_images)

    if "mc" in config.tasks:
        questions = [(r, q) for r in records for q in r.mc.get(rendering, [])]
        if config.mc_protocol == "likelihood":
            items = [item(r, q.question, q.options[letter]) for r, q in questions for letter in OPTION_LETTERS
                     if letter in q.options]
            scores = iter(option_logprobs(model, processor, adapter, items, config.batch_size))
            predictions = []
            for _, q in questions:
                letters = [letter for letter in OPTION_LETTERS if letter in q.options]
                option_scores = [next(scores) for _ in letters]
                predictions.append(letters[max(range(len(letters)), key=option_scores.__getitem__)])
        else:
            shots = rng.sample(list(few_shot_pool), min(config.few_shot, len(few_shot_pool))) if config.few_shot else []
            prefix, prefix_images = _few_shot_prefix(shots, rendering, adapter)
            responses = generate(model, processor, adapter, [item(r, _mc_prompt(q), None, prefix, prefix_images)
                                                             for r, q in questions], config)
            predictions = [first_letter(text, q.options) for text, (_, q) in zip(responses, questions)]
        correct = [p == q.answer for p, (_, q) in zip(predictions, questions)]
        results["mc"] = _summary(correct, [{"id": r.id, "question": q.question, "answer": q.answer, "prediction": p}
                                           for p, (r, q) in zip(predictions, questions)])
    for task, attr, instruction, score in (
            ("generation", "generation", GENERATION_INSTRUCTION, rouge_l),
            ("cloze", "cloze", CLOZE_INSTRUCTION, cloze_correct)):
        if task not in config.tasks:
            continue
        questions = [(r, q) for r in records for q in getattr(r, attr).get(rendering, [])]

        def prompt(text, task=task, instruction=instruction):
            if task == "cloze" and config.instructions:
                text = text.replace("__", "[Blank]")
            return f"{text}\n{instruction}" if config.instructions else text

        responses = generate(model, processor, adapter, [item(r, prompt(q.question)) for r, q in questions], config)
        values = [float(score(q.answer, text)) for text, (_, q) in zip(responses, questions)]
        results[task] = _summary(values, [{"id": r.id, "question": q.question, "answer": q.answer, "response": text}
                                          for text, (r, q) in zip(responses, questions)])
    return results


def _summary(values, details) -> dict:
    values = [float(v) for v in values]
    return {"value": sum(values) / len(values) if values else float("nan"), "n": len(values), "details": details}


# -------------------------------------------------------------------------------------------- results
class Results(list):
    """A list of tidy records ``{method, set, rendering, task, metric, value, n}`` with table helpers."""

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
        write_json(path, list(self))

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


def evaluate(model, processor, adapter: PromptAdapter, world: World, config: EvalConfig | None = None,
             method: str = "vanilla", progress: bool = True, details: dict | None = None) -> Results:
    """Evaluate ``model`` on every set × rendering × task of ``world``; returns tidy :class:`Results`.

    Pass a dict as ``details`` to receive every per-question prediction, keyed by (set, rendering, task).
    """
    config = config or EvalConfig()
    was_training = model.training
    model.eval()
    results = Results()
    sets = world.eval_sets
    pairs = [(s, r) for s in config.sets for r in RENDERINGS if sets[s]]
    for set_name, rendering in tqdm(pairs, desc=f"evaluate {method}", disable=not progress):
        scores = evaluate_set(model, processor, adapter, sets[set_name], set_name, rendering, config,
                              few_shot_pool=world.retain)
        for task, score in scores.items():
            results.append({"method": method, "set": set_name, "rendering": rendering, "task": task,
                            "metric": METRIC[task], "value": score["value"], "n": score["n"]})
            if details is not None:
                details[(set_name, rendering, task)] = score["details"]
    model.train(was_training)
    return results
