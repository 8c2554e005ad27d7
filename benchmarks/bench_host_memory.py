"""Peak host memory (RSS) to load a full-size synthetic MLLMU-Bench and stream MANU's statistics over it with a
LLaVA-1.5-shaped model: ours (records hold each image's parquet cell, not its bytes; items encoded per batch) next
to the eager approach (every image of the world decoded at load, every item of a (dataset, rendering) encoded
before its first batch, as the loader and ``iter_batches`` did before). Each (size, approach) runs in its own subprocess, so the peaks
are separate; the figure is the peak RSS above the RSS right after the model is built (the model's own
footprint). The eager run stops once it holds ``--eager-cap-gb`` above the model, and projects its peak from
the share of items it had encoded.

The model is :func:`manu_lite.rehearsal.llava_rehearsal`: the published ``llava-hf/llava-1.5-7b-hf`` config cut
down in depth and width, its 336-px CLIP processor (576 image tokens per image), random init. The bench is
:func:`manu_lite.synthetic.make_synthetic_bench` with 1024-px JPEG portraits and grain, about the hub's weight
per image (~0.45 MB; the hub's ``retain_95`` holds 226 MB for 475 rows).

    python benchmarks/bench_host_memory.py --profiles 250 500 --max-batches 40

prints one table and writes ``--out`` (JSON). The largest size is generated, the smaller ones are its first
people; the runs go in parallel, one process each. ``--max-batches`` caps the batches per (dataset, rendering) that
the statistics pass runs (the memory of a streamed pass does not grow with the batch count; the records do grow
with the profiles, and are all loaded either way).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GB = 1024 ** 3


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss() -> int:
    """Resident set size now, bytes."""
    return _status_kb("VmRSS") * 1024


def reset_peak() -> None:
    """Start the peak (VmHWM) afresh from the current RSS (Linux: ``5`` into ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak() -> int:
    return _status_kb("VmHWM") * 1024


def make_bench(root: Path, profiles: int, celebrities: int, image_size: int, grain: float) -> Path:
    from manu_lite.synthetic import make_synthetic_bench

    out = root / f"bench_{profiles}_{celebrities}_{image_size}"
    if not (out / "Retain_Set").exists():
        make_synthetic_bench(out, profiles, celebrities, seed=0, image_size=image_size, image_format="JPEG",
                             grain=grain, min_look_distance=1)
    return out


def subset_bench(source: Path, out: Path, profiles: int) -> Path:
    """``source`` cut to its first ``profiles`` people (by ID) in every config; the celebrities stay whole."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from manu_lite.bench_schema import ROW_GROUP_ROWS

    if (out / "Retain_Set").exists():
        return out
    people = sorted(pq.read_table(source / "Full_Set", columns=["ID"]).column("ID").to_pylist())[:profiles]
    for config in sorted(p.name for p in source.iterdir() if p.is_dir()):
        (out / config).mkdir(parents=True, exist_ok=True)
        for path in (source / config).glob("*.parquet"):
            table = pq.read_table(path)
            if config != "Retain_Set":
                table = table.filter(pc.is_in(table.column("ID"), value_set=pa.array(people, type=pa.string())))
            pq.write_table(table, out / config / path.name, row_group_size=ROW_GROUP_ROWS)
    return out


def _decoded(record):
    """The record with every image decoded to PIL (what the eager loader held)."""
    return dataclasses.replace(record, image=record.image.open(), images=[im.open() for im in record.images])


def worker(args) -> dict:
    import torch

    from manu_lite import rehearsal
    from manu_lite.bench import load_world
    from manu_lite.config import RENDERINGS, ManuConfig
    from manu_lite.finetune import training_items
    from manu_lite.hooks import candidate_sites
    from manu_lite.manu import manu_unlearn
    from manu_lite.models import encode_item, iter_batches, prompt_adapter_for
    from manu_lite.stats import collect_stats

    torch.set_num_threads(args.threads)
    before_model = rss()
    model, processor = rehearsal.llava_rehearsal(rehearsal.bench_corpus(args.bench))
    adapter = prompt_adapter_for(processor)
    model_rss = rss()
    reset_peak()
    start = time.perf_counter()
    config = ManuConfig(max_batches=args.max_batches)
    world = load_world(str(args.bench), args.forget)
    result = {"mode": args.worker, "profiles": len(world.forget) + len(world.retain),
              "celebrities": len(world.celebrity), "model_rss_gb": (model_rss - before_model) / GB}
    if args.worker == "ours":
        manu_unlearn(model, processor, world.forget_train, world.retain_train, config, adapter=adapter,
                     batch_size=args.batch_size, progress=False)
        result["items"] = sum(len(training_items(world.forget_train + world.retain_train, (r,))) for r in RENDERINGS)
    else:
        world = dataclasses.replace(world, **{k: [_decoded(r) for r in getattr(world, k)] for k in (
            "forget", "retain", "test", "celebrity", "forget_train", "retain_train")})
        result["after_decode_gb"] = (rss() - model_rss) / GB
        sites = candidate_sites(model, config.towers)
        largest = max(len(training_items(rs, (r,))) for rs in (world.forget_train, world.retain_train) for r in RENDERINGS)
        result["items"] = encoded_items = 0
        for records in (world.forget_train, world.retain_train):
            for rendering in RENDERINGS:
                items = training_items(records, (rendering,))
                result["items"] += len(items)
                encoded, base = [], rss()
                for item in items:
                    encoded.append(encode_item(processor, adapter, item))
                    if rss() - model_rss > args.eager_cap_gb * GB:
                        # Projected: the decoded world plus the largest (dataset, rendering) group encoded at
                        # the first item's size (pixel_values dominate), not a measurement.
                        item = sum(t.nbytes for t in encoded[0].values())
                        result["stopped"] = {"rendering": rendering, "encoded": len(encoded), "of": len(items),
                                             "held_gb": (rss() - model_rss) / GB, "item_mb": item / 2 ** 20,
                                             "largest_group": largest,
                                             "projected_gb": (base - model_rss + item * largest) / GB}
                        break
                if "stopped" in result:
                    break
                encoded_items += len(encoded)
                collect_stats(model, iter_batches(processor, adapter, items, args.batch_size, encoded=encoded), sites,
                              positions=config.positions, tau=config.tau, progress=False,
                              max_batches=config.max_batches)
                del encoded
            if "stopped" in result:
                break
    result["seconds"] = time.perf_counter() - start
    result["peak_above_model_gb"] = (peak() - model_rss) / GB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--celebrities", type=int, default=153)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--grain", type=float, default=12.0)
    parser.add_argument("--forget", default="forget_10")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--eager-cap-gb", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bench-root", type=Path, default=Path("runs/host_memory"))
    parser.add_argument("--out", type=Path, default=Path("runs/host_memory/results.json"))
    parser.add_argument("--worker", choices=["ours", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--bench", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # The largest bench is generated; smaller ones are its first N people (same images, same celebrities).
    full = make_bench(args.bench_root, max(args.profiles), args.celebrities, args.image_size, args.grain)
    runs = []
    for profiles in sorted(args.profiles):
        bench = full if profiles == max(args.profiles) else subset_bench(full, Path(f"{full}_first{profiles}"), profiles)
        sizes = {c.name: round(sum(f.stat().st_size for f in c.glob("*.parquet")) / 1e6, 1) for c in bench.iterdir()}
        for mode in ("ours", "eager"):
            command = [sys.executable, __file__, "--worker", mode, "--bench", str(bench), "--forget", args.forget,
                       "--batch-size", str(args.batch_size), "--eager-cap-gb", str(args.eager_cap_gb),
                       "--threads", str(args.threads)] + (["--max-batches", str(args.max_batches)]
                                                          if args.max_batches else [])
            # One process per run, all at once: each peak is its own process's.
            runs.append((profiles, mode, sizes, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                                 stderr=subprocess.PIPE, text=True)))
    rows = []
    for profiles, mode, sizes, process in runs:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"{mode} at {profiles} profiles failed:\n{err[-3000:]}")
        rows.append({**json.loads(out.strip().splitlines()[-1]), "parquet_mb": sizes})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'profiles':>8} {'mode':>6} {'model GB':>8} {'peak above model GB':>20} {'items':>6} {'s':>6}  note")
    for r in rows:
        note = ""
        if "stopped" in r:
            s = r["stopped"]
            note = (f"stopped at {s['encoded']}/{s['of']} {s['rendering']} items holding {s['held_gb']:.2f} GB; "
                    f"+ {s['largest_group']} items x {s['item_mb']:.2f} MB encoded: {s['projected_gb']:.1f} GB "
                    "(projected)")
        print(f"{r['profiles']:>8} {r['mode']:>6} {r['model_rss_gb']:>8.2f} {r['peak_above_model_gb']:>20.2f} "
              f"{r['items']:>6} {r['seconds']:>6.0f}  {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
