"""Resumable, measured steps in a run directory, and freeing a model's memory between runs.

A long run (chapter 06 on a GPU: a 7B model, several methods, MMMU after each) is cut into steps. Each step
writes its files atomically; :class:`StepRun` records it in the directory's manifest with the files' hashes
(:class:`manu_lite.artifacts.RunManifest`, as ``manu-lite ... --resume`` does) and with its wall time and peak
memory (:func:`manu_lite.cost.measure`), and prints that cost. Run again with ``resume=True``, a step already
done is read back from its files (their hashes checked first) instead of being computed, so an interrupted
session loses only the step it was in.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .artifacts import RunManifest
from .cost import measure


def describe(name: str, cost: dict) -> str:
    """One line for a step's cost: seconds, peak host memory above the start, peak CUDA memory when measured."""
    line = f"{name}: {cost['seconds']:.1f} s, peak RSS +{cost['peak_rss_mb']:.0f} MB"
    if cost.get("peak_cuda_mb") is not None:
        line += f", peak CUDA +{cost['peak_cuda_mb']:.0f} MB"
    return line + (" (done before: read back; cost of the run that computed it)" if cost.get("resumed") else "")


class StepRun:
    """The steps of one run directory.

    out:      the run directory (``manifest.json`` and every step's files live under it).
    settings: what the run depends on; resuming with other settings is refused (delete ``out`` or pass
              ``resume=False``).
    resume:   read back the steps the manifest records as done; ``False`` starts over.
    costs:    one dict per step run or read back: ``step``, ``seconds``, ``peak_rss_mb``, ``peak_cuda_mb``,
              ``resumed`` (plus the ``context`` given to :meth:`step`).
    """

    def __init__(self, out, settings: dict, resume: bool = True, echo: Callable[[str], None] | None = print):
        self.out = Path(out)
        self.manifest = RunManifest(self.out, settings, resume=resume)
        self.costs: list[dict] = []
        self.echo = echo or (lambda line: None)

    def done(self, name: str) -> bool:
        """Whether step ``name`` completed before (its files' hashes are checked)."""
        return self.manifest.done(name)

    def step(self, name: str, files, compute: Callable[[], object], load: Callable[[], object], **context):
        """Step ``name``: ``compute()`` writes ``files`` (paths under :attr:`out`) and returns its value; when
        the manifest records the step as done, ``load()`` reads the value back from those files instead.
        The cost is measured, recorded with the step, printed and appended to :attr:`costs`."""
        if self.manifest.done(name):
            value = load()
            cost = {**self.manifest.data["steps"][name].get("cost", {}), "resumed": True}
        else:
            with measure() as cost:
                value = compute()
            missing = [str(f) for f in files if not Path(f).exists()]
            if missing:
                raise FileNotFoundError(f"step {name!r} did not write {missing}: its compute() must write every "
                                        "file it declares, or the step could not be resumed")
            self.manifest.complete(name, files, cost=dict(cost))
            cost = {**cost, "resumed": False}
        self.costs.append({"step": name, **context, **cost})
        self.echo(describe(name, cost))
        return value

    def measured(self, name: str, compute: Callable[[], object], **context):
        """A step that always runs (loading a model): measured, printed and appended to :attr:`costs`, but not
        recorded as done (its result lives in memory only)."""
        with measure() as cost:
            value = compute()
        self.costs.append({"step": name, **context, **cost, "resumed": False})
        self.echo(describe(name, cost))
        return value


def free_memory() -> None:
    """Give memory back between models or methods: collect garbage and, with CUDA, empty the allocator's cache
    (the caller first drops its own references: ``del model``)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
