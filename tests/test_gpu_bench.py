"""benchmarks/gpu_bench.py: its CPU mode (``--small``) runs the GPU benchmark's code end to end and prints sane
figures; exact byte counts check that both collectors saw what they should. Run in-process (a fresh interpreter
would spend most of the time importing torch and transformers)."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
KEYS = {"shapes", "device", "dtype", "parameters", "sites", "neurons", "batch_size", "seq_len", "batches", "repeats",
        "overhead_ratio", "overhead_quartiles", "plain_s_per_batch", "stats_s_per_batch",
        "throughput_plain_samples_per_s", "throughput_stats_samples_per_s", "peak_bytes_plain", "peak_bytes_ours",
        "peak_bytes_naive", "ours_held_bytes", "naive_held_bytes", "memory_ratio_naive_over_ours", "naive_oom",
        "build_s", "total_s"}


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_mode_prints_one_sane_json_line(gpu_bench, capsys):
    returned = gpu_bench.main(["--small"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    result = json.loads(lines[-1])
    assert result == returned
    assert set(result) == KEYS
    assert (result["shapes"], result["device"], result["dtype"]) == ("small", "cpu", "float32")
    # The tiny LLaVA: 2 language MLPs of 256 neurons, 2 CLIP MLPs of 128.
    assert (result["sites"], result["neurons"]) == (4, 2 * 256 + 2 * 128)
    batches, size, seq = result["batches"], result["batch_size"], result["seq_len"]
    assert seq == 1 + 48 + 16 + 8  # bos, text, (32 / 8)^2 image tokens, answer
    q1, q3 = result["overhead_quartiles"]
    assert 0 < q1 <= result["overhead_ratio"] <= q3 and math.isfinite(q3)
    assert result["throughput_plain_samples_per_s"] > 0 and result["throughput_stats_samples_per_s"] > 0
    assert result["peak_bytes_plain"] is None and result["peak_bytes_naive"] is None  # CUDA only
    # Ours: per site NeuronStats' float64 count and vectors, whatever the data.
    from manu_lite.stats import NeuronStats

    site_bytes = lambda w: sum(t.nbytes for t in NeuronStats.zeros(w, 0.1).tensors().values())  # noqa: E731
    assert result["ours_held_bytes"] == sum(site_bytes(w) for w in (256, 256, 128, 128))
    # Naive: every position of every batch at every site, float32 (CLIP keeps its class token: 17 positions).
    naive = batches * size * 4 * (2 * seq * 256 + 2 * 17 * 128)
    assert result["naive_held_bytes"] == naive and not result["naive_oom"]
    assert result["memory_ratio_naive_over_ours"] == round(naive / result["ours_held_bytes"], 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_gpu_mode_without_gpu_says_so(gpu_bench):
    with pytest.raises(SystemExit, match="no CUDA GPU visible: run with --small"):
        gpu_bench.main(["--batches", "1"])


def test_plain_pass_calls_the_model_exactly_as_collect_stats_does(gpu_bench):
    """The hooked/plain ratio of every benchmark (gpu_bench, bench_hooks, bench_scale) compares like with like:
    the plain pass sends the model the same keyword arguments as the statistics pass, ``use_cache=False``
    included (a KV cache on one side only would bias the ratio)."""
    from manu_lite.stats import collect_stats

    model = gpu_bench.build_llava(gpu_bench.SMALL, torch.float32, torch.device("cpu"))
    batch = gpu_bench.make_batches(gpu_bench.SMALL, 1, 2, 8, 4, torch.float32, torch.device("cpu"))[0]
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    gpu_bench.plain_pass(model, [batch])
    collect_stats(model, [batch], progress=False)
    (plain_args, plain), (stats_args, stats) = calls
    assert plain_args == stats_args == ()
    assert sorted(plain) == sorted(stats) and plain["use_cache"] is stats["use_cache"] is False
    assert all(torch.equal(plain[k], stats[k]) for k in plain if isinstance(plain[k], torch.Tensor))
