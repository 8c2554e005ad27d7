"""Likelihood multiple choice: one pass over each question's prompt for its four options, against one full forward
pass per option (the path before, still taken by model types outside ``likelihood.SHARED_PROMPT_MODELS``).

The model is :func:`manu_lite.rehearsal.llava_rehearsal` (LLaVA-1.5-7B's configuration cut down, its 336-px CLIP
processor: 576 image tokens per image), in float32 or, with ``--4bit``, in bitsandbytes NF4 as the colab profile
loads it. The questions are the multiple-choice questions of a synthetic MLLMU-Bench's forget people (512-px
portraits; random weights, so the scores mean nothing: both paths score the same items). Rounds alternate the
two paths so that a noisy machine slows both alike; the table gives the median seconds per path, their ratio, the
largest score difference and whether the predicted letters agree.

    python benchmarks/bench_likelihood.py --questions 8 --rounds 3 --4bit
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from manu_lite import likelihood
from manu_lite.bench import load_world
from manu_lite.models import Item, PromptAdapter, load_mllm
from manu_lite.rehearsal import bench_corpus, llava_rehearsal
from manu_lite.synthetic import make_synthetic_bench

def items_of(world, rendering: str, questions: int) -> list[Item]:
    """Each option of the forget people's first ``questions`` MC questions, as the likelihood protocol scores them."""
    out = []
    for record in world.forget:
        for question in record.mc.get(rendering, []):
            image = record.image if rendering == "image_text" else None
            out += [Item(question.question, rendering, image, text) for text in question.options.values()]
    return out[:4 * questions]


def timed(model, processor, adapter, items, batch_size, shared: bool) -> tuple[float, list[float]]:
    saved = likelihood.SHARED_PROMPT_MODELS
    likelihood.SHARED_PROMPT_MODELS = saved if shared else frozenset()
    try:
        start = time.perf_counter()
        scores = likelihood.option_logprobs(model, processor, adapter, items, batch_size)
        return time.perf_counter() - start, scores
    finally:
        likelihood.SHARED_PROMPT_MODELS = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8, help="questions per rendering (four options each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="the full path's batch (the colab profile's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--4bit", dest="four_bit", action="store_true", help="bitsandbytes NF4 on the CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        compare_paths(args, folder)


def compare_paths(args, folder: str) -> None:
    bench = make_synthetic_bench(f"{folder}/bench", n_profiles=40, n_celebrities=4, image_size=512)
    world = load_world(str(bench))
    model, processor = llava_rehearsal(bench_corpus(bench))
    adapter = PromptAdapter("llava")
    if args.four_bit:
        model.save_pretrained(f"{folder}/model")
        processor.save_pretrained(f"{folder}/model")
        model, processor, adapter = load_mllm(f"{folder}/model", load_in_4bit=True, dtype="float32")
    print(f"{'rendering':<11} {'full s':>8} {'shared s':>9} {'ratio':>6} {'max |Δ|':>9} {'letters agree':>14}")
    for rendering in ("image_text", "text_only"):
        items = items_of(world, rendering, args.questions)
        runs = {True: [], False: []}
        scores = {}
        with torch.no_grad():
            for _ in range(args.rounds):
                for shared in (False, True):
                    seconds, scores[shared] = timed(model, processor, adapter, items, args.batch_size, shared)
                    runs[shared].append(seconds)
        full, shared = statistics.median(runs[False]), statistics.median(runs[True])
        gap = max(abs(a - b) for a, b in zip(scores[False], scores[True]))

        def letters(values):
            return [max(range(4), key=values[k:k + 4].__getitem__) for k in range(0, len(values), 4)]  # 4 options

        agree = letters(scores[False]) == letters(scores[True])
        print(f"{rendering:<11} {full:>8.2f} {shared:>9.2f} {full / shared:>5.1f}x {gap:>9.2e} {str(agree):>14}")
    print(f"({args.questions} questions × 4 options per rendering, {'NF4 4-bit' if args.four_bit else 'float32'}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} alternating rounds)")


if __name__ == "__main__":
    main()
