"""Time MMMU evaluation per question on a CPU model and print a per-subject T4 time ESTIMATE.

    python benchmarks/mmmu_estimate.py [--questions 12] [--images 1,2,3] [--new-tokens 8] [--image-mode interleaved]

Measured here, on this CPU: (1) the harness alone per question (reading the parquet rows, decoding the images,
the processor, prompt building and answer parsing; ``generate`` replaced by a constant answer) and (2) the
whole evaluation per question with the tiny random-init LLaVA of the tests (which says nothing about a 7B
model's speed). The fixture is synthetic, in MMMU's schema (hub layout, parquet, read through ``datasets``),
with 336 px images and the given numbers of images per question.

Estimated, not measured: a T4 running LLaVA-1.5-7B. The formula is printed with its constants; every constant
is an assumption (a T4's datasheet peaks: 65 TFLOP/s fp16 tensor, 320 GB/s memory; efficiency factors
guessed) and can be changed on the command line. Per question:

    t_q = h + (2 * P_llm * (576 * m + L) + 2 * P_vit * 577 * m) / (eta_c * 65e12) + g * W / (eta_m * 320e9)

with h the harness time (measured above), m images per question, L text tokens, g generated tokens, P_llm and
P_vit the language and vision parameter counts, W the bytes of weights read per generated token. A subject takes
``N_s * t_q`` (MMMU's validation split has 30 questions per subject). The defaults are fp16 weights (13.5 GB,
a tight fit in a T4's 15 GB); for the colab profile's 4-bit NF4 weights pass ``--weight-gb 3.9`` with a lower
``--eta-memory`` (bitsandbytes' dequantizing kernels do not reach the memory bound; how far they fall short is
not known here). The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--images", default="1,2,3", help="images per question, cycled")
    parser.add_argument("--image-mode", default="interleaved", choices=["interleaved", "first_image"])
    parser.add_argument("--new-tokens", type=int, default=8, help="generated tokens per question, for the estimate")
    parser.add_argument("--text-tokens", type=int, default=120, help="prompt text tokens per question (L)")
    parser.add_argument("--t4-images", type=float, default=1.0, help="images per question on the real data (m)")
    parser.add_argument("--eta-compute", type=float, default=0.3, help="assumed fraction of 65 TFLOP/s reached")
    parser.add_argument("--eta-memory", type=float, default=0.5, help="assumed fraction of 320 GB/s reached")
    parser.add_argument("--weight-gb", type=float, default=13.5, help="weights read per token (fp16 7B: 13.5)")
    parser.add_argument("--questions-per-subject", type=int, default=30)
    args = parser.parse_args(argv)

    import datasets
    import torch

    from manu_lite import mmmu
    from manu_lite.models import build_tiny
    from manu_lite.rehearsal import write_mmmu_like

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    images = [int(x) for x in args.images.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_mmmu_like(Path(tmp) / "mmmu", ("Math",), args.questions, images)
        data = mmmu.load_mmmu(str(root), cache_dir=str(Path(tmp) / "cache"))
        corpus = ["Look at the image. What is the value of x?\nAnswer with the option's letter directly."] * 20
        model, processor, adapter = build_tiny(corpus)
        config = mmmu.MMMUConfig(image_mode=args.image_mode, max_new_tokens=args.new_tokens, batch_size=4)

        def harness_only(model_, processor_, use, items, config_):
            """Everything but the model: the processor still resizes and normalizes every image."""
            for item in items:
                pictures = list(item.prefix_images) + ([item.image] if item.image is not None else [])
                processor_(text=[use.prompt(item.question, item.rendering)], images=pictures or None,
                           return_tensors="pt")
            return ["(B)"] * len(items)

        real_generate, mmmu.generate = mmmu.generate, harness_only
        try:
            start = time.perf_counter()
            mmmu.evaluate_mmmu(model, processor, adapter, data, config)
            harness = (time.perf_counter() - start) / len(data.questions)
        finally:
            mmmu.generate = real_generate
        start = time.perf_counter()
        mmmu.evaluate_mmmu(model, processor, adapter, data, config)
        tiny = (time.perf_counter() - start) / len(data.questions)

    p_llm, p_vit, m, L, g = 6.7e9, 0.30e9, args.t4_images, args.text_tokens, args.new_tokens
    prefill = (2 * p_llm * (576 * m + L) + 2 * p_vit * 577 * m) / (args.eta_compute * 65e12)
    decode = g * args.weight_gb * 1e9 / (args.eta_memory * 320e9)
    per_question = harness + prefill + decode
    out = {"measured_cpu": {"harness_s_per_question": round(harness, 4), "tiny_model_s_per_question": round(tiny, 4),
                            "questions": len(data.questions), "images_per_question": images,
                            "image_mode": args.image_mode, "threads": torch.get_num_threads()},
           "t4_estimate": {"label": "ESTIMATE, not measured: LLaVA-1.5-7B on a T4, assumed efficiencies",
                           "prefill_s": round(prefill, 3), "decode_s": round(decode, 3),
                           "per_question_s": round(per_question, 3),
                           "per_subject_s": round(per_question * args.questions_per_subject, 1),
                           "all_30_subjects_min": round(per_question * args.questions_per_subject * 30 / 60, 1)}}
    print(f"CPU (measured): harness {harness * 1e3:.1f} ms/question, tiny LLaVA end to end {tiny * 1e3:.1f} "
          f"ms/question ({len(data.questions)} questions, images per question {images}, {args.image_mode})")
    print("T4 ESTIMATE (not measured; LLaVA-1.5-7B, assumed efficiencies):")
    print(f"  t_q = h + (2*{p_llm:.2g}*(576*{m:g} + {L}) + 2*{p_vit:.2g}*577*{m:g}) / ({args.eta_compute}*65e12)"
          f" + {g}*{args.weight_gb}e9 / ({args.eta_memory}*320e9)")
    print(f"      = {harness:.3f} + {prefill:.3f} + {decode:.3f} = {per_question:.2f} s per question")
    print(f"  per subject: N_s * t_q = {args.questions_per_subject} * {per_question:.2f} = "
          f"{per_question * args.questions_per_subject:.0f} s; all 30 subjects ~ "
          f"{per_question * args.questions_per_subject * 30 / 60:.0f} min per model")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
