"""The field's unlearning metrics (TOFU/MUSE as open-unlearning computes them), per rendering, against the retain model.

Pure functions on numbers (tested on hand-made cases) and one model pass that feeds them:

* **truth ratio** (TOFU): per question, P(perturbed)/P(paraphrased), each P the geometric mean of the per-token
  probabilities (``exp(-mean token NLL)``), the perturbed ones averaged in NLL first. The synthetic bench keeps
  the hub schema, so no extra fields are written: both are *derived at evaluation time* from each forget
  person's multiple-choice questions: under the MC question, the paraphrased answer is the correct option (the
  fact in bare wording, not the sentence template the generation task trains and scores), the perturbed answers
  are the three distractors (in the synthetic bench: other facts of the same pool, in the same bare
  template). ``truth_ratio_score``: open-unlearning's "closer to 1 better" mean of ``min(tr, 1/tr)``.
* **forget quality**: the KS-test p-value (``scipy.stats.ks_2samp``) between the truth ratios of a model and of
  the retain model on the forget people (high p = indistinguishable from the retain model).
* **MIA** (forget = members, never-seen people = holdout): LOSS (mean answer NLL), ZLib (NLL / zlib-compressed
  bytes of the answer), Min-K % (minus the mean of the k % lowest token log-probs), Min-K++ (minus the mean of the
  k % lowest z-scores ``(log p(x_t) − μ_t)/σ_t``, μ/σ² the mean/variance of log p under the model's own
  next-token distribution). Scores: higher = looks less like a member; AUC by ``sklearn.metrics.roc_auc_score``
  with forget labelled 0, holdout 1 (open-unlearning's convention: 1 = forget set clearly recognised).
* **privleak** (MUSE): (AUC − AUC_retain) / AUC_retain × 100; 0 = leaks as much as the retain model.
* **extraction strength** (Carlini et al., as open-unlearning): 1 − k/L for the smallest k such that the
  teacher-forced greedy tokens equal the answer from token k on; 0 when not even the last token matches
  (open-unlearning returns 1/L there). **exact memorization**: share of answer tokens predicted greedily.
* **collapse**: share of generations that are empty, repeated-token or non-answers.
"""
from __future__ import annotations

import re
import zlib

import numpy as np
import torch

from .models import IGNORE, Item, PromptAdapter, iter_batches, model_device, model_inputs, to_device, tokenizer_of

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")


# ------------------------------------------------------------------------------------------- truth ratio
def truth_ratios(correct_nll, wrong_nll) -> np.ndarray:
    """Per question P(perturbed)/P(paraphrased): ``correct_nll`` [N] mean token NLL of the paraphrased answer,
    ``wrong_nll`` [N, P] those of the P perturbed answers (averaged over P before exponentiating)."""
    correct = np.asarray(correct_nll, dtype=float)
    wrong = np.asarray(wrong_nll, dtype=float).reshape(len(correct), -1).mean(axis=1)
    return np.exp(-wrong) / (np.exp(-correct) + 1e-10)


def truth_ratio_score(ratios) -> float:
    """open-unlearning's "closer to 1 better" aggregate: mean of min(tr, 1/tr) (1 = no preference for the truth)."""
    ratios = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(ratios, 1 / (ratios + 1e-10))))


def forget_quality(ratios, retain_ratios) -> float:
    """KS-test p-value between a model's and the retain model's truth ratios on the forget set."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(ratios, float), np.asarray(retain_ratios, float)).pvalue)


# ------------------------------------------------------------------------------------------- MIA
def loss_score(token_logprobs) -> float:
    """LOSS: the mean answer-token NLL."""
    return float(-np.mean(np.asarray(token_logprobs, float)))


def zlib_score(token_logprobs, text: str) -> float:
    """ZLib: mean NLL over the zlib-compressed size of the answer text in bytes."""
    return loss_score(token_logprobs) / len(zlib.compress(text.encode("utf-8")))


def _min_k_mean(values, k: float) -> float:
    values = np.sort(np.asarray(values, float))
    if values.size == 0:
        return 0.0
    return float(-np.mean(values[:max(1, int(len(values) * k))]))


def min_k_score(token_logprobs, k: float = 0.2) -> float:
    """Min-K %: minus the mean of the ``k`` share lowest token log-probs (at least one token)."""
    return _min_k_mean(token_logprobs, k)


def min_k_pp_z(vocab_logprobs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Min-K++ token z-scores from [T, V] next-token log-probs and the [T] answer tokens."""
    vocab_logprobs = vocab_logprobs.double()
    probs = vocab_logprobs.exp()
    mu = (probs * vocab_logprobs).sum(-1)
    var = ((probs * vocab_logprobs.square()).sum(-1) - mu.square()).clamp(min=1e-6)
    target = vocab_logprobs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return ((target - mu) / var.sqrt()).numpy()


def min_k_pp_score(z_scores, k: float = 0.2) -> float:
    """Min-K++: minus the mean of the ``k`` share lowest z-scores."""
    return _min_k_mean(z_scores, k)


def mia_auc(forget_scores, holdout_scores) -> float:
    """ROC AUC (scikit-learn) of the attack scores with forget labelled 0 and holdout 1: ≈ 0.5 indistinguishable,
    ≈ 1 the forget people still stand out as members, ≪ 0.5 they stand out as *less* than strangers."""
    from sklearn.metrics import roc_auc_score

    if len(forget_scores) == 0 or len(holdout_scores) == 0:
        raise ValueError("AUC needs at least one forget and one holdout score")
    labels = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return float(roc_auc_score(labels, list(forget_scores) + list(holdout_scores)))


def privleak(auc: float, retain_auc: float) -> float:
    """MUSE's privleak: relative AUC gap to the retain model, in percent (0 = as private as the retain model)."""
    return (auc - retain_auc) / (retain_auc + 1e-10) * 100


# ------------------------------------------------------------------------------------------- extraction
def extraction_strength(preds, labels) -> float:
    """1 − k/L for the smallest k with ``preds[k:] == labels[k:]`` (teacher-forced greedy tokens); 0 if none."""
    preds, labels = list(preds), list(labels)
    length = len(labels)
    for k in range(length):
        if preds[k:] == labels[k:]:
            return 1 - k / length
    return 0.0


def exact_memorization(preds, labels) -> float:
    """Share of answer tokens whose teacher-forced greedy prediction is the answer token."""
    labels = list(labels)
    return sum(p == t for p, t in zip(preds, labels)) / max(1, len(labels))


# ------------------------------------------------------------------------------------------- collapse
NON_ANSWERS = re.compile(r"\b(i don'?t know|i do not know|i cannot|i can'?t|unknown|no idea|not sure|sorry)\b", re.I)


def collapse_kind(text: str, max_share: float = 0.5, run: int = 3) -> str | None:
    """Why a generation is degenerate, or None: ``"empty"`` (no letter or digit), ``"repeated"`` (one word ``run``
    times in a row, or the most frequent word over ``max_share`` of >= 4 words), ``"non_answer"`` (a refusal)."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return "empty"
    if any(len(set(words[i:i + run])) == 1 for i in range(len(words) - run + 1)):
        return "repeated"
    if len(words) >= 4 and max(words.count(w) for w in set(words)) / len(words) > max_share:
        return "repeated"
    if NON_ANSWERS.search(text):
        return "non_answer"
    return None


def collapse_share(texts) -> dict:
    """Share of degenerate generations overall and per kind."""
    kinds = [collapse_kind(t) for t in texts]
    n = max(1, len(kinds))
    return {"share": sum(k is not None for k in kinds) / n, "n": len(kinds),
            **{kind: kinds.count(kind) / n for kind in ("empty", "repeated", "non_answer")}}


# ------------------------------------------------------------------------------------------- model pass
@torch.no_grad()
def token_stats(model, processor, adapter: PromptAdapter, items: list[Item], batch_size: int = 32) -> list[dict]:
    """Per item (input order; items of one rendering): answer-token log-probs, Min-K++ z-scores, greedy tokens,
    answer tokens and the answer text."""
    if len({item.rendering for item in items}) > 1:
        raise ValueError("token_stats keeps input order only for items of one rendering")
    device, out = model_device(model), []
    tokenizer = tokenizer_of(processor)
    for batch in iter_batches(processor, adapter, items, batch_size):
        batch = to_device(batch, device)
        logprobs = torch.log_softmax(model(**model_inputs(batch)).logits[:, :-1].float(), dim=-1).cpu()
        labels = batch["labels"][:, 1:].cpu()
        for row, lab in zip(logprobs, labels):
            keep = lab != IGNORE
            targets, vocab = lab[keep], row[keep]
            out.append({"logprobs": vocab.gather(-1, targets.unsqueeze(-1)).squeeze(-1).numpy(),
                        "z": min_k_pp_z(vocab, targets), "preds": vocab.argmax(-1).tolist(),
                        "labels": targets.tolist(), "text": tokenizer.decode(targets.tolist(), skip_special_tokens=True)})
    return out


def mia_scores(stats: list[dict], k: float = 0.2) -> dict[str, list[float]]:
    return {"loss": [loss_score(s["logprobs"]) for s in stats],
            "zlib": [zlib_score(s["logprobs"], s["text"]) for s in stats],
            "min_k": [min_k_score(s["logprobs"], k) for s in stats],
            "min_k_pp": [min_k_pp_score(s["z"], k) for s in stats]}


def truth_ratio_items(records, rendering: str) -> tuple[list[Item], int]:
    """Items [paraphrased, perturbed × P] for each MC question of ``records`` in ``rendering``, and P."""
    items, per = [], 0
    for record in records:
        image = record.image if rendering == "image_text" else None
        for q in record.mc.get(rendering, []):
            wrong = [text for letter, text in q.options.items() if letter != q.answer]
            per = len(wrong)
            items += [Item(q.question, rendering, image, q.answer_text)] + [Item(q.question, rendering, image, w)
                                                                          for w in wrong]
    return items, per


def forget_generations(model, processor, adapter: PromptAdapter, world, config) -> dict[str, list[str]]:
    """Greedy answers to the forget people's open-generation questions, per rendering (for the collapse share)."""
    from .evaluate import generate

    out = {}
    for rendering in ("image_text", "text_only"):
        items = [Item(q.question, rendering, r.image if rendering == "image_text" else None)
                 for r in world.forget for q in r.generation.get(rendering, [])]
        if items:
            out[rendering] = generate(model, processor, adapter, items, config)
    return out


def model_metrics(model, processor, adapter: PromptAdapter, world, holdout_items: list[Item] | None = None,
                  renderings=("image_text", "text_only"), generations: dict | None = None,
                  batch_size: int = 32) -> dict:
    """Per rendering: forget-set truth ratios (and score), MIA scores and AUCs (with ``holdout_items``),
    extraction strength and exact memorization on the forget pairs, and the collapse share of ``generations``
    (``{rendering: [texts]}``, e.g. the forget-set open generations of the evaluation)."""
    from .finetune import training_items

    out = {}
    for rendering in renderings:
        items, per = truth_ratio_items(world.forget, rendering)
        row = {}
        if items:
            nll = [loss_score(s["logprobs"]) for s in token_stats(model, processor, adapter, items, batch_size)]
            groups = np.asarray(nll).reshape(-1, per + 1)
            ratios = truth_ratios(groups[:, 0], groups[:, 1:])
            row.update(truth_ratios=ratios.tolist(), truth_ratio=truth_ratio_score(ratios))
        members = training_items(world.forget_train, (rendering,))
        stats = token_stats(model, processor, adapter, members, batch_size)
        row["extraction_strength"] = float(np.mean([extraction_strength(s["preds"], s["labels"]) for s in stats]))
        row["exact_memorization"] = float(np.mean([exact_memorization(s["preds"], s["labels"]) for s in stats]))
        held = [i for i in holdout_items or [] if i.rendering == rendering]
        if held:
            forget_scores = mia_scores(stats)
            holdout_scores = mia_scores(token_stats(model, processor, adapter, held, batch_size))
            row["mia_auc"] = {a: mia_auc(forget_scores[a], holdout_scores[a]) for a in MIA_ATTACKS}
        if generations and rendering in generations:
            row["collapse"] = collapse_share(generations[rendering])
        out[rendering] = row
    return out


def against_retain(metrics: dict, retain: dict) -> dict:
    """Per rendering: forget quality (KS p-value of truth ratios) and privleak per MIA attack vs the retain model."""
    out = {}
    for rendering, row in metrics.items():
        ref = retain.get(rendering, {})
        cell = {}
        if "truth_ratios" in row and "truth_ratios" in ref:
            cell["forget_quality"] = forget_quality(row["truth_ratios"], ref["truth_ratios"])
        if "mia_auc" in row and "mia_auc" in ref:
            cell["privleak"] = {a: privleak(row["mia_auc"][a], ref["mia_auc"][a]) for a in row["mia_auc"]}
        out[rendering] = cell
    return out
