"""Two checks the paper lists as limitations: a relearning attack (does a little fine-tuning bring the forgotten
facts back?) and a loss-based membership-inference test (do the forget people still stand out?)."""
from __future__ import annotations

import copy
import random
from dataclasses import replace
from pathlib import Path

import torch

from .bench import World
from .config import EvalConfig
from .evaluate import evaluate
from .finetune import TrainConfig, train, training_items
from .models import IGNORE, PromptAdapter, answer_nll, iter_batches, model_device, to_device


def rank_auc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counting one half: the ROC AUC, by
    ``sklearn.metrics.roc_auc_score`` (positives labelled 1)."""
    from sklearn.metrics import roc_auc_score

    if not positive or not negative:
        raise ValueError("AUC needs at least one positive and one negative score")
    return float(roc_auc_score([1] * len(positive) + [0] * len(negative), list(positive) + list(negative)))


@torch.no_grad()
def item_losses(model, processor, adapter: PromptAdapter, items, batch_size: int = 64) -> list[float]:
    """Mean answer-token NLL of each item (order grouped by rendering, as :func:`iter_batches` yields)."""
    device = model_device(model)
    losses = []
    for batch in iter_batches(processor, adapter, items, batch_size):
        batch = to_device(batch, device)
        tokens = (batch["labels"][:, 1:] != IGNORE).sum(dim=1).clamp(min=1)
        losses += (answer_nll(model, batch, per_sequence=True) / tokens).tolist()
    return losses


def membership_auc(model, processor, adapter: PromptAdapter, members, non_members, batch_size: int = 64) -> dict:
    """Loss-based membership inference: AUC of "lower loss ⇒ member" separating ``members`` from ``non_members``.

    members: the forget people's pairs (seen in training, then unlearned); non_members: pairs of people never
    trained on. AUC ≈ 0.5: indistinguishable (the goal); ≈ 1: still remembered; well below 0.5: the forget
    people now stand out by a *higher* loss than strangers, which also leaks their membership.
    """
    seen = item_losses(model, processor, adapter, members, batch_size)
    unseen = item_losses(model, processor, adapter, non_members, batch_size)
    return {"auc": rank_auc([-x for x in seen], [-x for x in unseen]),
            "member_loss": sum(seen) / len(seen), "non_member_loss": sum(unseen) / len(unseen),
            "members": len(seen), "non_members": len(unseen)}


def unseen_people(world: World, out: Path, n: int, seed: int) -> list:
    """Training-format records of ``n`` synthetic people never trained on (a separately seeded bench), minus any
    whose name a world person already has."""
    from .bench import load_bench
    from .synthetic import make_synthetic_bench

    bench = Path(out) / f"unseen-bench-{n}-{seed}"
    if not (bench / "ft_Data").exists():
        make_synthetic_bench(bench, n_profiles=max(20, n), n_celebrities=4, seed=seed)
    known = {r.name for r in world.forget_train + world.retain_train}
    return [r for r in load_bench(str(bench), "ft_Data") if r.name not in known][:n]


def relearn_attack(model, processor, adapter: PromptAdapter, world: World, method: str, *, fraction: float,
                   relearn: TrainConfig, evaluation: EvalConfig, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune copies of an unlearned ``model`` (with ``relearn``) on a seeded ``fraction`` of the forget pairs,
    and on as many retain pairs; evaluate the forget set after each. Returns ``{"forget": Results, "retain":
    Results}`` (``method`` suffixed)."""
    rng = random.Random(seed)
    forget_items = training_items(world.forget_train)
    k = max(1, round(fraction * len(forget_items)))
    sources = {"forget": rng.sample(forget_items, k), "retain": rng.sample(training_items(world.retain_train), k)}
    evaluation = replace(evaluation, sets=("forget",))
    out = {}
    for source, items in sources.items():
        attacked = copy.deepcopy(model)
        train(attacked, processor, adapter, items, relearn, progress=progress, desc=f"relearn {source}")
        out[source] = evaluate(attacked, processor, adapter, world, evaluation, method=f"{method} +relearn({source})",
                               progress=False)
    return out


def recovery(vanilla: float, unlearned: float, attacked: float, min_gap: float = 0.05) -> float | None:
    """Share of the forgotten score that came back: (attacked − unlearned) / (vanilla − unlearned); None when
    less than ``min_gap`` (5 points) was forgotten, where the ratio would be noise over a tiny denominator."""
    gap = vanilla - unlearned
    return (attacked - unlearned) / gap if gap >= min_gap else None
