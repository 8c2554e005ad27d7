"""Models: the tiny LLaVA of the CPU world, real checkpoints by name, per-family prompts, and batch encoding.

``load_mllm("tiny", corpus=…)`` builds a LLaVA (``LlavaForConditionalGeneration``, the class that runs
LLaVA-1.5-7B) from small configs with random init, a BPE tokenizer trained here on the corpus and a
``CLIPImageProcessorPil``. Any other name loads through ``AutoModelForImageTextToText``/``AutoProcessor``.
Both come back with a :class:`PromptAdapter`, which renders the image+text and text-only prompts the way
that family expects, and :func:`encode` turns (image, question, answer) items into model batches whose
``labels`` mark the answer tokens only.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from .bench_schema import BenchImage, pil_image
from .sites import execution_device

IMAGE_TOKEN = "<image>"
IGNORE = -100


@dataclass(frozen=True)
class TinySpec:
    """Shapes of the tiny LLaVA: a Llama language model and a CLIP vision tower, both a few layers deep."""

    hidden: int = 64
    layers: int = 2
    intermediate: int = 256
    heads: int = 4
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_intermediate: int = 128
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int = 1200
    max_positions: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ prompts
@dataclass(frozen=True)
class PromptAdapter:
    """Renders a question as the prompt a family was trained on, for either rendering.

    ``family="llava"`` uses LLaVA-1.5's plain strings (as the benchmark does):
    ``USER: <image>\\n{q}\\nASSISTANT:`` (image+text) and ``USER: {q}\\nASSISTANT:`` (text-only).
    ``family="chat"`` uses the processor's chat template with one image slot.
    """

    family: str = "llava"
    processor: object = None

    def prompt(self, question: str, rendering: str) -> str:
        if rendering not in ("image_text", "text_only"):
            raise ValueError(f"unknown rendering {rendering!r}; use 'image_text' or 'text_only'")
        if self.family == "llava":
            image = f"{IMAGE_TOKEN}\n" if rendering == "image_text" else ""
            return f"USER: {image}{question}\nASSISTANT:"
        content = ([{"type": "image"}] if rendering == "image_text" else []) + [{"type": "text", "text": question}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False)

    @property
    def answer_prefix(self) -> str:
        """What separates the prompt from the answer (LLaVA-1.5 writes ``ASSISTANT: {a}``)."""
        return " " if self.family == "llava" else ""


def prompt_adapter_for(processor) -> PromptAdapter:
    """LLaVA-1.5 style when the processor has no chat template, else the chat template."""
    template = getattr(processor, "chat_template", None)
    return PromptAdapter("chat", processor) if template else PromptAdapter("llava")


# ------------------------------------------------------------------------------------------- tiny model
def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``corpus`` and wrapped for transformers (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN})


def build_tiny_processor(tokenizer, spec: TinySpec):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": spec.image_size},
                                            crop_size={"height": spec.image_size, "width": spec.image_size})
    # num_additional_image_tokens=1 counts CLIP's class token, which the "default" strategy then drops.
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN)


def build_tiny_llava(tokenizer, spec: TinySpec, seed: int = 0):
    """A randomly initialised ``LlavaForConditionalGeneration`` with the shapes of ``spec``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                       num_key_value_heads=spec.heads, max_position_embeddings=spec.max_positions,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=2,
                              image_size=spec.image_size, patch_size=spec.patch_size)
    # vision_feature_layer=-1: with two vision layers, LLaVA's default (-2) would leave the last one unused.
    config = LlavaConfig(text_config=text, vision_config=vision,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=(spec.image_size // spec.patch_size) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def build_tiny(corpus: list[str], spec: TinySpec | None = None, seed: int = 0):
    """Tokenizer trained on ``corpus``, processor and random-init tiny LLaVA: ``(model, processor, adapter)``."""
    spec = spec or TinySpec()
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    processor = build_tiny_processor(tokenizer, spec)
    return build_tiny_llava(tokenizer, spec, seed), processor, PromptAdapter("llava")


# ----------------------------------------------------------------------------------------- real models
def load_mllm(name: str, *, dtype: str | torch.dtype = "auto", load_in_4bit: bool = False, device_map=None,
              local_files_only: bool | None = None):
    """Load a transformers MLLM by hub name or path: ``(model, processor, adapter)``.

    The tiny profile's model is trained, not downloaded: use :func:`manu_lite.finetune.vanilla_model` for it.
    ``load_in_4bit`` (the ``colab`` profile) needs bitsandbytes and a CUDA GPU (or bitsandbytes >= 0.49, which
    runs NF4 on the CPU), both checked before anything is downloaded; it quantizes to NF4 with float16 compute
    (T4s have no bfloat16) and defaults ``device_map`` to ``"auto"``. 4-bit weights cannot be zeroed: MANU's
    default ``prune_mode="auto"`` then masks activations.
    ``device_map="auto"`` spreads a model over the visible GPUs (accelerate); statistics then stay on each
    layer's device (see :mod:`manu_lite.distributed`).
    """
    if name == "tiny":
        raise ValueError("the tiny model is built and trained locally: call manu_lite.finetune.vanilla_model(world) "
                         "(or use a Profile whose model is a hub name)")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    kwargs = {"local_files_only": local_files_only}
    if load_in_4bit:
        check_4bit_support()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float16)
        device_map = "auto" if device_map is None else device_map
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    try:
        processor = AutoProcessor.from_pretrained(name, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, device_map=device_map, **kwargs)
    except OSError as exc:
        raise OSError(f"could not load {name!r} ({exc}). Offline and not cached? Download it once with network "
                      "access (huggingface-cli download NAME), pass a local path, or use the tiny profile, "
                      "which needs no download") from exc
    if load_in_4bit:
        keep_cpu_4bit_differentiable(model)
    return model.eval(), processor, prompt_adapter_for(processor)


def keep_cpu_4bit_differentiable(model) -> None:
    """Stop bitsandbytes repacking ``model``'s 4-bit weights for its CPU inference kernel (no-op on a GPU).

    bitsandbytes >= 0.49, on a CPU with AVX512-BF16, converts a ``Linear4bit`` weight to a packed layout on the first
    forward in eval mode and from then on computes the layer with a kernel that autograd does not differentiate: LoRA
    gradients through it come out wrong (relative error 1.06 against the dequantized model, measured on the
    rehearsal's LLaVA) and a trainable bias raises "a view of a leaf Variable ... in-place operation". Evaluation
    before training is the normal order (compare, sweeps), so the weights keep one layout for both.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def cpu_packed_4bit_layers(model) -> list[str]:
    """Names of ``model``'s 4-bit layers already repacked for bitsandbytes' CPU inference kernel (see
    :func:`keep_cpu_4bit_differentiable`): gradients through them would be wrong."""
    return [name for name, module in model.named_modules()
            if getattr(getattr(getattr(module, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]


def check_4bit_support() -> None:
    """``RuntimeError`` unless 4-bit loading can work here: bitsandbytes installed and a CUDA GPU visible, or
    bitsandbytes >= 0.49 (its NF4 kernels run on the CPU: the CPU rehearsal, :mod:`manu_lite.rehearsal`)."""
    import importlib.metadata
    import importlib.util

    missing = []
    installed = importlib.util.find_spec("bitsandbytes") is not None
    if not installed:
        missing.append("the bitsandbytes package (pip install 'bitsandbytes>=0.46')")
    version = importlib.metadata.version("bitsandbytes").split(".") if installed else ["0", "0"]
    cpu_kernels = tuple(int(p) for p in version[:2]) >= (0, 49)
    if not torch.cuda.is_available() and not cpu_kernels:
        missing.append("a CUDA GPU (Colab: Runtime > Change runtime type > T4 GPU)")
    if missing:
        raise RuntimeError(f"load_in_4bit=True needs {' and '.join(missing)}. Without them, load in float16/bfloat16 "
                           "on a large enough GPU (profile 'full') or use the CPU profile 'tiny'. With 4-bit weights, "
                           "prune with ManuConfig(prune_mode='activation')")


# -------------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class Item:
    """One prompt to encode: a question, its rendering, the image (image+text only) and, optionally, an answer.

    ``image`` is a PIL image or a :class:`~manu_lite.bench_schema.BenchImage`, decoded when the item is encoded.

    ``prefix`` (with the images it refers to, ``prefix_images``) is text placed before the prompt: few-shot
    examples.
    """

    question: str
    rendering: str
    image: Image.Image | BenchImage | None = None
    answer: str | None = None
    prefix: str = ""
    prefix_images: tuple = ()


def tokenizer_of(processor):
    """The tokenizer of a processor (a bare tokenizer is its own)."""
    return getattr(processor, "tokenizer", processor)


def encode_item(processor, adapter: PromptAdapter, item: Item, add_eos: bool = True) -> dict[str, torch.Tensor]:
    """Encode one item without padding: model inputs of batch size 1 plus ``labels`` on the answer tokens.

    Shapes: ``input_ids``/``attention_mask``/``labels`` [1, T]; image inputs as the processor makes them.
    """
    tokenizer = tokenizer_of(processor)
    prompt = item.prefix + adapter.prompt(item.question, item.rendering)
    images = [pil_image(x) for x in list(item.prefix_images) + ([item.image] if item.rendering == "image_text" else [])]
    if item.rendering == "image_text" and item.image is None:
        raise ValueError(f"image+text item without an image: {item.question!r}")
    if IMAGE_TOKEN in prompt and tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN!r} token, so image+text prompts cannot place the image; "
                         "use the processor that ships with the checkpoint (AutoProcessor.from_pretrained(name)) "
                         "or add the token (tokenizer.add_special_tokens)")
    if images:
        encoded = processor(text=[prompt], images=images, return_tensors="pt")
    else:
        encoded = processor(text=[prompt], return_tensors="pt") if hasattr(processor, "image_processor") \
            else tokenizer([prompt], return_tensors="pt")
    encoded = {k: v for k, v in encoded.items() if isinstance(v, torch.Tensor)}
    prompt_ids = encoded["input_ids"]
    answer_ids = torch.zeros((1, 0), dtype=torch.long)
    if item.answer is not None:
        answer_ids = torch.tensor([answer_tokens(tokenizer, adapter, item.answer, add_eos)], dtype=torch.long)
    length = prompt_ids.shape[1]
    # Per-token keys (input_ids, attention_mask, mm_token_type_ids …) get the answer appended; others stay.
    for key, value in list(encoded.items()):
        if value.dim() == 2 and value.shape == (1, length):
            tail = answer_ids if key == "input_ids" else torch.full_like(answer_ids, 1 if key == "attention_mask" else 0)
            encoded[key] = torch.cat([value, tail.to(value.dtype)], dim=1)
    encoded["labels"] = torch.cat([torch.full_like(prompt_ids, IGNORE), answer_ids], dim=1)
    return encoded


def answer_tokens(tokenizer, adapter: PromptAdapter, answer: str, add_eos: bool = True) -> list[int]:
    """The token ids an answer is scored or trained on: the adapter's answer prefix and the answer (then EOS)."""
    ids = tokenizer(adapter.answer_prefix + answer, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if add_eos else ids


def collate(encoded: list[dict[str, torch.Tensor]], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad per-token keys to one length and concatenate the rest along dim 0.

    Right padding keeps positions identical to unpadded sequences (training, likelihoods); generation pads
    on the left and lets ``generate`` derive positions from the attention mask.
    """
    lengths = [e["input_ids"].shape[1] for e in encoded]
    longest = max(lengths)
    batch = {}
    for key in encoded[0]:
        per_token = all(e[key].dim() == 2 and e[key].shape[1] == n for e, n in zip(encoded, lengths))
        if not per_token:
            batch[key] = torch.cat([e[key] for e in encoded], dim=0)
            continue
        fill = pad_token_id if key == "input_ids" else IGNORE if key == "labels" else 0
        rows = []
        for e, n in zip(encoded, lengths):
            pad = torch.full((1, longest - n), fill, dtype=e[key].dtype)
            rows.append(torch.cat([e[key], pad] if padding_side == "right" else [pad, e[key]], dim=1))
        batch[key] = torch.cat(rows, dim=0)
    return batch


def encode(processor, adapter: PromptAdapter, items: list[Item], padding_side: str = "right",
           add_eos: bool = True) -> dict[str, torch.Tensor]:
    """Encode and pad a list of items of ONE rendering into a model batch (``labels`` mark answer tokens)."""
    renderings = {item.rendering for item in items}
    if len(renderings) != 1:
        raise ValueError(f"a batch mixes renderings {sorted(renderings)}; encode each rendering separately")
    encoded = [encode_item(processor, adapter, item, add_eos) for item in items]
    return collate(encoded, tokenizer_of(processor).pad_token_id, padding_side)


def model_inputs(batch: dict) -> dict:
    """The batch without ``labels``, on the model's device."""
    return {k: v for k, v in batch.items() if k != "labels"}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(model) -> torch.device:
    """Where a model's inputs go: the device of its first module with parameters — that module's execution
    device when accelerate offloaded its weights to ``meta`` (:func:`~manu_lite.hooks.execution_device`)."""
    return next((d for d in map(execution_device, model.modules()) if d is not None), torch.device("cpu"))


def iter_batches(processor, adapter: PromptAdapter, items: list[Item], batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, padding_side: str = "right", encoded: list[dict] | None = None):
    """Yield padded batches of ``items``, each batch holding one rendering.

    With ``shuffle`` the order is a seeded permutation (same seed → same batches). Items are encoded (and their
    images decoded) per batch, when the batch is due, so host memory holds one batch of inputs, not the whole
    list's. Pass ``encoded`` (a sequence with ``encoded[i]`` from :func:`encode_item` of ``items[i]``) to skip
    re-encoding across epochs.
    """
    order = list(range(len(items)))
    if shuffle:
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    groups: dict[str, list[int]] = {}
    for i in order:
        groups.setdefault(items[i].rendering, []).append(i)
    chunks = [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]
    if shuffle:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=torch.Generator().manual_seed(seed + 1))]
    pad = tokenizer_of(processor).pad_token_id
    for chunk in chunks:
        batch = [encoded[i] for i in chunk] if encoded is not None else \
            [encode_item(processor, adapter, items[i]) for i in chunk]
        yield collate(batch, pad, padding_side)


def answer_nll(model, batch: dict, per_sequence: bool = False) -> torch.Tensor:
    """Mean negative log-likelihood of the answer tokens (``labels != -100``).

    Returns a scalar (token-mean over the batch) or, with ``per_sequence``, a [B] tensor of per-sequence
    *summed* answer NLLs.
    """
    check_context(model, batch["input_ids"])
    logits = model(**model_inputs(batch)).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    token_nll = token_nll * mask
    if per_sequence:
        return token_nll.sum(dim=1)
    return token_nll.sum() / mask.sum().clamp(min=1)


def context_length(model) -> int | None:
    """The language model's context in tokens (``max_position_embeddings``), if the config states one."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def check_context(model, input_ids: torch.Tensor, new_tokens: int = 0) -> None:
    """Refuse prompts (``input_ids`` [B, T]) that, with ``new_tokens`` to generate, exceed the model's context."""
    limit = context_length(model)
    if limit is not None and input_ids.shape[1] + new_tokens > limit:
        raise ValueError(
            f"a prompt of {input_ids.shape[1]} tokens (+{new_tokens} to generate) exceeds the model's context of "
            f"{limit} tokens; shorten the questions, use fewer few-shot examples (EvalConfig.few_shot) or fewer "
            "images per prompt")
