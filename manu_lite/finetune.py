"""The vanilla model: memorization fine-tuning with the loss on answer tokens only.

The benchmark's vanilla model is an MLLM fine-tuned on every fictitious profile; unlearning methods then start
from it. Here the tiny profile trains its LLaVA from scratch on the synthetic world (fictitious people from
``ft_Data`` and the "celebrities", which stand in for pre-training knowledge) in both renderings. Large models
train LoRA adapters (peft) and merge them. Trained tiny models are cached under a hash of their configuration
and data, so that notebooks and tests never train the same model twice.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .bench import World, qa_pairs
from .models import (Item, PromptAdapter, TinySpec, answer_nll, build_tiny, encode_item, iter_batches,
                     model_device, to_device)


@dataclass(frozen=True)
class TrainConfig:
    """Memorization fine-tune settings. ``lora=True`` trains peft LoRA adapters (large models) and merges them."""

    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    warmup_steps: int = 20
    seed: int = 0
    lora: bool = False
    lora_r: int = 16
    renderings: tuple[str, ...] = ("image_text", "text_only")

    def to_dict(self) -> dict:
        return asdict(self)


def training_items(records, renderings=("image_text", "text_only")) -> list[Item]:
    """Every question/answer pair of ``records`` in each rendering, as encodable items."""
    items = []
    for record in records:
        for rendering in renderings:
            image = record.image if rendering == "image_text" else None
            items += [Item(qa.question, rendering, image, qa.answer) for qa in qa_pairs(record, rendering)]
    return items


def add_lora(model, r: int):
    """``model`` wrapped in a rank-``r`` LoRA adapter (peft) on its language-model linear layers."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError("LoRA fine-tuning needs peft: pip install 'manu-lite[gpu]'") from exc
    # LoRA on the language model's linear layers only, as the benchmark's fine-tune does.
    targets = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
               and "lm_head" not in name and "vision" not in name and "projector" not in name]
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=r, lora_dropout=0.05, target_modules=targets,
                                            init_lora_weights="gaussian"))


def train(model, processor, adapter: PromptAdapter, items: list[Item], config: TrainConfig, progress: bool = True,
          desc: str = "fine-tune") -> list[float]:
    """Minimise the answer-token NLL on ``items``; returns the loss of every step. Seeded and deterministic."""
    if not items:
        raise ValueError("no training items: the data holds no question/answer pairs for these renderings; check the "
                         "split (training format, qa_pairs) and TrainConfig.renderings")
    torch.manual_seed(config.seed)
    if config.lora:
        model = add_lora(model, config.lora_r)
    device = model_device(model)
    encoded = [encode_item(processor, adapter, item) for item in items]
    steps_per_epoch = sum(1 for _ in iter_batches(processor, adapter, items, config.batch_size, encoded=encoded))
    total = steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    model.train()
    losses = []
    with tqdm(total=total, desc=desc, disable=not progress) as bar:
        for epoch in range(config.epochs):
            for batch in iter_batches(processor, adapter, items, config.batch_size, shuffle=True,
                                      seed=config.seed * 1000 + epoch, encoded=encoded):
                loss = answer_nll(model, to_device(batch, device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    if config.lora:
        model.merge_and_unload()
    return losses


# ------------------------------------------------------------------------------------------ tiny vanilla
def cache_dir() -> Path:
    """Where trained tiny models live: ``$MANU_LITE_CACHE`` or ``~/.cache/manu_lite``."""
    return Path(os.environ.get("MANU_LITE_CACHE", Path.home() / ".cache" / "manu_lite"))


def world_fingerprint(world: World) -> str:
    """A hash of everything the vanilla model learns from: texts and image pixels of every trained record."""
    digest = hashlib.sha256()
    for record in world.forget_train + world.retain_train + world.celebrity:
        digest.update(record.id.encode())
        for rendering in ("image_text", "text_only"):
            for qa in qa_pairs(record, rendering):
                digest.update(f"{rendering}|{qa.question}|{qa.answer}".encode())
        digest.update(record.image.tobytes())
    return digest.hexdigest()


def vanilla_records(world: World) -> list:
    """The records the vanilla model memorizes: every fictitious person (ft_Data) and every celebrity."""
    return sorted(world.forget_train + world.retain_train, key=lambda r: r.id) + list(world.celebrity)


def tokenizer_corpus(records, adapter: PromptAdapter) -> list[str]:
    """Rendered prompts and answers, so that the tokenizer learns the template's words as well as the facts."""
    return [adapter.prompt(item.question, item.rendering) + adapter.answer_prefix + item.answer
            for item in training_items(records)]


def vanilla_model(world: World, spec: TinySpec | None = None, config: TrainConfig | None = None,
                  progress: bool = True, use_cache: bool = True):
    """The tiny vanilla LLaVA for ``world``: trained once, then loaded from the cache.

    Returns ``(model, processor, adapter)``. The cache key hashes ``spec``, ``config`` and the world's data.
    """
    return _tiny_model(world, spec, config, progress, use_cache, retain=False)


def retain_records(world: World) -> list:
    """The records the retain model memorizes: the vanilla's records without the forget people."""
    forget = {r.id for r in world.forget_train}
    return [r for r in vanilla_records(world) if r.id not in forget]


def retain_model(world: World, spec: TinySpec | None = None, config: TrainConfig | None = None,
                 progress: bool = True, use_cache: bool = True):
    """The gold standard of unlearning: the tiny vanilla recipe on ``world`` without its forget people.

    Same base (``spec``, the tokenizer built on the *vanilla's* corpus, so that losses of both models compare token
    for token), same seed, and the same number of optimizer steps: the epochs are scaled up by the share of
    training pairs the forget people held. Cached like the vanilla model (the key adds the forget split).
    Returns ``(model, processor, adapter)``.
    """
    return _tiny_model(world, spec, config, progress, use_cache, retain=True)


def _steps(processor, adapter, items, config: TrainConfig) -> int:
    return config.epochs * sum(1 for _ in iter_batches(processor, adapter, items, config.batch_size))


def _tiny_model(world: World, spec, config, progress: bool, use_cache: bool, retain: bool):
    from dataclasses import replace

    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    spec, config = spec or TinySpec(), config or TrainConfig()
    fields = {"spec": spec.to_dict(), "train": config.to_dict(), "data": world_fingerprint(world), "format": 1}
    if retain:
        fields["retain_without"] = sorted(r.id for r in world.forget_train)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    path = cache_dir() / f"tiny-llava-{'retain-' if retain else ''}{key.hexdigest()[:16]}"
    adapter = PromptAdapter("llava")
    if use_cache and (path / "manu_lite_done.json").exists():
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        return model, LlavaProcessor.from_pretrained(path), adapter
    records = vanilla_records(world)
    model, processor, adapter = build_tiny(tokenizer_corpus(records, adapter), spec, seed=config.seed)
    items = training_items(records, config.renderings)
    if retain:
        target = _steps(processor, adapter, items, config)
        items = training_items(retain_records(world), config.renderings)
        per_epoch = _steps(processor, adapter, items, replace(config, epochs=1))
        config = replace(config, epochs=max(1, round(target / per_epoch)))
    losses = train(model, processor, adapter, items, config, progress,
                   desc="retain model (no forget people)" if retain else "memorize the world")
    # Write into a temporary directory and rename it into place: a cache entry is complete or absent.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the renamed cache entry should read like a normal mkdir
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "manu_lite_done.json").write_text(json.dumps({"final_loss": losses[-1], "steps": len(losses),
                                                                 "epochs": config.epochs}))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, processor, adapter
