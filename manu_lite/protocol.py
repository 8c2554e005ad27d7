"""MLLMU-Bench's own scoring rules, one small function each: prompt strings per task × rendering, few-shot formats,
the first-letter parse, ROUGE, the cloze substring test, the seeded draws. Every string is transcribed from the
benchmark's ``eval.py`` (franciscoliu/MLLMU-Bench, commit 0e3098e); the comment on each rule names the lines.
Nothing here depends on a model: :mod:`manu_lite.evaluate` applies the rules (``mc_protocol="mllmu"``).
"""
from __future__ import annotations

import random

from .bench import OPTION_LETTERS

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


# ------------------------------------------------------------------ the benchmark's protocol, rule by rule
# Every string below is transcribed from MLLMU-Bench eval.py (franciscoliu/MLLMU-Bench, commit 0e3098e); the
# comment on each rule names the function and lines. Nothing here depends on a model.
MLLMU_NEW_TOKENS = 50  # eval.py:367,372,428,615,622,743,754 (5 only for Idefics2 text-only MC, :423)
MLLMU_GENERATION_INSTRUCTION_TEXT = "Answer the question based on your trained knowledge in one sentence in ENGLISH."
MLLMU_MC_FEW_SHOT_SETS = ("forget", "retain", "test")  # eval.py:344,398 mode in forget/retain_shared/test
MLLMU_CLOZE_FEW_SHOT_SETS = ("forget", "retain", "test", "celebrity")  # eval.py:596 (+retain_celebrity)
MLLMU_FEW_SHOT_PROFILES = {"mc": 1, "cloze": 2}  # eval.py:263-265 (1 profile); :501-503 (LLaVA: 2 profiles)


def mllmu_options(question: str, options: dict[str, str]) -> str:
    """eval.py:113-127 formulate_prompt_with_options: the question, then one ``{key}: {value}`` line per option."""
    return question + "\n" + "\n".join(f"{key}: {value}" for key, value in options.items())


def mllmu_mc_prompt(question: str, options: dict[str, str], rendering: str) -> str:
    """eval.py:359-361 (image+text, ``USER: <image>\\n``) and :413-415 (text-only, ``USER:\\n``); no space after
    ``ASSISTANT:``."""
    head = "USER: <image>\n" if rendering == "image_text" else "USER:\n"
    return f"{head}{mllmu_options(question, options)}\n{MC_INSTRUCTION}\nASSISTANT:"


def mllmu_mc_shot(question: str, options: dict[str, str], answer: str, rendering: str) -> str:
    """One in-context MC example, eval.py:349-356 (image+text) / :403-410 (text-only): ``Question: …``, the four
    options, ``Correct Answer: X``; no instruction and no ``ASSISTANT``."""
    head = "USER: <image>\n" if rendering == "image_text" else "USER:\n"
    lines = "".join(f"{letter}: {options[letter]}\n" for letter in OPTION_LETTERS)
    return f"{head}Question: {question}\n{lines}Correct Answer: {answer}\n"


def mllmu_cloze_question(question: str) -> str:
    """eval.py:578 (and :533,:544 for the shots): ``__`` becomes ``[Blank]``, then the instruction on its own line."""
    return question.replace("__", "[Blank]") + "\n" + CLOZE_INSTRUCTION


def mllmu_cloze_prompt(question: str, rendering: str) -> str:
    """eval.py:606-608: ``USER: <image>\\n{q}\\nASSISTANT:`` / ``USER:\\n{q}\\nASSISTANT:`` (q already with the
    instruction, :func:`mllmu_cloze_question`)."""
    head = "USER: <image>\n" if rendering == "image_text" else "USER:\n"
    return f"{head}{mllmu_cloze_question(question)}\nASSISTANT:"


def mllmu_cloze_shot(question: str, answer: str, rendering: str) -> str:
    """eval.py:599-600 (image+text: ``USER:<image>`` with no space) / :603-604 (text-only)."""
    head = "USER:<image>\n" if rendering == "image_text" else "USER:\n"
    return f"{head}{mllmu_cloze_question(question)}\nCorrect Answer: {answer}\n"


def mllmu_generation_prompt(question: str, rendering: str) -> str:
    """eval.py:731 (image+text, ends ``ASSISTANT: `` with a trailing space) and :751 (text-only: ``USER: `` with a
    space, no ``accurately``, no trailing space). No few-shot examples."""
    if rendering == "image_text":
        return f"USER: <image>\n{question}\n{GENERATION_INSTRUCTION}\nASSISTANT: "
    return f"USER: {question}\n{MLLMU_GENERATION_INSTRUCTION_TEXT}\nASSISTANT:"


def mllmu_response(generated: str) -> str:
    """eval.py:375,431,626-631,758-763: the text after the first ``ASSISTANT:`` (here: the generated continuation,
    cut at any ``ASSISTANT:`` it contains), stripped."""
    return generated.split("ASSISTANT:")[0].strip() if "ASSISTANT:" in generated else generated.strip()


def mllmu_letter(response: str, options: dict[str, str]) -> str | None:
    """eval.py:376,432: the first character of the stripped response, upper-cased, if it is an option key."""
    return response[0].upper() if response and response[0].upper() in options else None


def mllmu_rouge(reference: str, prediction: str) -> dict[str, float]:
    """eval.py:680,782: ROUGE-1, ROUGE-2 and ROUGE-L F-measures with Porter stemming (``rouge-score``)."""
    global _SCORER3
    if _SCORER3 is None:
        from rouge_score import rouge_scorer

        _SCORER3 = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = _SCORER3.score(reference, prediction)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


_SCORER3 = None


def mllmu_few_shot_ids(scored_ids: list[str], task: str, rng: random.Random, n: int | None = None) -> list[str]:
    """eval.py:262-265 (MC) and :500-503 (cloze): ``random.sample`` of 1 (MC) or 2 (cloze) IDs from the set being
    scored; here from a seeded generator. ``n`` overrides the count (``EvalConfig.few_shot`` for MC)."""
    n = MLLMU_FEW_SHOT_PROFILES[task] if n is None else n
    return rng.sample(list(scored_ids), min(n, len(scored_ids)))


def mllmu_test_image_index(n_images: int, rng: random.Random) -> int:
    """eval.py:324-325,573-574,717-718: one of the Test_Set row's ``images`` per row and per task (here seeded)."""
    return rng.randrange(n_images)
