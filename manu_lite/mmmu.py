"""MMMU (validation split), the paper's general-utility measure: loader, MMMU's prompt and parsing rules, evaluator.

``MMMU/MMMU`` has one config per subject (30); a row has ``id, question, options`` (a string holding a Python
list), ``answer`` (a letter for multiple choice), ``question_type`` (``"multiple-choice"``/``"open"``),
``image_1`` … ``image_7`` (unused ones null), ``subfield``, ``img_type`` …; texts cite ``<image k>``.

The rules below are transcribed from the official evaluation code (github.com/MMMU-Benchmark/MMMU, ``mmmu/``):
prompt construction from ``utils/data_utils.py`` ``construct_prompt`` with the strings of
``configs/llava1.5.yaml``; answer extraction from ``utils/eval_utils.py`` ``parse_multi_choice_response`` and
``parse_open_response``; scoring from ``eval_multi_choice``/``eval_open``; the overall score is the
question-weighted mean over subjects (``calculate_ins_level_acc``). ``book/utility.md`` lists what differs.

Records are those of :class:`manu_lite.evaluate.Results`: ``set="mmmu"``, ``rendering="image_text"``,
``task`` = a subject or ``"overall"``, ``metric="accuracy"``.
"""
from __future__ import annotations

import ast
import glob
import hashlib
import io
import os
import random
import re
from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

from .evaluate import Results, generate
from .models import IMAGE_TOKEN, Item
# The answer rules, re-exported: one import for the evaluator's callers and the tests.
from .mmmu_rules import extract_numbers, normalize_answer, open_correct, parse_multiple_choice, parse_open

DOMAINS = {  # data_utils.py DOMAIN_CAT2SUB_CAT: the 30 subject configs by discipline
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
SUBJECTS = tuple(s for subjects in DOMAINS.values() for s in subjects)
IMAGE_COLUMNS = tuple(f"image_{k}" for k in range(1, 8))
REQUIRED = ("id", "question", "options", "answer", "question_type")
QUESTION_TYPES = ("multiple-choice", "open")
# configs/llava1.5.yaml (YAML folds each blank line in its quoted strings to one "\n"; task_instructions is empty)
MC_TEMPLATE = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
OPEN_TEMPLATE = "{question}\nAnswer the question using a single word or phrase."
PLACEHOLDER = re.compile(r"<image (\d+)>")
IMAGE_MODES = ("interleaved", "first_image")


class MMMUSchemaError(ValueError):
    """A row or table that does not follow MMMU's schema; the message names the field, the row and the fix."""


@dataclass(frozen=True)
class MMMUQuestion:
    id: str
    subject: str
    question: str
    options: tuple[str, ...]
    answer: str | tuple[str, ...]  # a letter (multiple choice) or the accepted answers (open)
    question_type: str
    images: tuple[int, ...]  # k of every non-null image_k
    row: int  # position in the subject's table, for decoding its images later
    subfield: str = ""
    img_type: str = ""

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(chr(ord("A") + i) for i in range(len(self.options)))


@dataclass
class MMMUData:
    """Parsed questions of some subjects; the images stay undecoded in the ``datasets`` tables until asked for."""

    questions: list[MMMUQuestion]
    tables: dict = field(default_factory=dict, repr=False)  # subject -> datasets.Dataset of the image columns

    def images(self, question: MMMUQuestion) -> dict[int, Image.Image]:
        row = self.tables[question.subject][question.row]
        return {k: _decode(row[f"image_{k}"], question.id, k) for k in question.images}


# ------------------------------------------------------------------------------------------------ loading
def _decode(value, qid: str, k: int) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, str) or isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        data = value if isinstance(value, str) else value.get("bytes") and io.BytesIO(value["bytes"])
        return Image.open(data or value["path"]).convert("RGB")
    raise MMMUSchemaError(f"MMMU row {qid!r}: field 'image_{k}' holds {type(value).__name__}, not an image; fix: "
                          "store images as the datasets Image feature (a struct of bytes and path)")


def _subject_files(source: str, subject: str, split: str, revision: str) -> list[str]:
    """The parquet files of one subject's split: from a local directory in the hub layout
    (``<dir>/<Subject>/<split>-*.parquet``, a clone of the hub repository included), or from the hub id
    ``source`` at ``revision`` through the Hugging Face hub cache (``snapshot_download``), which is what lets a
    cache filled once, or the CPU rehearsal's (:mod:`manu_lite.rehearsal`), be read with ``HF_HUB_OFFLINE=1``."""
    if not os.path.isdir(source):
        try:
            from huggingface_hub import snapshot_download

            source = snapshot_download(source, repo_type="dataset", revision=revision,
                                       allow_patterns=[f"{subject}/{split}-*"])
        except Exception as exc:
            raise MMMUSchemaError(f"could not load MMMU subject {subject!r} from {source!r} at revision {revision} "
                                  f"({type(exc).__name__}: {exc}); offline? Download it once with network access "
                                  f"(load_mmmu({source!r}, [{subject!r}])) or pass a local copy in the hub layout "
                                  f"(<dir>/{subject}/{split}-00000-of-00001.parquet)") from exc
    files = sorted(glob.glob(os.path.join(source, subject, f"{split}-*.parquet")))
    if not files:
        raise MMMUSchemaError(f"no {split} parquet for subject {subject!r} in {source}; fix: lay a local copy "
                              f"out like the hub: <dir>/{subject}/{split}-00000-of-00001.parquet")
    return files


def _load_table(source: str, subject: str, split: str, cache_dir, revision: str):
    import datasets

    files = _subject_files(source, subject, split, revision)
    return datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache_dir)


def _literal(text: str):  # construct_prompt eval()s the options string; a literal parse runs no code
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _parse_row(row: dict, subject: str, i: int) -> MMMUQuestion:
    qid = row.get("id") or f"{subject}#{i}"

    def bad(name, problem, fix):
        return MMMUSchemaError(f"MMMU {subject} row {i} (id {qid!r}): field {name!r} {problem}; fix: {fix}")

    for name in (n for n in REQUIRED if not isinstance(row.get(n), str)):
        raise bad(name, f"is {row.get(name)!r}, not a string", "every row needs the strings " + ", ".join(REQUIRED))
    kind = row["question_type"]
    if kind not in QUESTION_TYPES:
        raise bad("question_type", f"is {kind!r}", f"use one of {QUESTION_TYPES}")
    options = _literal(row["options"])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise bad("options", f"is {row['options']!r}, not a string holding a Python list of strings",
                  "write str(list_of_option_strings), e.g. \"['3', '4']\" (open questions: \"[]\")")
    answer: str | tuple[str, ...] = row["answer"]
    if kind == "multiple-choice":
        letters = [chr(ord("A") + j) for j in range(len(options))]
        if answer not in letters:
            raise bad("answer", f"is {answer!r}, not one of the option letters {letters}",
                      "give the correct option's letter (options[0] is 'A')")
    elif isinstance(_literal(answer), list):  # some open answers accept several (lists in answer_dict_val.json)
        answer = tuple(str(a) for a in _literal(answer))
    images = tuple(k for k, col in enumerate(IMAGE_COLUMNS, 1) if row.get(col) is not None)
    for k in sorted({int(m) for text in [row["question"], *options] for m in PLACEHOLDER.findall(text)}):
        if k not in images:
            raise bad(f"image_{k}", f"is empty but the text refers to <image {k}>",
                      f"store the image in image_{k} (MMMU numbers images 1..7) or fix the placeholder")
    return MMMUQuestion(qid, subject, row["question"], tuple(options), answer, kind, images, i,
                        str(row.get("subfield") or ""), str(row.get("img_type") or ""))


def load_mmmu(source: str = "MMMU/MMMU", subjects=None, split: str = "validation", limit: int | None = None,
              seed: int = 42, cache_dir=None, revision: str = "main") -> MMMUData:
    """Read MMMU through ``datasets``: the hub id (at ``revision``, through the hub cache) or a local directory in
    the hub layout. ``subjects``:
    default all 30 (for a local directory, the subject folders it has). ``limit``: at most this many questions
    per subject, a seeded sample kept in table order (Colab budgets)."""
    if subjects is None:
        subjects = [s for s in SUBJECTS if os.path.isdir(os.path.join(source, s))] if os.path.isdir(source) \
            else list(SUBJECTS)
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown or not subjects:
        raise ValueError(f"unknown MMMU subject(s) {unknown or subjects}; choose from {SUBJECTS}")
    import datasets

    data = MMMUData([])
    for subject in subjects:
        table = _load_table(source, subject, split, cache_dir, revision)
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise MMMUSchemaError(f"MMMU {subject}: no column(s) {missing} (has {table.column_names}); fix: follow "
                                  "MMMU/MMMU's schema: " + ", ".join(REQUIRED) + ", image_1..image_7")
        columns = [c for c in IMAGE_COLUMNS if c in table.column_names]
        images = table.select_columns(columns)
        for c in columns:  # keep bytes; PIL decodes per batch (MMMUData.images)
            if isinstance(images.features[c], datasets.Image):
                images = images.cast_column(c, datasets.Image(decode=False))
        text = table.remove_columns(columns).to_list()
        present = {c: images.data.column(c).is_valid().to_pylist() for c in columns}  # no bytes read
        rows = range(len(text))
        if limit is not None and limit < len(text):
            rows = sorted(random.Random(f"{seed}-mmmu-{subject}").sample(list(rows), limit))
        for i in rows:
            row = {**text[i], **{c: True if present[c][i] else None for c in columns}}
            data.questions.append(_parse_row(row, subject, i))
        data.tables[subject] = images
    return data


# ------------------------------------------------------------------------------------------------ prompts
def build_prompt(question: MMMUQuestion) -> str:
    """construct_prompt: options as ``(A) text`` lines (each ending in a newline) inside MC_TEMPLATE; open
    questions in OPEN_TEMPLATE. ``<image k>`` placeholders stay in the text (see :func:`place_images`)."""
    if question.question_type == "multiple-choice":
        block = "".join(f"({letter}) {option}\n" for letter, option in zip(question.letters, question.options))
        return MC_TEMPLATE.format(question=question.question, options=block)
    return OPEN_TEMPLATE.format(question=question.question)


def place_images(prompt: str, available: tuple[int, ...], mode: str = "interleaved") -> tuple[str, list[int]]:
    """The prompt with image tokens, and which image_k fill them, in order. ``"interleaved"``: the first mention
    of each ``<image k>`` becomes one image token (later mentions stay text); images never mentioned come first,
    in column order. ``"first_image"``: what the official ``run_llava.py`` does with the hub data: ``image_1``
    only, placeholders left as text (the prompt adapter prepends its image token)."""
    if mode == "first_image":
        return prompt, [1] if 1 in available else []
    if mode not in IMAGE_MODES:
        raise ValueError(f"unknown image_mode {mode!r}; use one of {IMAGE_MODES}")
    order: list[int] = []

    def token(match):
        k = int(match.group(1))
        if k in order or k not in available:
            return match.group(0)
        order.append(k)
        return IMAGE_TOKEN

    text = PLACEHOLDER.sub(token, prompt)
    unmentioned = [k for k in available if k not in order]
    return "".join(f"{IMAGE_TOKEN}\n" for _ in unmentioned) + text, unmentioned + order


@dataclass(frozen=True)
class _Interleaved:
    """Wraps a PromptAdapter: image tokens already sit in the question text (LLaVA strings), or become image
    slots of the chat template at their positions."""

    base: object
    answer_prefix = property(lambda self: self.base.answer_prefix)

    def prompt(self, question: str, rendering: str) -> str:
        if getattr(self.base, "family", "llava") == "llava":
            return self.base.prompt(question, "text_only")
        content = []
        for j, part in enumerate(question.split(IMAGE_TOKEN)):
            content += ([{"type": "image"}] if j else []) + ([{"type": "text", "text": part}] if part else [])
        return self.base.processor.apply_chat_template([{"role": "user", "content": content}],
                                                       add_generation_prompt=True, tokenize=False)


# -------------------------------------------------------------------------------------------- evaluator
@dataclass(frozen=True)
class MMMUConfig:
    """subjects/limit: what to load from a source (default: all subjects, every question). image_mode: see
    :func:`place_images`. max_new_tokens: 128 as run_llava.py (which samples with 5 beams; here greedy). seed:
    MMMU seeds ``random`` with 42 for the fallback letter; here each question has a generator seeded by
    (seed, id), so subsets and order do not change the draws."""

    subjects: tuple[str, ...] | None = None
    limit: int | None = None
    image_mode: str = "interleaved"
    max_new_tokens: int = 128
    batch_size: int = 8
    seed: int = 42
    split: str = "validation"

    def __post_init__(self):
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"unknown image_mode {self.image_mode!r}; use one of {IMAGE_MODES}")


def _items(data: MMMUData, questions, mode: str) -> list[Item]:
    items = []
    for q in questions:  # decode this batch's images only
        text, order = place_images(build_prompt(q), q.images, mode)
        images = data.images(q) if order else {}
        items.append(Item(text, "image_text", images[1]) if mode == "first_image" and order
                     else Item(text, "text_only", prefix_images=tuple(images[k] for k in order)))
    return items


def evaluate_mmmu(model, processor, adapter, data, config: MMMUConfig | None = None, method: str = "vanilla",
                  progress: bool = False, details: list | None = None, cache_dir=None) -> Results:
    """Accuracy per subject and overall (question-weighted) on ``data`` (an :class:`MMMUData` or a source for
    :func:`load_mmmu`). Pass a list as ``details`` to receive every response, its parse and the verdict."""
    config = config or MMMUConfig()
    if not isinstance(data, MMMUData):
        data = load_mmmu(data, config.subjects, config.split, config.limit, config.seed, cache_dir)
    was_training, correct = model.training, {}
    model.eval()
    prompts, randoms, questions = [], 0, data.questions
    use = adapter if config.image_mode == "first_image" else _Interleaved(adapter)
    for start in tqdm(range(0, len(questions), config.batch_size), desc=f"MMMU {method}", disable=not progress):
        chunk = questions[start:start + config.batch_size]
        items = _items(data, chunk, config.image_mode)
        prompts += [it.question for it in items]
        responses: list = [None] * len(items)
        for with_images in (True, False):  # one generate call per kind: image inputs cannot mix with none
            idx = [j for j, it in enumerate(items) if bool(it.prefix_images or it.image) == with_images]
            for j, text in zip(idx, generate(model, processor, use, [items[j] for j in idx], config) if idx else []):
                responses[j] = text
        for q, response in zip(chunk, responses):
            if q.question_type == "multiple-choice":
                rng = random.Random(f"{config.seed}-mmmu-{q.id}")
                parsed, how = parse_multiple_choice(response, dict(zip(q.letters, q.options)), rng)
                right, randoms = parsed == q.answer, randoms + (how == "random")
            else:
                parsed, how = parse_open(response), "open"
                right = open_correct(q.answer, parsed)
            correct.setdefault(q.subject, []).append(right)
            if details is not None:
                details.append({"id": q.id, "subject": q.subject, "question_type": q.question_type, "answer": q.answer,
                                "response": response, "parsed": parsed, "how": how, "correct": right})
    model.train(was_training)
    results, everything = Results(), [v for vs in correct.values() for v in vs]
    for task, values in [*correct.items(), ("overall", everything)]:
        results.append({"method": method, "set": "mmmu", "rendering": "image_text", "task": task,
                        "metric": "accuracy", "value": sum(values) / len(values) if values else float("nan"),
                        "n": len(values)})
    results.meta = {"protocol": "mmmu", "image_mode": config.image_mode, "seed": config.seed,
                    "max_new_tokens": config.max_new_tokens, "random_mc_fallbacks": randoms,
                    "subjects": sorted(correct), "n_prompts": len(prompts),
                    "prompt_sha256": hashlib.sha256("\x00".join(prompts).encode()).hexdigest()}
    return results
