"""The usual unlearning baselines on the same harness as the vanilla fine-tune: GA, GradDiff, KL and NPO.

Every method takes optimizer steps on batches of the forget people's question/answer pairs (training format,
:func:`manu_lite.finetune.training_items`) in the chosen renderings, starting from the vanilla model:

``"ga"``        Gradient Ascent: maximise the forget NLL, ``L = −NLL(forget)``.
``"graddiff"``  Gradient Difference: ``L = −NLL(forget) + w · NLL(retain)``, one forget batch and one retain batch
                per step (interleaved; the benchmark ran all forget batches, then all retain batches).
``"kl"``        KL minimisation: ``L = −NLL(forget) + w · KL(p_vanilla ‖ p_θ)`` on retain batches, the KL averaged
                over answer tokens. The benchmark's KL_Min also adds the retain NLL and sums the KL over every
                token and the vocabulary, divided by the batch size.
``"npo"``       Negative Preference Optimization (Zhang et al. 2024): with per-sequence answer log-likelihoods,
                ``L = −(2/β) · mean_s log σ(−β · log(π_θ(y_s|x_s) / π_ref(y_s|x_s)))``, β = 0.4, reference = the
                vanilla model. The benchmark's code differs on both counts (its issue #22): its reference is the
                base model LoRA-tuned on the *retain set only*, and it uses the batch-mean token NLL instead of
                per-sequence log-probabilities.

The reference model of KL and NPO is a frozen ``copy.deepcopy`` of the vanilla model for full fine-tuning (tiny
models); with ``lora=True`` it is the same network with its adapters disabled (``model.disable_adapter()``), so
no second copy of 7B weights is held.

:func:`unlearn_with` **mutates the model it is given** (and returns a report). Full fine-tuning: the caller keeps
the vanilla weights, e.g. ``copy.deepcopy(vanilla)`` before each method (tiny models). Large or quantized models:
``with lora_adapters(vanilla, r) as network: unlearn_with(method, network, ...)`` trains fresh adapters on top of
the frozen base weights, evaluates with them active, and removes them on exit (``unload`` without merging), so
the next method starts from the vanilla weights and no copy of the model is ever made.
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .bench import World
from .finetune import add_lora, training_items
from .models import IGNORE, PromptAdapter, answer_nll, encode_item, iter_batches, model_device, model_inputs, to_device

METHODS = ("ga", "graddiff", "kl", "npo")
RENDERING_CHOICES = {"image_text": ("image_text",), "text_only": ("text_only",), "both": ("image_text", "text_only")}


@dataclass(frozen=True)
class UnlearnConfig:
    """Budget and knobs shared by every baseline.

    renderings:    which forget (and retain) pairs are trained on: ``"image_text"`` (as the benchmark's scripts),
                   ``"text_only"`` or ``"both"``.
    steps:         optimizer steps (each takes one forget batch, and for graddiff/kl one retain batch too).
    lr, batch_size: AdamW learning rate (constant) and batch size; gradients clipped to ``max_grad_norm``.
    retain_weight: w of graddiff (retain NLL) and kl (retain KL); 0 turns both into GA.
    beta:          NPO's inverse temperature.
    lora:          train peft LoRA adapters of rank ``lora_r`` (large models) and merge them afterwards.
    """

    renderings: str = "image_text"
    steps: int = 10
    lr: float = 5e-4
    batch_size: int = 8
    retain_weight: float = 1.0
    beta: float = 0.4
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_r: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.renderings not in RENDERING_CHOICES:
            raise ValueError(f"unknown renderings {self.renderings!r}; choose one of {', '.join(RENDERING_CHOICES)}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 0 and >= 1")
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be > 0 (NPO tends to gradient ascent as beta -> 0)")

    def to_dict(self) -> dict:
        return asdict(self)


# -------------------------------------------------------------------------------------------------- losses
def ga_loss(model, forget: dict) -> torch.Tensor:
    """Gradient ascent: the negated token-mean answer NLL of a forget batch (scalar)."""
    return -answer_nll(model, forget)


def graddiff_loss(model, forget: dict, retain: dict, retain_weight: float = 1.0) -> torch.Tensor:
    """``−NLL(forget) + w · NLL(retain)`` (scalar); with ``w = 0`` the retain batch is not even run."""
    loss = ga_loss(model, forget)
    return loss + retain_weight * answer_nll(model, retain) if retain_weight else loss


def answer_kl(model, reference_logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean over answer tokens of KL(p_ref ‖ p_θ) of the next-token distributions (scalar).

    ``reference_logits``: [B, T, V] logits of the frozen reference on ``batch`` (the same shifts as
    :func:`manu_lite.models.answer_nll`: position t predicts token t+1, counted where ``labels[t+1] != -100``).
    """
    logits = model(**model_inputs(batch)).logits[:, :-1].float()
    mask = batch["labels"][:, 1:] != IGNORE                                      # [B, T-1]
    ref = F.log_softmax(reference_logits[:, :-1].float(), dim=-1)
    cur = F.log_softmax(logits, dim=-1)
    per_token = (ref.exp() * (ref - cur)).sum(-1)                                # [B, T-1]
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def kl_loss(model, forget: dict, retain: dict, reference_logits: torch.Tensor, retain_weight: float = 1.0):
    """``−NLL(forget) + w · KL(p_ref ‖ p_θ)`` on the retain batch (scalar)."""
    loss = ga_loss(model, forget)
    return loss + retain_weight * answer_kl(model, reference_logits, retain) if retain_weight else loss


def npo_loss(model, forget: dict, reference_nll: torch.Tensor, beta: float = 0.4) -> torch.Tensor:
    """NPO on per-sequence answer log-likelihoods (scalar).

    ``reference_nll``: [B] summed answer NLL of each forget sequence under the reference. With
    ``x_s = NLL_θ(s) − NLL_ref(s) = −log(π_θ/π_ref)``, the loss is ``−(2/β) mean_s log σ(β x_s)``; its gradient is
    ``−(2/B) Σ_s σ(−β x_s) ∇NLL_θ(s)``, gradient ascent with per-sequence weights that fade once a sequence is
    forgotten; as β → 0 every weight → 1 and the direction is GA's.
    """
    x = answer_nll(model, forget, per_sequence=True) - reference_nll
    return -(2.0 / beta) * F.logsigmoid(beta * x).mean()


# --------------------------------------------------------------------------------------------- reference
class FrozenReference:
    """The vanilla model that KL and NPO compare against, queried without gradients.

    Full fine-tuning: a frozen deep copy taken before training. LoRA (``model`` is a peft model): the model
    itself with its adapters disabled, so no second copy of the weights is held.
    """

    def __init__(self, model, lora: bool):
        self.model = model
        self.copy = None if lora else copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _network(self):
        if self.copy is not None:
            yield self.copy
        else:
            with self.model.disable_adapter():
                yield self.model

    @torch.no_grad()
    def logits(self, batch: dict) -> torch.Tensor:
        """[B, T, V] reference logits of ``batch``."""
        with self._network() as network:
            return network(**model_inputs(batch)).logits

    @torch.no_grad()
    def sequence_nll(self, batch: dict) -> torch.Tensor:
        """[B] summed answer NLL of each sequence under the reference."""
        with self._network() as network:
            return answer_nll(network, batch, per_sequence=True)


# ------------------------------------------------------------------------------------------------ training
def is_peft(model) -> bool:
    """Whether ``model`` is a peft model (its adapters can be disabled and unloaded)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "unload")


@contextlib.contextmanager
def lora_adapters(model, r: int = 16, seed: int = 0):
    """``model`` wrapped in fresh rank-``r`` LoRA adapters (seeded), removed on exit without merging.

    The base weights are frozen and never written (4-bit weights could not be merged back exactly anyway): after
    the block ``model`` computes exactly what it computed before, so one loaded model serves every method in turn.
    Yields the peft model; pass it to :func:`unlearn_with` (which then trains it and leaves the adapters active).
    """
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    torch.manual_seed(seed)
    network = add_lora(model, r)  # freezes the base weights
    try:
        yield network
    finally:
        network.unload()  # puts the original modules back into ``model``
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, p.requires_grad))


class _LazyEncoding:
    """``encoded[i]`` for :func:`iter_batches`, encoding item i on first use: a run encodes only what it trains on
    (a few batches of a large retain set), and the batch sequence does not depend on the step budget.

    Encodings are kept for later epochs up to ``max_bytes`` of tensors (least recently used dropped first, and
    encoded again when due), so a long run over a large set at 336 px (1.4 MB of ``pixel_values`` per image item)
    holds a bounded amount of host memory, not the whole set's. Encoding is deterministic: what is dropped and
    encoded again is identical."""

    def __init__(self, processor, adapter: PromptAdapter, items, max_bytes: int = 256 * 2**20):
        self.processor, self.adapter, self.items, self.max_bytes = processor, adapter, items, max_bytes
        self.cache: OrderedDict[int, dict] = OrderedDict()
        self.held = 0

    def __getitem__(self, i: int) -> dict:
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        encoded = encode_item(self.processor, self.adapter, self.items[i])
        size = _nbytes(encoded)
        while self.cache and self.held + size > self.max_bytes:
            _, dropped = self.cache.popitem(last=False)
            self.held -= _nbytes(dropped)
        if size <= self.max_bytes:
            self.cache[i] = encoded
            self.held += size
        return encoded


def _nbytes(encoded: dict) -> int:
    return sum(v.numel() * v.element_size() for v in encoded.values() if isinstance(v, torch.Tensor))


def _batches(processor, adapter: PromptAdapter, items, batch_size: int, seed: int):
    """An endless stream of padded batches: seeded reshuffles of ``items``, one epoch after another."""
    if not items:
        raise ValueError("no items to unlearn on: the world has no question/answer pairs in these renderings")
    encoded = _LazyEncoding(processor, adapter, items)
    epoch = 0
    while True:
        yield from iter_batches(processor, adapter, items, batch_size, shuffle=True, seed=seed * 1000 + epoch,
                                encoded=encoded)
        epoch += 1


def unlearn_with(method: str, model, processor, adapter: PromptAdapter, world: World,
                 config: UnlearnConfig | None = None, progress: bool = True,
                 on_step: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Unlearn ``world``'s forget people from ``model`` **in place** with one baseline; returns a report.

    The forget data are the forget people's training pairs in ``config.renderings``; graddiff and kl also draw
    retain batches from the retain people's pairs. Seeded: the same inputs give the same weights.
    ``on_step(step, network)`` runs after every optimizer step (1-based; the network in eval mode, with its
    LoRA adapters active). The learning rate is constant and the batch sequence fixed, so the state after k
    steps of a long run is the state a k-step run ends in: one run with ``on_step`` serves a sweep over steps.
    The report holds the method, the config, the per-step losses, the item counts and the wall time.

    ``config.lora`` with a plain model: adapters are added, trained and merged into its weights (the model is
    changed). With a peft model (:func:`lora_adapters`) its adapters are trained and stay active, unmerged.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    config = config or UnlearnConfig()
    renderings = RENDERING_CHOICES[config.renderings]
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    given_adapters = is_peft(model)
    network = add_lora(model, config.lora_r) if config.lora and not given_adapters else model
    reference = FrozenReference(network, config.lora or given_adapters) if method in ("kl", "npo") else None
    device = model_device(network)
    forget_items = training_items(world.forget_train, renderings)
    retain_items = training_items(world.retain_train, renderings) if method in ("graddiff", "kl") else []
    forget_batches = _batches(processor, adapter, forget_items, config.batch_size, config.seed)
    retain_batches = _batches(processor, adapter, retain_items, config.batch_size, config.seed + 1) \
        if retain_items else None
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    network.train()
    losses = []
    for step in tqdm(range(1, config.steps + 1), desc=f"unlearn {method}", disable=not progress):
        forget = to_device(next(forget_batches), device)
        retain = to_device(next(retain_batches), device) if retain_batches is not None else None
        if method == "ga":
            loss = ga_loss(network, forget)
        elif method == "graddiff":
            loss = graddiff_loss(network, forget, retain, config.retain_weight)
        elif method == "kl":
            loss = kl_loss(network, forget, retain, reference.logits(retain), config.retain_weight)
        else:
            loss = npo_loss(network, forget, reference.sequence_nll(forget), config.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            network.eval()
            on_step(step, network)
            network.train()
    network.eval()
    if config.lora and not given_adapters:
        network.merge_and_unload()  # folds the adapters into ``model``'s own weights
    del reference
    return {"method": method, "config": config.to_dict(), "losses": losses, "forget_items": len(forget_items),
            "retain_items": len(retain_items), "seconds": time.perf_counter() - started}

