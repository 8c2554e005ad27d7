"""The pretraining data of the tiny model: MLLMU-Bench's answer formats, on people nobody scores.

The benchmark's vanilla model starts from a pretrained LLaVA that already follows the benchmark's prompts: it
answers multiple choice with a letter after a few-shot profile, fills a ``[Blank]``, answers in one sentence. The
tiny model starts from random weights and was only ever fine-tuned on bare question → answer pairs, so under the
benchmark's own protocol (``EvalConfig(mc_protocol="mllmu")``) it scores about zero whatever it knows.

This module holds the data of that pretraining stage (opt-in: ``TrainConfig(pretrain=PretrainConfig())``;
:func:`manu_lite.finetune.pretrained_base` trains and caches the base on it). The population
is a separate synthetic bench (:func:`manu_lite.synthetic.make_synthetic_bench` with its own seed): its people are
never forgotten and never scored, and its celebrities are not used (they would share names with the world's). For
every person, in both renderings, the base learns

* the facts in ``ft_Data``'s question → answer form (LLaVA-1.5's plain prompt),
* multiple choice in the benchmark's prompt, answered with the letter: after one other person's few-shot MC block
  (as eval.py draws one profile) with the options rotated at random, and zero-shot (as celebrity MC is) under
  every rotation of the options, so the letter must be read off the options, not memorised per question,
* cloze in the benchmark's prompt with its instruction, after two other people's cloze shots,
* open generation in the benchmark's prompts.

Every prompt comes from :mod:`manu_lite.protocol`'s builders, so the formats are exactly the ones the benchmark
scores. The world's fictitious people are then learned in question → answer form only (:mod:`manu_lite.finetune`),
as ``ft_Data`` is; multiple-choice accuracy on them therefore measures transfer of the letter format. The tokenizer
is trained on this population's prompts, so the base does not depend on the world and is cached on its own.
"""
from __future__ import annotations

import hashlib
import random
import tempfile
from dataclasses import asdict, dataclass

from .bench import MCQuestion, load_bench, qa_pairs
from .models import Item, PromptAdapter
from .protocol import (MLLMU_FEW_SHOT_PROFILES, mllmu_cloze_prompt, mllmu_cloze_shot, mllmu_generation_prompt,
                       mllmu_mc_prompt, mllmu_mc_shot)
from .synthetic import make_synthetic_bench

TASKS = ("qa", "mc", "mc_zero_shot", "cloze", "generation")


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining stage: which population, which formats, how long.

    people:     size of the pretraining population (its ``Full_Set``), written by ``make_synthetic_bench``; the
                defaults (30 people, 3 epochs: 264 steps) are the point measured in book/benchmark_protocol.md;
    seed:       that bench's seed: any seed other than the world's (0) draws other people, other facts and other
                option orders (names come from the same pools, so a few may coincide with the world's);
    tasks:      the formats learned, from :data:`TASKS`;
    epochs, lr, batch_size, warmup_steps, length_buckets, train_seed: the optimiser's settings
                (:class:`manu_lite.finetune.TrainConfig`; batches of similar length, since few-shot prompts are
                ~10x longer than bare pairs).
    """

    people: int = 30
    seed: int = 1000
    tasks: tuple[str, ...] = TASKS
    epochs: int = 3
    lr: float = 3e-3
    batch_size: int = 32
    warmup_steps: int = 20
    length_buckets: int = 4
    train_seed: int = 0

    def __post_init__(self):
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown pretraining task(s) {sorted(unknown)}; choose from {TASKS}")
        if self.people < 20:
            raise ValueError(f"people={self.people} is too small: few-shot prompts need other people (use >= 20)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BenchmarkPrompts(PromptAdapter):
    """An adapter whose items already hold the full prompt (the benchmark's strings): passed through unchanged,
    and answers carry their own leading space (``answer_prefix`` is empty)."""

    def prompt(self, question: str, rendering: str) -> str:
        return question

    @property
    def answer_prefix(self) -> str:
        return ""


def population(config: PretrainConfig):
    """The pretraining population: ``(full, train)``, its ``Full_Set`` (evaluation format) and ``ft_Data``
    (training format) records, people in the same order."""
    with tempfile.TemporaryDirectory(prefix="manu-lite-pretrain-") as tmp:
        make_synthetic_bench(tmp, n_profiles=config.people, n_celebrities=4, seed=config.seed)
        # keep_bytes: the records outlive the temporary directory
        full = load_bench(tmp, "Full_Set", keep_bytes=True)
        train = {r.id: r for r in load_bench(tmp, "ft_Data", keep_bytes=True)}
    return full, [train[r.id] for r in full]


def shifted(question: MCQuestion, k: int) -> MCQuestion:
    """``question`` with its option texts rotated by ``k`` places (the letters stay A, B, C, D), answer moved along.

    Pretraining shows each question under every rotation (and few-shot prompts under a random one), so a letter
    cannot be memorised per question: it has to be read off the options.
    """
    letters = list(question.options)
    texts = [question.options[letter] for letter in letters]
    rotated = dict(zip(letters, texts[k:] + texts[:k]))
    answer = letters[(letters.index(question.answer) - k) % len(letters)]
    return MCQuestion(question.question, rotated, answer)


def format_items(full, train, tasks=TASKS, seed: int = 0) -> list[Item]:
    """Every pretraining item of the population, in the benchmark's prompts (module docstring).

    ``full``/``train``: the population's evaluation- and training-format records (:func:`population`). Few-shot
    profiles are other people of the population, drawn with ``random.Random(seed)``.
    """
    rng = random.Random(seed)
    llava = PromptAdapter("llava")
    items = []
    for index, (person, facts) in enumerate(zip(full, train)):
        others = full[:index] + full[index + 1:]
        for rendering in ("image_text", "text_only"):
            image = person.image if rendering == "image_text" else None

            def shots(records, questions, build):
                text = "".join(build(r, q) for r in records for q in questions(r))
                pictures = tuple(r.image for r in records for _ in questions(r)) if image is not None else ()
                return text, pictures

            if "qa" in tasks:
                items += [Item(llava.prompt(qa.question, rendering), rendering, image, llava.answer_prefix + qa.answer)
                          for qa in qa_pairs(facts, rendering)]
            mc = person.mc.get(rendering, [])
            if "mc" in tasks:
                prefix, pictures = shots(rng.sample(others, MLLMU_FEW_SHOT_PROFILES["mc"]),
                                         lambda r: r.mc.get(rendering, []),
                                         lambda r, q: mllmu_mc_shot(q.question, q.options, q.answer, rendering))
                items += [Item(mllmu_mc_prompt(v.question, v.options, rendering), rendering, image, " " + v.answer,
                               prefix, pictures) for v in (shifted(q, rng.randrange(len(q.options))) for q in mc)]
            if "mc_zero_shot" in tasks:
                items += [Item(mllmu_mc_prompt(v.question, v.options, rendering), rendering, image, " " + v.answer)
                          for q in mc for v in (shifted(q, k) for k in range(len(q.options)))]
            if "cloze" in tasks:
                prefix, pictures = shots(rng.sample(others, MLLMU_FEW_SHOT_PROFILES["cloze"]),
                                         lambda r: r.cloze.get(rendering, []),
                                         lambda r, q: mllmu_cloze_shot(q.question, q.answer, rendering))
                items += [Item(mllmu_cloze_prompt(q.question, rendering), rendering, image, " " + q.answer,
                               prefix, pictures) for q in person.cloze.get(rendering, [])]
            if "generation" in tasks:
                # The image+text prompt ends "ASSISTANT: " with its space; the text-only one ends "ASSISTANT:".
                space = "" if rendering == "image_text" else " "
                items += [Item(mllmu_generation_prompt(q.question, rendering), rendering, image, space + q.answer)
                          for q in person.generation.get(rendering, [])]
    return items


def items_fingerprint(items: list[Item]) -> str:
    """A hash of the items' prompts, answers and image pixels (the base's cache key includes it)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.rendering}|{item.prefix}|{item.question}|{item.answer}".encode())
        for picture in item.prefix_images + ((item.image,) if item.image is not None else ()):
            digest.update(picture.tobytes())
    return digest.hexdigest()
