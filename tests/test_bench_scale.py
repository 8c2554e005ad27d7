"""benchmarks/bench_scale.py: its ``--quick`` mode (tiny widths, every method in-process) runs the whole benchmark
in a subprocess and prints one JSON line whose figures are consistent — exact byte counts where they are
determined by the shapes, positive and finite times, no timing thresholds. Also a smoke run of
benchmarks/bench_hooks.py (its identical-arguments timing and measurement-problem flag)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from manu_lite.stats import NeuronStats

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "bench_scale.py"
TOP_KEYS = {"shapes", "spec", "text_layers", "vision_layers", "full_layers", "dtype", "threads", "clock", "parameters",
            "parameter_bytes", "overhead", "memory", "cost", "targets", "total_s"}
BASELINE_KEYS = {"name", "clock", "parameters", "method", "variant", "batch_size", "steps", "losses", "seconds",
                 "step_times_s", "first_step_s", "step_s", "setup_s", "optimizer_step_s", "step_s_per_forget_sample",
                 "trainable_parameters",
                 "saved_activation_bytes_per_layer", "extrapolated_step_s", "extrapolated_trainable_parameters",
                 "layers_with_backward", "rss_method", "peak_rss_above_start_bytes", "peak_rss_bytes",
                 "extrapolated_peak_rss_bytes"}
# The tiny LLaVA (TinySpec widths) at the default depth: 2 Llama MLPs of 256 neurons, 3 CLIP MLPs of 128 (MANU
# scores 2: vision_feature_layer=-2 leaves the last unused); 32 px images, patch 8.
TEXT_W, VISION_W, PATCHES = 256, 128, (32 // 8) ** 2 + 1  # CLIP keeps its class token


def site_bytes(width: int) -> int:
    """Bytes of one site's streamed statistics (NeuronStats: a float64 count and float64 vectors)."""
    return sum(t.nbytes for t in NeuronStats.zeros(width, 0.1).tensors().values())


def stats_bytes(text_sites: int, vision_sites: int) -> int:
    return text_sites * site_bytes(TEXT_W) + vision_sites * site_bytes(VISION_W)


def run_quick(*extra) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1]), proc.stdout


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick():
    return run_quick()


def test_quick_mode_prints_one_json_line_with_every_part(quick):
    result, stdout = quick
    assert set(result) == TOP_KEYS
    assert (result["shapes"], result["dtype"], result["threads"], result["clock"]) == ("tiny", "float32", 1, "cpu")
    assert (result["text_layers"], result["vision_layers"]) == (2, 3)
    assert result["full_layers"] == {"language": 32, "vision": 24}
    assert "extrapolated to the full 32 + 24 layers" in stdout and "(per-layer scaling" in stdout


def test_overhead_pairs_and_flag(quick):
    over = quick[0]["overhead"]
    assert over["seq_len"] == 1 + 8 + 16 + 8 and over["tokens_per_batch"] == over["seq_len"]
    for positions in ("recall", "all"):
        e = over[positions]
        assert e["pairs"] == 2 * 2  # --time-batches 2 x --repeats 2 (quick)
        q1, q3 = e["ratio_quartiles"]
        assert 0 < q1 <= e["ratio_median"] <= q3 and math.isfinite(q3)
        assert all(positive(e[f"{side}_{clock}_s_per_token"])
                   for side in ("plain", "hooked") for clock in ("cpu", "wall"))
        assert (e["measurement_problem"] is not None) == (e["ratio_median"] < 0.98)
        x = e["extrapolated"]
        assert positive(x["plain_s"]) and positive(x["hooked_s"]) and positive(x["ratio"])
        assert (x["measurement_problem"] is not None) == (x["ratio"] < 0.98)
    flagged = over["recall"]["measurement_problem"] is not None
    assert over["target_met"] is (None if flagged else over["recall"]["ratio_median"] <= 1.05)


def test_memory_grid_exact_bytes(quick):
    memory = quick[0]["memory"]
    ours = stats_bytes(2, 2)  # MANU's candidate sites
    assert len(memory["grid"]) == 2 * 2 * 2  # renderings x text lengths x batch sizes
    for g in memory["grid"]:
        assert g["ours_bytes"] == ours and not g["naive_oom"]
        image = g["rendering"] == "image_text"
        assert g["seq_len"] in ((1 + 8 + 16 + 8, 1 + 24 + 16 + 8) if image else (1 + 8 + 8, 1 + 24 + 8))
        text_site, vision_site = g["seq_len"] * TEXT_W, (PATCHES * VISION_W if image else 0)  # float32 values
        assert g["naive_bytes"] == 4 * g["batch_size"] * (2 * text_site + 3 * vision_site)
        assert g["extrapolated_naive_bytes"] == 4 * g["batch_size"] * (32 * text_site + 24 * vision_site)
        assert g["extrapolated_ours_bytes"] == stats_bytes(32, 23)
    assert memory["ours_constant"] and memory["tables_held_by_manu"] == 4
    assert (memory["sites"], memory["candidate_sites"]) == ({"language": 2, "vision": 3}, {"language": 2, "vision": 2})
    assert memory["full_model_candidate_sites"] == {"language": 32, "vision": 23}
    full = stats_bytes(32, 23)
    assert memory["extrapolated"]["ours_bytes_per_table"] == full
    assert memory["extrapolated"]["ours_bytes_manu"] == 4 * full and memory["extrapolated"]["target_met"]
    assert quick[0]["targets"]["extrapolated_stats_bytes"] == 4 * full


def test_cost_manu_and_every_baseline(quick):
    cost = quick[0]["cost"]
    manu = cost["manu"]
    assert set(manu["passes"]) == {"forget/image_text", "forget/text_only", "retain/image_text", "retain/text_only"}
    for p in manu["passes"].values():
        assert p["sequences"] == 4 and positive(p["s_per_sequence"])  # --manu-batch-size 2 x --manu-batches 2
        assert p["extrapolated_s_per_sequence"] >= p["s_per_sequence"]
    assert manu["stats_bytes"] == 4 * stats_bytes(2, 2)
    assert manu["extrapolated_stats_bytes"] == quick[0]["memory"]["extrapolated"]["ours_bytes_manu"]
    assert positive(manu["peak_rss_bytes"]) and manu["extrapolated_peak_rss_bytes"] >= manu["peak_rss_bytes"]
    parameters = quick[0]["parameters"]
    assert set(cost["baselines"]) == {f"{m}/{v}" for m in ("ga", "graddiff", "kl", "npo") for v in ("lora", "full")}
    for name, run in cost["baselines"].items():
        assert set(run) == BASELINE_KEYS, name
        assert run["steps"] == 2 and len(run["losses"]) == 2 and all(math.isfinite(x) for x in run["losses"])
        assert len(run["step_times_s"]) == 2 and run["step_s"] == run["step_times_s"][1]  # the step after the first
        assert positive(run["step_s"]) and positive(run["first_step_s"]) and run["batch_size"] == 1
        assert run["setup_s"] >= 0 and run["optimizer_step_s"] >= 0
        assert run["extrapolated_step_s"] >= run["step_s"]
        assert positive(run["peak_rss_bytes"]) and run["extrapolated_peak_rss_bytes"] >= run["peak_rss_bytes"]
        if run["variant"] == "full":
            assert run["trainable_parameters"] == parameters
        else:
            assert 0 < run["trainable_parameters"] < parameters
        assert run["extrapolated_trainable_parameters"] > run["trainable_parameters"]
        # LoRA: decoder layer 0's input carries no gradient (frozen embeddings), layer 1's does; CLIP is frozen.
        # Full: both decoder layers and CLIP layer 0 (vision_feature_layer=-2 reads layer 1's output directly,
        # past its backward hook, and layer 2's output is unused).
        assert run["layers_with_backward"] == ({"language": 1, "vision": 0} if run["variant"] == "lora"
                                               else {"language": 2, "vision": 1}), name
    counts = cost["world"]
    assert counts["forget/image_text"] > 0 and counts["retain/image_text"] > counts["forget/image_text"]
    for kind in ("measured", "extrapolated"):
        book = cost[kind]
        assert book["forget_samples"] == counts["forget/image_text"] and positive(book["manu_s_per_forget_sample"])
        assert set(book["baselines"]) == set(cost["baselines"])
        for ratios in book["baselines"].values():
            assert all(positive(v) for v in ratios.values())


def test_full_fine_tune_over_the_memory_budget_is_skipped_and_says_so():
    result, stdout = run_quick("--parts", "cost", "--methods", "ga", "--memory-budget-gb", "0.0001")
    assert result["overhead"] is None and result["memory"] is None
    runs = result["cost"]["baselines"]
    assert "step_s" in runs["ga/lora"] and "--memory-budget-gb" in runs["ga/full"]["skipped"]
    assert runs["ga/full"]["estimated_peak_rss_bytes"] > runs["ga/lora"]["peak_rss_bytes"]
    assert set(result["cost"]["measured"]["baselines"]) == {"ga/lora"}
    assert "ga/full: skipped" in stdout


def test_bench_hooks_reports_per_token_times_and_flags_impossible_ratios(capsys):
    spec = importlib.util.spec_from_file_location("bench_hooks", BENCHMARKS / "bench_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--batches", "2", "--time-batches", "2", "--repeats", "1", "--batch-size", "4",
                          "--seq-len", "32"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    for suffix in ("", "_all_positions"):
        measured, problem = result[f"measured_ratio{suffix}"], result[f"measurement_problem{suffix}"]
        assert (problem is not None) == (measured < 0.98)
        assert result[f"overhead_ratio{suffix}"] == (None if problem else measured)
        assert positive(result[f"plain_s_per_token{suffix}"]) and positive(result[f"hooked_s_per_token{suffix}"])
