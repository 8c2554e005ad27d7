"""MLLMU-Bench evaluation: three tasks × four sets × two renderings, as one tidy table.

Tasks: multiple choice (accuracy), open generation (ROUGE-L F1 with stemming, from ``rouge-score``) and cloze
(case-insensitive substring match). Sets: ``forget``, ``test`` (the forget people with transformed images),
``retain`` and ``celebrity``. Renderings: ``image_text`` and ``text_only``.

``EvalConfig.mc_protocol`` chooses one of four protocols (book/benchmark_protocol.md):

* ``"mllmu"``: MLLMU-Bench's eval.py rule by rule, for all three tasks (section "the benchmark's protocol"
  below): its prompt strings, few-shot examples from the scored set, greedy generation of 50 tokens, first
  letter, ROUGE-1/2/L, cloze substring. Draws are seeded and recorded in ``Results.meta`` with a prompt hash;
  few-shot examples that overflow the context are dropped and counted (or raise, ``on_overflow="raise"``).
  Faithful, but it measures answer format too: a model that does not answer with a letter scores zero.
* ``"likelihood"``: each option's text scored by summed log-probability as the answer to the question; the
  highest wins. Needs no instruction following, but favours short options (length bias).
* ``"likelihood_norm"``: the same, divided by the option's length in characters (lm-evaluation-harness acc_norm).
* ``"likelihood_letter"``: the options and instruction shown, each letter's log-probability scored.

The three likelihood protocols change multiple choice only; generation and cloze then use the project's prompts
(``PromptAdapter``, ``EvalConfig.instructions``).

Every record has the keys ``method, set, rendering, task, metric, value, n`` with ``value`` in [0, 1].
"""
from __future__ import annotations

import hashlib
import random

import torch
from tqdm.auto import tqdm

from .bench import OPTION_LETTERS, MCQuestion, World
from .config import RENDERINGS, EvalConfig
from .protocol import (CLOZE_INSTRUCTION, GENERATION_INSTRUCTION, MC_INSTRUCTION, MLLMU_CLOZE_FEW_SHOT_SETS, MLLMU_MC_FEW_SHOT_SETS, MLLMU_NEW_TOKENS, cloze_correct, first_letter, mllmu_cloze_prompt, mllmu_cloze_shot, mllmu_few_shot_ids, mllmu_generation_prompt, mllmu_letter, mllmu_mc_prompt, mllmu_mc_shot, mllmu_response, mllmu_rouge, mllmu_test_image_index, rouge_l)
from .likelihood import batches_by_rendering, option_logprobs
from .results import Results, memorization_gate, results_frame  # noqa: F401  (re-exported)
from .models import (Item, PromptAdapter, tokenizer_of, check_context, collate, context_length, encode_item,
                     model_device,
                     to_device)

METRIC = {"mc": "accuracy", "generation": "rougeL", "cloze": "accuracy", "generation_rouge1": "rouge1",
          "generation_rouge2": "rouge2"}
LIKELIHOOD_PROTOCOLS = ("likelihood", "likelihood_norm", "likelihood_letter")


# ----------------------------------------------------------------------------------------- model calls
@torch.no_grad()
def generate(model, processor, adapter: PromptAdapter, items: list[Item], config: EvalConfig,
             progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy answers to ``items`` (one rendering or mixed), batched with left padding, in input order."""
    tokenizer = tokenizer_of(processor)
    device = model_device(model)
    outputs: list[str | None] = [None] * len(items)
    for indices in tqdm(list(batches_by_rendering(items, config.batch_size)), desc=desc, disable=not progress,
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
        if config.mc_protocol in LIKELIHOOD_PROTOCOLS:
            predictions = _likelihood_predictions(model, processor, adapter, questions, rendering, images, config)
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


class _Verbatim:
    """A prompt adapter that passes the benchmark's full prompt string through unchanged."""

    family = "llava"
    answer_prefix = " "

    def prompt(self, question: str, rendering: str) -> str:
        return question


def _prompt_length(processor, item: Item) -> int:
    return encode_item(processor, _Verbatim(), item, add_eos=False)["input_ids"].shape[1]


def _fit_shots(model, processor, items: list[Item], shots: list[tuple[str, object]], config: EvalConfig,
               new_tokens: int) -> tuple[int, int]:
    """How many of ``shots`` (text, image-or-None) fit before every prompt of ``items``: (kept, dropped).

    Shots are dropped from the end until the longest prompt plus ``new_tokens`` fits the model's context; with
    ``config.on_overflow == "raise"`` an overflow raises instead.
    """
    limit = context_length(model)
    if limit is None or not items or not shots:
        return len(shots), 0
    longest = max(items, key=lambda it: len(it.question))
    for kept in range(len(shots), -1, -1):
        probe = Item(longest.question, longest.rendering, longest.image, None,
                     "".join(text for text, _ in shots[:kept]),
                     tuple(image for _, image in shots[:kept] if image is not None))
        if _prompt_length(processor, probe) + new_tokens <= limit:
            if kept < len(shots) and config.on_overflow == "raise":
                raise ValueError(f"{len(shots)} few-shot examples overflow the model's context of {limit} tokens "
                                 f"(only {kept} fit); set EvalConfig.on_overflow='drop' to drop shots")
            return kept, len(shots) - kept
    raise ValueError(f"a prompt without few-shot examples exceeds the model's context of {limit} tokens")


def evaluate_set_mllmu(model, processor, records, set_name: str, rendering: str, config: EvalConfig,
                       full_set: dict, meta: dict) -> dict[str, dict]:
    """One set × rendering under the benchmark's protocol (module section "the benchmark's protocol").

    ``full_set`` maps ID → record of every fictitious profile (the benchmark's ``--few_shot_data`` Full_Set).
    ``meta`` receives the draws, the dropped shots and the prompts (for a hash).
    """
    results = {}
    ids = [r.id for r in records]
    for task in config.tasks:
        rng = random.Random(f"mllmu-{config.seed}-{set_name}-{task}")
        # Draw order as in eval.py: few-shot IDs first, then one Test_Set image per row.
        draw_task = "cloze" if task == "cloze" else "mc"
        # EvalConfig.few_shot sets the MC profile count (the benchmark's is 1, the default); cloze always draws 2.
        shot_ids = (mllmu_few_shot_ids(ids, draw_task, rng, config.few_shot if task == "mc" else None)
                    if task in ("mc", "cloze") else [])
        image_index = {r.id: mllmu_test_image_index(len(r.images), rng)
                       for r in records if set_name == "test" and r.images}
        key = f"{set_name}/{rendering}/{task}"
        meta["draws"][key] = {"few_shot_ids": shot_ids, "test_image_index": image_index}

        def image_of(record):
            if rendering != "image_text":
                return None
            return record.images[image_index[record.id]] if record.id in image_index else record.image

        found = [full_set[i] for i in shot_ids if i in full_set]
        excluded = {r.id for r in found}  # eval.py:334,389,588-592: the shot profiles' questions are not scored
        scored = [r for r in records if r.id not in excluded]
        if task == "mc":
            use = set_name in MLLMU_MC_FEW_SHOT_SETS
            shots = [(mllmu_mc_shot(q.question, q.options, q.answer, rendering),
                      r.image if rendering == "image_text" else None)
                     for r in found for q in r.mc.get(rendering, [])] if use else []
            questions = [(r, q) for r in scored for q in r.mc.get(rendering, [])]
            texts = [mllmu_mc_prompt(q.question, q.options, rendering) for _, q in questions]
        elif task == "cloze":
            use = set_name in MLLMU_CLOZE_FEW_SHOT_SETS
            shots = [(mllmu_cloze_shot(q.question, q.answer, rendering),
                      r.image if rendering == "image_text" else None)
                     for r in found for q in r.cloze.get(rendering, [])] if use else []
            questions = [(r, q) for r in scored for q in r.cloze.get(rendering, [])]
            texts = [mllmu_cloze_prompt(q.question, rendering) for _, q in questions]
        else:
            shots = []
            questions = [(r, q) for r in records for q in r.generation.get(rendering, [])]
            texts = [mllmu_generation_prompt(q.question, rendering) for _, q in questions]
        items = [Item(t, rendering, image_of(r)) for t, (r, _) in zip(texts, questions)]
        kept, dropped = _fit_shots(model, processor, items, shots, config, MLLMU_NEW_TOKENS)
        prefix = "".join(text for text, _ in shots[:kept])
        prefix_images = tuple(image for _, image in shots[:kept] if image is not None)
        items = [Item(it.question, rendering, it.image, None, prefix, prefix_images) for it in items]
        meta["dropped_shots"][key] = {"drawn": len(shots), "kept": kept, "dropped": dropped}
        meta["prompts"].extend(prefix + it.question for it in items)
        gen_config = EvalConfig(**{**config.__dict__, "max_new_tokens": MLLMU_NEW_TOKENS})
        responses = [mllmu_response(t) for t in generate(model, processor, _Verbatim(), items, gen_config)]
        if task == "mc":
            predictions = [mllmu_letter(t, q.options) for t, (_, q) in zip(responses, questions)]
            values = [p == q.answer for p, (_, q) in zip(predictions, questions)]
            results["mc"] = _summary(values, [{"id": r.id, "question": q.question, "answer": q.answer,
                                               "prediction": p, "response": t}
                                              for p, t, (r, q) in zip(predictions, responses, questions)])
        elif task == "cloze":
            values = [cloze_correct(q.answer, t) for t, (_, q) in zip(responses, questions)]
            results["cloze"] = _summary(values, [{"id": r.id, "question": q.question, "answer": q.answer,
                                                  "response": t} for t, (r, q) in zip(responses, questions)])
        else:
            rouges = [mllmu_rouge(q.answer, t) for t, (_, q) in zip(responses, questions)]
            results["generation"] = _summary([s["rougeL"] for s in rouges],
                                             [{"id": r.id, "question": q.question, "answer": q.answer,
                                               "response": t, **s} for t, s, (r, q) in zip(responses, rouges,
                                                                                           questions)])
            for name in ("rouge1", "rouge2"):
                results[f"generation_{name}"] = _summary([s[name] for s in rouges], [])
    return results


def _likelihood_predictions(model, processor, adapter, questions, rendering, images, config) -> list[str]:
    """MC predictions by log-likelihood (``config.mc_protocol`` in :data:`LIKELIHOOD_PROTOCOLS`).

    * ``likelihood``: each option's text as the answer to the bare question, summed log-prob. Longer options
      collect more negative log-prob, so the score is biased toward short options.
    * ``likelihood_norm``: the same sum divided by the option's length in characters (lm-evaluation-harness
      ``acc_norm``).
    * ``likelihood_letter``: the question with its options and the instruction shown (the benchmark's MC
      prompt body); the log-prob of each letter ``A``–``D`` as the answer.
    """
    protocol = config.mc_protocol
    letters_of = [[letter for letter in OPTION_LETTERS if letter in q.options] for _, q in questions]
    if protocol == "likelihood_letter":
        items = [Item(_mc_prompt(q), rendering, images.get(r.id), letter)
                 for (r, q), letters in zip(questions, letters_of) for letter in letters]
    else:
        items = [Item(q.question, rendering, images.get(r.id), q.options[letter])
                 for (r, q), letters in zip(questions, letters_of) for letter in letters]
    scores = iter(option_logprobs(model, processor, adapter, items, config.batch_size))
    predictions = []
    for (_, q), letters in zip(questions, letters_of):
        option_scores = [next(scores) for _ in letters]
        if protocol == "likelihood_norm":
            option_scores = [s / max(1, len(q.options[letter])) for s, letter in zip(option_scores, letters)]
        predictions.append(letters[max(range(len(letters)), key=option_scores.__getitem__)])
    return predictions


def _summary(values, details) -> dict:
    values = [float(v) for v in values]
    details = [{**d, "value": v} for d, v in zip(details, values)]  # per question, for bootstrap intervals
    return {"value": sum(values) / len(values) if values else float("nan"), "n": len(values), "details": details}




def evaluate(model, processor, adapter: PromptAdapter, world: World, config: EvalConfig | None = None,
             method: str = "vanilla", progress: bool = True, details: dict | None = None) -> Results:
    """Evaluate ``model`` on every set × rendering × task of ``world``; returns tidy :class:`Results`.

    Pass a dict as ``details`` to receive every per-question prediction, keyed by (set, rendering, task).
    """
    config = config or EvalConfig()
    was_training = model.training
    model.eval()
    results = Results()
    meta = {"protocol": config.mc_protocol, "seed": config.seed, "draws": {}, "dropped_shots": {}, "prompts": []}
    sets = world.eval_sets
    full_set = {r.id: r for r in list(world.forget) + list(world.retain)}  # the fictitious profiles (Full_Set)
    pairs = [(s, r) for s in config.sets for r in RENDERINGS if sets[s]]
    for set_name, rendering in tqdm(pairs, desc=f"evaluate {method}", disable=not progress):
        if config.mc_protocol == "mllmu":
            scores = evaluate_set_mllmu(model, processor, sets[set_name], set_name, rendering, config, full_set,
                                        meta)
        else:
            scores = evaluate_set(model, processor, adapter, sets[set_name], set_name, rendering, config,
                                  few_shot_pool=world.retain)
        for task, score in scores.items():
            results.append({"method": method, "set": set_name, "rendering": rendering, "task": task,
                            "metric": METRIC[task], "value": score["value"], "n": score["n"]})
            if details is not None:
                details[(set_name, rendering, task)] = score["details"]
    model.train(was_training)
    prompts = meta.pop("prompts")
    meta["prompt_sha256"] = hashlib.sha256("\x00".join(prompts).encode()).hexdigest() if prompts else None
    meta["n_prompts"] = len(prompts)
    meta["dropped_shots_total"] = sum(d["dropped"] for d in meta["dropped_shots"].values())
    results.meta = meta
    if method == "vanilla":
        results.meta["memorization"] = memorization_gate(results, config)
    return results


