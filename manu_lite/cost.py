"""The cost of a block of work: wall time and peak memory (host RSS and, with a GPU, CUDA), measured the same
way for every method the comparison runs."""
from __future__ import annotations

import contextlib
import resource
import time

import torch


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def measure():
    """Wall time and peak memory of a block, filled into the yielded dict on exit.

    ``seconds``; ``peak_rss_mb``: the peak resident memory of the process during the block minus the resident
    memory at its start. tracemalloc cannot measure this (it sees only Python's allocator, not torch's tensor
    memory), and ``ru_maxrss`` is a lifetime maximum that moves only when a new record is set; so on Linux the
    kernel's high-water mark (VmHWM) is reset before the block. Elsewhere the ``ru_maxrss`` increase is reported
    (``rss_method = "ru_maxrss"``, a lower bound). ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` above the
    start, when a GPU is in use.
    """
    cost: dict = {}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        cuda_start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss_start = _proc_status_kb("VmRSS")
    exact = rss_start is not None and _reset_peak_rss()
    maxrss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    yield cost
    if cuda:
        torch.cuda.synchronize()
    cost["seconds"] = time.perf_counter() - started
    if exact:
        cost["peak_rss_mb"] = max(0, _proc_status_kb("VmHWM") - rss_start) / 1024
        cost["rss_method"] = "VmHWM"
    else:
        cost["peak_rss_mb"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_start) / 1024
        cost["rss_method"] = "ru_maxrss"
    cost["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - cuda_start) / 2**20 if cuda else None
