"""MMMU's answer rules, transcribed from the official evaluation code (github.com/MMMU-Benchmark/MMMU,
``mmmu/utils/eval_utils.py``): ``parse_multi_choice_response``, ``parse_open_response`` and its helpers, and the
scoring of ``eval_multi_choice``/``eval_open``. :mod:`manu_lite.mmmu` loads MMMU, builds its prompts and applies
these rules to the responses.
"""
from __future__ import annotations

import random
import re

_MC_STRIP = (",", ".", "!", "?", ";", ":", "'")


def parse_multiple_choice(response: str, options: dict[str, str], rng: random.Random) -> tuple[str, str]:
    """parse_multi_choice_response: ``(letter, how)``, ``how`` in bracket/letter/content/random. The response
    loses ``, . ! ? ; : '`` at both ends (one character kind after the other) and gets a space each side.
    Candidates: the letters written ``(X)``; failing that, those standing alone as `` X ``; failing that, and
    only for responses of more than 5 words, the options whose text occurs in it (case-insensitive). Several:
    the one whose last occurrence starts latest (ties: the earlier). None: a random letter from ``rng``.
    """
    text, letters = response, list(options)
    for char in _MC_STRIP:
        text = text.strip(char)
    text = f" {text} "
    for how, mark, haystack in (("bracket", lambda x: f"({x})", text), ("letter", lambda x: f" {x} ", text),
                                ("content", lambda x: options[x].lower(), text.lower())):
        if how == "content" and len(text.split()) <= 5:
            break
        found = [x for x in letters if mark(x) in haystack]
        if found:
            last = [haystack.rfind(mark(x)) for x in found]
            return found[max(range(len(found)), key=lambda j: (last[j], -j))], how
    return rng.choice(letters), "random"


_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
_NUMBER_PATTERNS = (  # extract_numbers
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # thousands separated by commas: 1,234,567
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific notation: 6.02e23
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain: no exponent, comma, digit next
)


def extract_numbers(text: str) -> list[str]:  # every match of each pattern, in pattern order
    return [m for pattern in _NUMBER_PATTERNS for m in pattern.findall(text)]


def normalize_answer(text: str) -> list:
    """normalize_str: a number (commas dropped, float, rounded to 2 decimals) or the lower-cased string; a
    single character becomes ``[" c", "c "]`` so it cannot match inside words."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def _key_phrases(response: str) -> list[str]:
    text, keys = response.strip().strip(".").lower(), []
    parts = text.split("\n")  # officially "\n" or ". " before a capital, but after lower-casing: "\n" only
    for j, part in enumerate(parts):
        indicators = _KEY_INDICATORS + (("=",) if j == len(parts) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()  # what follows its last occurrence
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [text]


def parse_open(response: str) -> list:
    """parse_open_response: per line, the shortest tail after a key phrase (``is``, ``so``, ``therefore``, …;
    ``=`` on the last line), else the whole response; plus every number in those tails; all normalized and
    deduplicated."""
    keys = _key_phrases(response)
    candidates = keys + [n for key in keys for n in extract_numbers(key)]
    return list(dict.fromkeys(v for c in candidates for v in normalize_answer(c)))


def open_correct(answer, predictions: list) -> bool:
    """eval_open: a string prediction is right if a normalized string answer occurs in it; a number only if
    it equals a normalized answer."""
    gold = [v for a in ([answer] if isinstance(answer, str) else answer) for v in normalize_answer(a)]
    return any(any(isinstance(g, str) and g in p for g in gold) if isinstance(p, str) else p in gold
               for p in predictions)
