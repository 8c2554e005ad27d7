"""The vanilla model: memorization fine-tuning with the loss on answer tokens only.

The benchmark's vanilla model is an MLLM fine-tuned on every fictitious profile; unlearning methods then start
from it. Here the tiny profile trains its LLaVA from scratch (or, with ``TrainConfig.pretrain``, from the
pretrained base of :mod:`manu_lite.pretrain`) on the synthetic world (fictitious people from ``ft_Data`` and the
"celebrities", which stand in for pre-training knowledge) in both renderings. Large models
train LoRA adapters (peft) and merge them. Trained tiny models are cached under a hash of their configuration
and data, so that notebooks and tests never train the same model twice; each entry records the sha256 of its
files and is checked on load.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .artifacts import CorruptArtifactError, file_hash
from .bench import World, qa_pairs
from .models import (Item, PromptAdapter, TinySpec, answer_nll, build_tiny, build_tiny_llava, build_tiny_processor,
                     cpu_packed_4bit_layers, encode_item, iter_batches, model_device, to_device, train_tokenizer)
from .pretrain import BenchmarkPrompts, PretrainConfig, format_items, items_fingerprint, population



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
    # Start from the pretrained base of :mod:`manu_lite.pretrain` (formats learned on a separate population) instead
    # of a random init; ``None`` (default) trains from scratch. The tokenizer is then the base's.
    pretrain: PretrainConfig | None = None
    # Batches of similar length: the items are split into this many groups by token count (1: no split, batches as
    # iter_batches makes them). Few-shot prompts are ~10x longer than bare pairs; mixed batches pad them all.
    length_buckets: int = 1
    # With ``pretrain``: this many of the base's format items (its own population, a seeded draw) are mixed in per
    # world item, so the fine-tune does not erase the formats (0: the world's question → answer pairs only, as the
    # benchmark fine-tunes on ft_Data). The project's own variant, measured in book/benchmark_protocol.md.
    replay: float = 0.0

    def __post_init__(self):
        if self.replay < 0 or (self.replay and self.pretrain is None):
            raise ValueError(f"replay={self.replay} needs a pretrained base to replay from and must be >= 0: set "
                             "TrainConfig(pretrain=PretrainConfig(), replay=1.0), or replay=0.0")

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


def fine_tune_items(records, config: TrainConfig) -> tuple[list[Item], PromptAdapter]:
    """The items a tiny model is fine-tuned on and the adapter that encodes them: ``(items, adapter)``.

    Without ``config.replay``: :func:`training_items` of ``records`` under LLaVA's plain prompt. With it, the same
    pairs as full prompts (:class:`~manu_lite.pretrain.BenchmarkPrompts`) plus ``round(replay * len(pairs))`` of the
    base's format items drawn without replacement with ``random.Random(config.seed)``.
    """
    llava = PromptAdapter("llava")
    items = training_items(records, config.renderings)
    if not config.replay:
        return items, llava
    pretrain = config.pretrain
    full, facts = population(pretrain)
    formats = format_items(full, facts, pretrain.tasks, pretrain.train_seed)
    count = round(config.replay * len(items))
    if count > len(formats):
        raise ValueError(f"replay={config.replay} asks for {count} format items but the pretraining population "
                         f"({pretrain.people} people) has {len(formats)}: lower TrainConfig.replay or raise "
                         "PretrainConfig.people")
    pairs = [Item(llava.prompt(i.question, i.rendering), i.rendering, i.image, llava.answer_prefix + i.answer)
             for i in items]
    return pairs + random.Random(config.seed).sample(formats, count), BenchmarkPrompts()


def add_lora(model, r: int):
    """``model`` wrapped in a rank-``r`` LoRA adapter (peft) on its language-model linear layers."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ImportError("LoRA fine-tuning needs peft: pip install 'manu-lite[gpu]'") from exc
    packed = cpu_packed_4bit_layers(model)
    if packed:
        raise ValueError(f"{len(packed)} 4-bit layers ({', '.join(packed[:3])}, ...) were repacked by bitsandbytes for "
                         "CPU inference, where gradients through them are wrong: load the model with "
                         "manu_lite.models.load_mllm, or call keep_cpu_4bit_differentiable(model) before its first "
                         "forward")
    # LoRA on the language model's linear layers only, as the benchmark's fine-tune does.
    targets = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
               and "lm_head" not in name and "vision" not in name and "projector" not in name]
    with warnings.catch_warnings():
        # peft reads transformers 5's deprecated `is_gradient_checkpointing`: their warning, nothing the user can fix.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
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
    steps_per_epoch = sum(1 for _ in epoch_batches(processor, adapter, items, encoded, config, 0))
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
            for batch in epoch_batches(processor, adapter, items, encoded, config, epoch):
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


def epoch_batches(processor, adapter: PromptAdapter, items: list[Item], encoded: list[dict], config: TrainConfig,
                  epoch: int):
    """The shuffled training batches of one epoch (seeded by ``config.seed`` and ``epoch``).

    With ``config.length_buckets > 1`` the items are sorted by token count and cut into that many groups of equal
    size; each group is batched and shuffled on its own and the batches of all groups are shuffled together, so
    a batch pads to the length of similar items only. ``encoded``: :func:`encode_item` of each item.
    """
    seed = config.seed * 1000 + epoch
    if config.length_buckets <= 1:
        yield from iter_batches(processor, adapter, items, config.batch_size, shuffle=True, seed=seed, encoded=encoded)
        return
    order = sorted(range(len(items)), key=lambda i: encoded[i]["input_ids"].shape[1])
    size = math.ceil(len(order) / config.length_buckets)
    batches = []
    for k in range(0, len(order), size):
        group = order[k:k + size]
        batches += list(iter_batches(processor, adapter, [items[i] for i in group], config.batch_size, shuffle=True,
                                     seed=seed + 7919 * (k + 1), encoded=[encoded[i] for i in group]))
    for i in torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + 1)).tolist():
        yield batches[i]


# ------------------------------------------------------------------------------------------ tiny vanilla
def cache_dir() -> Path:
    """Where trained tiny models live: ``$MANU_LITE_CACHE`` or ``~/.cache/manu_lite``."""
    return Path(os.environ.get("MANU_LITE_CACHE", Path.home() / ".cache" / "manu_lite"))


def world_fingerprint(world: World) -> str:
    """A hash of everything the vanilla model learns from: texts and image pixels of every trained record.

    The records are hashed in :func:`vanilla_records` order (people by ID, then celebrities), so the hash does not
    depend on which people are the forget split: every forget split of one bench shares one vanilla model (the
    retain model's cache key adds the forget people's IDs).
    """
    digest = hashlib.sha256()
    for record in vanilla_records(world):
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

    Returns ``(model, processor, adapter)``. The cache key hashes ``spec``, ``config`` and the world's data
    (:func:`model_cache_path`: the same entry for every forget split). With ``config.pretrain`` it is fine-tuned
    from :func:`pretrained_base` (the base's tokenizer and weights) instead of a random init.
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
    for token; with ``config.pretrain`` the same pretrained base as the vanilla's), same seed, and the same number of optimizer steps: the epochs are scaled up by the share of
    training pairs the forget people held. Cached like the vanilla model (the key adds the forget split).
    Returns ``(model, processor, adapter)``.
    """
    return _tiny_model(world, spec, config, progress, use_cache, retain=True)


def _steps(processor, adapter, items, config: TrainConfig) -> int:
    encoded = [encode_item(processor, adapter, item) for item in items]
    return config.epochs * sum(1 for _ in epoch_batches(processor, adapter, items, encoded, config, 0))


def model_cache_path(world: World, spec: TinySpec | None = None, config: TrainConfig | None = None,
                     retain: bool = False) -> Path:
    """The cache entry of the tiny vanilla (or, with ``retain``, the retain) model of ``world``.

    The key hashes ``spec``, ``config`` and :func:`world_fingerprint`, which every forget split of one bench
    shares: the vanilla model is one entry per bench. The retain model's key adds the forget people's IDs.
    """
    spec, config = spec or TinySpec(), config or TrainConfig()
    fields = {"spec": spec.to_dict(), "train": config.to_dict(), "data": world_fingerprint(world), "format": 1}
    if retain:
        fields["retain_without"] = sorted(r.id for r in world.forget_train)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    return cache_dir() / f"tiny-llava-{'retain-' if retain else ''}{key.hexdigest()[:16]}"


def _tiny_model(world: World, spec, config, progress: bool, use_cache: bool, retain: bool):
    from dataclasses import replace

    spec, config = spec or TinySpec(), config or TrainConfig()
    path = model_cache_path(world, spec, config, retain)
    adapter = PromptAdapter("llava")
    if use_cache and (path / DONE).exists():
        model, processor = load_cached(path)
        return model, processor, adapter
    records = vanilla_records(world)
    if config.pretrain is not None:
        model, processor = pretrained_base(spec, config.pretrain, progress=progress, use_cache=use_cache)
    else:
        model, processor, adapter = build_tiny(tokenizer_corpus(records, adapter), spec, seed=config.seed)
    items, encoding = fine_tune_items(records, config)
    if retain:
        target = _steps(processor, encoding, items, config)
        items, encoding = fine_tune_items(retain_records(world), config)
        per_epoch = _steps(processor, encoding, items, replace(config, epochs=1))
        config = replace(config, epochs=max(1, round(target / per_epoch)))
    losses = train(model, processor, encoding, items, config, progress,
                   desc="retain model (no forget people)" if retain else "memorize the world")
    save_cached(path, model, processor, {"final_loss": losses[-1], "steps": len(losses), "epochs": config.epochs})
    return model, processor, adapter


# ------------------------------------------------------------------------------------------ the pretrained base
def pretrained_base(spec: TinySpec | None = None, config: PretrainConfig | None = None, progress: bool = True,
                    use_cache: bool = True):
    """The tiny LLaVA after the pretraining stage: ``(model, processor)``, trained once, then loaded from the cache.

    The cache entry ``tiny-base-<key>`` (key: ``spec``, ``config`` and the items' fingerprint) is written and
    hash-checked like the vanilla's (:func:`save_cached`); the data comes from :mod:`manu_lite.pretrain`.
    ``spec.max_positions`` must hold the benchmark's few-shot prompts (>= 1024 tokens; longer prompts raise).
    """
    spec, config = spec or TinySpec(), config or PretrainConfig()
    full, facts = population(config)
    items = format_items(full, facts, config.tasks, config.train_seed)
    fields = {"spec": spec.to_dict(), "pretrain": config.to_dict(), "data": items_fingerprint(items), "format": 1}
    path = cache_dir() / f"tiny-base-{hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]}"
    if use_cache and (path / DONE).exists():
        return load_cached(path)
    adapter = BenchmarkPrompts()
    tokenizer = train_tokenizer([item.prefix + item.question + item.answer for item in items], spec.vocab_size)
    processor = build_tiny_processor(tokenizer, spec)
    model = build_tiny_llava(tokenizer, spec, seed=config.train_seed)
    losses = train(model, processor, adapter, items,
                   TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                               warmup_steps=config.warmup_steps, length_buckets=config.length_buckets,
                               seed=config.train_seed),
                   progress, desc="pretrain the base (formats)")
    save_cached(path, model, processor, {"final_loss": losses[-1], "steps": len(losses), "items": len(items)})
    return model, processor


# ------------------------------------------------------------------------------------------ the model cache
DONE = "manu_lite_done.json"


def save_cached(path: Path, model, processor, info: dict) -> Path:
    """Write a trained tiny model and its processor as the cache entry ``path``, atomically.

    The entry is written into a temporary directory and renamed into place, so it is complete or absent.
    ``manu_lite_done.json`` holds ``info`` plus the sha256 of every file written (``"sha256"``: name → hex),
    which :func:`load_cached` checks before it loads anything.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the renamed cache entry should read like a normal mkdir
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        hashes = {f.name: file_hash(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / DONE).write_text(json.dumps({**info, "sha256": hashes}))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_cached(path: Path):
    """The ``(model, processor)`` of the cache entry ``path`` after checking every file's recorded sha256.

    Raises :class:`~manu_lite.artifacts.CorruptArtifactError` naming the entry and the fix when a file is missing
    or changed since it was written, or when the entry records no hashes (a cached model is never used unchecked).
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    recorded = json.loads((path / DONE).read_text()).get("sha256") or {"(no recorded hashes)": None}
    bad = sorted(name for name, digest in recorded.items()
                 if not (path / name).is_file() or file_hash(path / name) != digest)
    if bad:
        raise CorruptArtifactError(f"the cached model {path} is corrupt: hash mismatch in {', '.join(bad)} (changed or "
                                   f"missing since it was written); delete the directory {path} and rerun to retrain it")
    return LlavaForConditionalGeneration.from_pretrained(path).eval(), LlavaProcessor.from_pretrained(path)
