"""Scoring answers by log-likelihood: each option of a multiple-choice question as the answer to its prompt.

:func:`option_logprobs` is what the likelihood protocols of :mod:`manu_lite.evaluate` call. The options of one
question share their prompt (and image), so where the model type allows it (:data:`SHARED_PROMPT_MODELS`) the
prompt is run once and every option continues its key/value cache (:func:`prompt_continuations`): for four options
the image tower and the prompt (LLaVA-1.5: 576 image tokens) are computed once instead of four times. Other model
types are scored by full forward passes, ``batch_size`` items at a time.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .models import (Item, PromptAdapter, answer_nll, answer_tokens, check_context, collate, encode_item, model_device,
                     model_inputs, to_device, tokenizer_of)


def batches_by_rendering(items: list[Item], batch_size: int):
    """Index lists of at most ``batch_size`` items, each of one rendering (image inputs cannot be mixed)."""
    order = sorted(range(len(items)), key=lambda i: items[i].rendering)
    for k in range(0, len(order), batch_size):
        by_rendering: dict[str, list[int]] = {}
        for i in order[k:k + batch_size]:
            by_rendering.setdefault(items[i].rendering, []).append(i)
        yield from by_rendering.values()


# Model types whose answers continue a prompt's key/value cache exactly as a full forward pass scores them
# (tests/test_architectures.py checks every family): Qwen2-VL's multimodal rotary positions and PaliGemma's
# bidirectional prefix do not, so those (and unknown types) are scored by full forward passes.
SHARED_PROMPT_MODELS = frozenset({"llava", "llava_next", "idefics2", "idefics3", "smolvlm"})


def prompt_continuations(model, prompt: dict, answers: list[list[int]]) -> torch.Tensor:
    """Summed log-probability [n] of each of ``answers`` (token ids) after ``prompt`` (model inputs of batch 1,
    unpadded, on the model's device): one forward pass over the prompt, whose key/value cache every answer
    continues (for the options of one question: the image and the prompt are encoded once, not once per option)."""
    length, device = prompt["input_ids"].shape[1], prompt["input_ids"].device
    n, longest = len(answers), max(map(len, answers), default=0)
    if not longest:
        return torch.zeros(n, device=device)
    check_context(model, torch.zeros(1, length + longest))  # prompt and answer are scored, not generated
    ids = torch.zeros(n, longest, dtype=torch.long)  # right padding, masked out of the sums
    mask = torch.zeros(n, longest, dtype=torch.long)
    for i, answer in enumerate(answers):
        ids[i, :len(answer)], mask[i, :len(answer)] = torch.tensor(answer, dtype=torch.long), 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(**prompt, use_cache=True)
    scores = torch.log_softmax(out.logits[0, -1].float(), dim=-1)[ids[:, 0]] * mask[:, 0]
    if longest > 1:
        cache_key = "cache" if hasattr(out, "cache") else "past_key_values"  # transformers 5 renamed it
        cache = getattr(out, cache_key)
        cache.batch_repeat_interleave(n)
        # Per-token inputs besides ids and mask (token types) get zeros for the answer, as encode_item appends.
        extra = {k: torch.zeros(n, longest, dtype=v.dtype, device=device) for k, v in prompt.items()
                 if k not in ("input_ids", "attention_mask") and v.dim() == 2 and v.shape == (1, length)}
        logits = model(input_ids=ids, attention_mask=torch.cat([prompt["attention_mask"].expand(n, -1), mask], 1),
                       **{cache_key: cache}, use_cache=False,
                       cache_position=torch.arange(length, length + longest, device=device), **extra).logits
        token_logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        scores = scores + (token_logprobs * mask[:, 1:]).sum(dim=1)
    return scores


def _same_prompt_runs(items: list[Item]):
    """Index lists of consecutive items that differ only in their answer (the same image objects)."""
    run: list[int] = []
    for i, item in enumerate(items):
        if run and not _same_prompt(items[run[0]], item):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _same_prompt(a: Item, b: Item) -> bool:
    return ((a.question, a.rendering, a.prefix) == (b.question, b.rendering, b.prefix) and a.image is b.image
            and len(a.prefix_images) == len(b.prefix_images)
            and all(x is y for x, y in zip(a.prefix_images, b.prefix_images)))


@torch.no_grad()
def option_logprobs(model, processor, adapter: PromptAdapter, items: list[Item], batch_size: int) -> list[float]:
    """Summed log-probability of each item's ``answer`` given its prompt (no EOS), in input order.

    On :data:`SHARED_PROMPT_MODELS`, consecutive items with one prompt share a pass over it
    (:func:`prompt_continuations`); other models score ``batch_size`` items per full forward pass.
    """
    device = model_device(model)
    tokenizer = tokenizer_of(processor)
    scores: list[float] = [0.0] * len(items)
    if getattr(model.config, "model_type", None) in SHARED_PROMPT_MODELS:
        for indices in _same_prompt_runs(items):
            prompt = model_inputs(encode_item(processor, adapter, replace(items[indices[0]], answer=None)))
            answers = [answer_tokens(tokenizer, adapter, items[i].answer, add_eos=False) for i in indices]
            for i, score in zip(indices, prompt_continuations(model, to_device(prompt, device), answers).tolist()):
                scores[i] = score
        return scores
    for indices in batches_by_rendering(items, batch_size):
        batch = collate([encode_item(processor, adapter, items[i], add_eos=False) for i in indices],
                        tokenizer.pad_token_id)
        for i, nll in zip(indices, answer_nll(model, to_device(batch, device), per_sequence=True).tolist()):
            scores[i] = -nll
    return scores
