"""manu-lite: Modality-Aware Neuron Unlearning (MANU) for multimodal LLMs, small and tested.

The handful of names a reader calls, by chapter (``book/package_map.md`` lists every module):

01 the world     :func:`load_world`, :func:`profile_world`, :func:`profile_model`, ``evaluate.evaluate``
02 hooking       :func:`find_sites`, :func:`record_neurons`, :func:`collect_stats`
03 importance    :class:`ManuConfig`, :func:`score_neurons`, :func:`select`
04 pruning       :class:`NeuronMask`, :func:`manu_unlearn`
05 comparison    :func:`unlearn_with`, ``compare.compare`` (``evaluate`` and ``compare`` are module names too)

Imports are lazy, so ``import manu_lite`` stays cheap (no torch or transformers until a name is used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_world": "bench", "ManuConfig": "config", "EvalConfig": "config", "resolve_profile": "config",
    "profile_world": "profiles", "profile_model": "profiles", "find_sites": "hooks",
    "record_neurons": "hooks", "collect_stats": "stats", "score_neurons": "importance", "select": "importance",
    "NeuronMask": "prune", "manu_unlearn": "manu", "unlearn_with": "baselines",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'manu_lite' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
