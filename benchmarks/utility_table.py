"""Chapter 06's utility table on the CPU rehearsal model: vanilla and after each method, with MMMU.

    python benchmarks/utility_table.py [--out runs/utility_table] [--people 3] [--methods manu,ga,npo]
                                       [--subjects Math] [--profile colab]

The code path is chapter 06's own (:func:`manu_lite.workflow.full_benchmark`) on ``PROFILE="colab"``: the model
loads by its hub name ``MLLMMU/LLaVA_Vanilla`` in real bitsandbytes 4-bit (NF4 runs on CPU), MANU prunes in
activation mode, the baselines train LoRA adapters on the one 4-bit model, and MMMU is scored after every method.
The hub name resolves to :mod:`manu_lite.rehearsal`'s random-init LLaVA-1.5-shaped model (the published config cut
down: 336 px CLIP, 576 image tokens, ``vision_feature_layer=-2``, the checkpoint's chat template) in a local hub
cache under ``--out``, with its synthetic MLLMU-Bench and MMMU by its hub id ``MMMU/MMMU`` (made-up questions in
MMMU's schema and hub layout, 336 px images, :func:`manu_lite.rehearsal.write_mmmu_like`). Nothing reaches a hub.

The scores mean nothing (random weights, a few people per set via ``MANU_LITE_PEOPLE``); the code path is real.
Prints every step's time and memory, the drops from vanilla and the utility table; the last line is one JSON
object with all three.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/utility_table")
    parser.add_argument("--profile", default="colab", choices=["colab", "full"])
    parser.add_argument("--people", type=int, default=3, help="people per set (MANU_LITE_PEOPLE)")
    parser.add_argument("--methods", default="manu,ga,npo")
    parser.add_argument("--subjects", default="Math", help="MMMU subjects scored, from the rehearsal's copy "
                        "(manu_lite.rehearsal.MMMU_SUBJECTS, MMMU_QUESTIONS questions each)")
    parser.add_argument("--bench-profiles", type=int, default=None,
                        help="synthetic profiles in the rehearsal bench (default: manu_lite.rehearsal's)")
    parser.add_argument("--new-tokens", type=int, default=8, help="generated tokens (MLLMU-Bench and MMMU)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    # The hub cache must be set before huggingface_hub is imported; nothing may reach the hub.
    os.environ.update(HF_HOME=str(out / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      MANU_LITE_PEOPLE=str(args.people))
    import pandas as pd
    import torch

    from manu_lite.mmmu import MMMUConfig
    from manu_lite.profiles import profile_eval
    from manu_lite.rehearsal import BENCH_PROFILES, LLAVA_ID, MMMU_ID, write_rehearsal_hub
    from manu_lite.workflow import benchmark_tables, full_benchmark

    torch.set_num_threads(args.threads)
    write_rehearsal_hub(out / "hf", profiles=args.bench_profiles or BENCH_PROFILES, image_size=128)
    mmmu_config = MMMUConfig(subjects=tuple(args.subjects.split(",")), max_new_tokens=args.new_tokens, batch_size=4)
    results, mmmu, costs = full_benchmark(
        args.profile, [LLAVA_ID], ["forget_10"], out / "runs", methods=tuple(args.methods.split(",")),
        evaluation=profile_eval(args.profile, max_new_tokens=args.new_tokens), mmmu_source=MMMU_ID,
        mmmu_config=mmmu_config)
    drops, utility = benchmark_tables(results, mmmu)
    pd.set_option("display.width", 200)
    cost_frame = pd.DataFrame(costs)[["step", "seconds", "peak_rss_mb", "peak_cuda_mb", "resumed"]]
    print("\n== cost per step ==\n" + cost_frame.round(2).to_string(index=False))
    print("\n== drops from vanilla (points, mean of the tasks) ==\n" + drops.round(1).to_string())
    print("\n== utility (celebrity %, MMMU %) ==\n" + utility.round(1).to_string())
    report = {"profile": args.profile, "model": LLAVA_ID, "people_per_set": args.people,
              "mmmu_subjects": args.subjects, "costs": costs,
              "drops": {" ".join(k): v for k, v in drops.to_dict(orient="index").items()},
              "utility": {" ".join(k): v for k, v in utility.to_dict(orient="index").items()}}
    print(json.dumps(report, default=str))
    return report


if __name__ == "__main__":
    main()
