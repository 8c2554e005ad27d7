"""MANU's statistics pass at real scale: a random-init LLaVA with LLaVA-1.5-7B's shapes, in bfloat16, on one GPU.

    python benchmarks/gpu_bench.py              # one H200/H100/A100-class GPU, well under 10 minutes
    python benchmarks/gpu_bench.py --small      # the same code on CPU with the tiny shapes (seconds)

Model (no download): ``LlavaForConditionalGeneration`` built from configs, constructed directly on the device in
the benchmark dtype — Llama text (hidden 4096, 32 layers, MLP 11008, 32 heads, vocab 32064) and CLIP ViT-L/336
(hidden 1024, 24 layers, MLP 4096, 336 px, patch 14: 576 image tokens), the shapes of LLaVA-1.5-7B
(≈ 7.1 B parameters, 13.5 GiB in bf16). ``--small`` uses the tiny LLaVA's shapes (``TinySpec``) in float32.

Batches are built by hand like a processor would: ``[bos, prompt, 576 <image> tokens, question, answer]``, no
padding, labels on the answer tokens (so statistics use recall positions, the default), random pixels.

Measured, printed as one JSON line at the end:

* ``overhead_ratio``: the median over interleaved pairs (plain forward of a batch — no KV cache, like
  ``collect_stats`` —, ``collect_stats`` on the same batch; the order alternates) of hooked time / plain time, with quartiles. Each ``collect_stats`` call pays its
  setup (totals, hook registration, a finiteness check that syncs), so this is an upper bound for long passes.
* ``throughput_*_samples_per_s``: samples per second of one plain pass and one statistics pass over all batches.
* memory: ``peak_bytes_*`` (``torch.cuda.max_memory_allocated`` over a pass of ``--batches`` batches; ``None``
  on CPU) for the plain forward, our streamed statistics, and the naive collector that stores every site's
  activations of every batch on the device in the model dtype (the released code's approach, at its most
  frugal); ``*_held_bytes`` are the bytes each collector still holds after the pass. ``naive_oom`` tells if the
  naive collector ran out of memory (it grows with every batch; ours does not).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from manu_lite.hooks import find_sites, record_neurons
from manu_lite.stats import collect_stats
from manu_lite.models import TinySpec

# LLaVA-1.5-7B: Vicuna-7B (Llama) text and CLIP ViT-L/14 at 336 px.
LLAVA_7B = TinySpec(hidden=4096, layers=32, intermediate=11008, heads=32, vision_hidden=1024, vision_layers=24,
                    vision_intermediate=4096, image_size=336, patch_size=14, vocab_size=32064, max_positions=4096)
SMALL = TinySpec()
# LLaVA-1.5 puts <image> at id 32000 of its 32064 tokens; the small vocabulary keeps the same offset from the end.
IMAGE_OFFSET = 64


def build_llava(spec: TinySpec, dtype: torch.dtype, device: torch.device, image_token_index: int | None = None):
    """A random-init ``LlavaForConditionalGeneration`` of ``spec``'s shapes, built on ``device`` in ``dtype``
    (no CPU copy of the weights is ever made: a 7B model initialises on the GPU in seconds).

    ``image_token_index``: the ``<image>`` id (default ``vocab_size - IMAGE_OFFSET``, as :func:`make_batches`
    writes it; pass a tokenizer's id to feed the model processor-encoded batches)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                       num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                       max_position_embeddings=spec.max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_intermediate,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=max(2, spec.vision_hidden // 64),
                              image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=768)
    if image_token_index is None:
        image_token_index = spec.vocab_size - IMAGE_OFFSET
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_token_index,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         image_seq_length=(spec.image_size // spec.patch_size) ** 2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def make_batches(spec: TinySpec, n: int, batch_size: int, text_len: int, answer_len: int, dtype, device, seed=0,
                 image: bool = True):
    """``n`` batches: input_ids/attention_mask/labels ``[B, T]`` with T = 1 + text_len + image tokens +
    answer_len (the image tokens after a third of the text), pixel_values ``[B, 3, image, image]``.
    ``image=False``: the text-only rendering, no image tokens and no pixel_values (T = 1 + text_len + answer_len)."""
    g = torch.Generator().manual_seed(seed)
    n_image = (spec.image_size // spec.patch_size) ** 2 if image else 0
    length = 1 + text_len + n_image + answer_len
    before = text_len // 3
    batches = []
    for _ in range(n):
        ids = torch.randint(3, spec.vocab_size - IMAGE_OFFSET, (batch_size, length), generator=g)
        ids[:, 0] = 1
        ids[:, 1 + before:1 + before + n_image] = spec.vocab_size - IMAGE_OFFSET
        labels = torch.full_like(ids, -100)
        labels[:, -answer_len:] = ids[:, -answer_len:]
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        if image:
            batch["pixel_values"] = torch.randn(batch_size, 3, spec.image_size, spec.image_size, generator=g).to(dtype)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


class Clock:
    """Wall time that waits for the device's queued work (``cuda.synchronize``) at both ends."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def interleaved_pairs(run_plain, run_hooked, items, repeats: int, clock) -> list[tuple]:
    """Time ``(run_plain(item), run_hooked(item))`` pairs: every item of ``items``, ``repeats`` times, the order
    inside a pair alternating (by repeat and item, so each item is timed in both orders). Pairing at the item
    level keeps bursts of load on a shared machine from landing on one side only. ``clock(fn)`` times one call
    (it may return a number or a tuple of them). Returns ``[(plain, hooked), ...]``."""
    pairs = []
    for repeat in range(repeats):
        for i, item in enumerate(items):
            if (repeat + i) % 2:
                hooked = clock(lambda: run_hooked(item))
                plain = clock(lambda: run_plain(item))
            else:
                plain = clock(lambda: run_plain(item))
                hooked = clock(lambda: run_hooked(item))
            pairs.append((plain, hooked))
    return pairs


def quartiles(values) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values`` (all three equal for a single value)."""
    values = list(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict, key: str):
    """Record ``torch.cuda.max_memory_allocated`` during the block in ``out[key]`` (``None`` off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
            out[key] = torch.cuda.max_memory_allocated(device)
        else:
            out[key] = None


@torch.no_grad()
def plain_pass(model, batches) -> None:
    """Forward every batch (without labels), as ``collect_stats`` does: no KV cache, nothing kept."""
    for batch in batches:
        model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)


def naive_collect(model, sites, batches, run=plain_pass) -> tuple[list[tuple[str, torch.Tensor]], bool]:
    """The store-everything collector: every site's activations of every batch, kept on their device in the
    model dtype, while ``run(model, batches)`` (default :func:`plain_pass`; e.g. ``collect_stats``, to measure both
    collectors on one forward) runs. Returns ([(site name, stored tensor), ...], whether it ran out of memory)."""
    stored: list[tuple[str, torch.Tensor]] = []
    try:
        with record_neurons(model, sites, lambda site, acts: stored.append((site.name, acts.detach().clone()))), \
                torch.no_grad():
            run(model, batches)
    except torch.OutOfMemoryError:
        return stored, True
    return stored, False


def run(args) -> dict:
    started = time.perf_counter()
    spec = SMALL if args.small else LLAVA_7B
    device = torch.device(args.device or ("cpu" if args.small else "cuda"))
    dtype = getattr(torch, args.dtype or ("float32" if args.small else "bfloat16"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: run with --small (CPU, tiny shapes) or on a GPU machine")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = build_llava(spec, dtype, device)
    built = time.perf_counter()
    sites = find_sites(model)
    batches = make_batches(spec, args.batches, args.batch_size, args.text_len, args.answer_len, dtype, device,
                           args.seed)
    clock = Clock(device)

    # Warm-up: kernels, allocator pools, the first hook registration.
    plain_pass(model, batches[:1])
    collect_stats(model, batches[:1], sites, progress=False)

    pairs = interleaved_pairs(lambda batch: plain_pass(model, [batch]),
                              lambda batch: collect_stats(model, [batch], sites, progress=False),
                              batches, args.repeats, clock)
    ratios = [hooked / plain for plain, hooked in pairs]
    plain_times, hooked_times = zip(*pairs)

    memory: dict = {}
    with peak_memory(device, memory, "peak_bytes_plain"):
        t_plain_pass = clock(lambda: plain_pass(model, batches))
    table = {}
    with peak_memory(device, memory, "peak_bytes_ours"):
        t_stats_pass = clock(lambda: table.update(collect_stats(model, batches, sites, progress=False)))
    ours_held = sum(t.nbytes for s in table.values() for t in s.tensors().values())
    with peak_memory(device, memory, "peak_bytes_naive"):
        stored, naive_oom = naive_collect(model, sites, batches)
    naive_held = sum(t.nbytes for _, t in stored)
    del stored

    samples = args.batches * args.batch_size
    q1, median, q3 = quartiles(ratios)
    result = {
        "shapes": "small" if args.small else "llava-1.5-7b",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sites": len(sites),
        "neurons": sum(s.width for s in sites),
        "batch_size": args.batch_size,
        "seq_len": batches[0]["input_ids"].shape[1],
        "batches": args.batches,
        "repeats": args.repeats,
        "overhead_ratio": round(median, 4),
        "overhead_quartiles": [round(q1, 4), round(q3, 4)],
        "plain_s_per_batch": round(statistics.median(plain_times), 5),
        "stats_s_per_batch": round(statistics.median(hooked_times), 5),
        "throughput_plain_samples_per_s": round(samples / t_plain_pass, 3),
        "throughput_stats_samples_per_s": round(samples / t_stats_pass, 3),
        **memory,
        "ours_held_bytes": ours_held,
        "naive_held_bytes": naive_held,
        "memory_ratio_naive_over_ours": round(naive_held / ours_held, 1),
        "naive_oom": naive_oom,
        "build_s": round(built - started, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU, tiny shapes: the same code in seconds")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --small)")
    parser.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --small)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (4 with --small)")
    parser.add_argument("--batches", type=int, default=None, help="batches per pass; default 8 (3 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats; default 5 (2 with --small)")
    parser.add_argument("--text-len", type=int, default=48, help="prompt + question tokens besides the image")
    parser.add_argument("--answer-len", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (--small)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    small_defaults = {"batch_size": 4, "batches": 3, "repeats": 2}
    big_defaults = {"batch_size": 8, "batches": 8, "repeats": 5}
    for key, value in (small_defaults if args.small else big_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    result = run(args)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
