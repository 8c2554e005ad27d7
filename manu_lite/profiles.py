"""The one way the command line and the notebooks get a profile's world, model, evaluation and MANU settings.

``tiny``: the synthetic bench of the tiny world (written once under :func:`book_workdir`) and the tiny LLaVA
trained on it (trained once, then loaded from the model cache). ``colab``/``full``: MLLMU-Bench from the hub and
the profile's checkpoint. Every path loads hub models the same way (:func:`load_model`: the profile's dtype,
4-bit where it says so, ``device_map="auto"`` when a GPU is present).

Whether a person drives the session (:func:`interactive`) decides progress bars and widgets; the rule is
documented there and never guesses from process names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from pathlib import Path

from .artifacts import RunManifest
from .bench import World, load_world
from .config import TINY_CELEBRITIES, TINY_PROFILES, EvalConfig, ManuConfig, Profile, resolve_profile
from .finetune import TrainConfig, cache_dir, retain_model, vanilla_model
from .synthetic import make_synthetic_bench

__all__ = ["book_workdir", "make_world_data", "tiny_world", "tiny_vanilla", "tiny_retain", "load_model", "load_retain_model", "profile_world",
           "people_cap", "cap_people", "profile_model", "profile_eval", "profile_manu", "interactive"]


# --------------------------------------------------------------------------------------------------- worlds
def book_workdir() -> Path:
    """Where notebooks write the synthetic bench and their outputs: ``$MANU_LITE_CACHE/book`` (default
    ``~/.cache/manu_lite/book``). The tiny world is deterministic, so every notebook (and the CLI) trains and then
    reuses the same cached vanilla model."""
    return cache_dir() / "book"


def make_world_data(out: Path, profiles: int | None = None, celebrities: int | None = None, seed: int = 0) -> Path:
    """Write the synthetic bench of the tiny world into ``out``."""
    return make_synthetic_bench(out, n_profiles=profiles or TINY_PROFILES, n_celebrities=celebrities or TINY_CELEBRITIES,
                                seed=seed)


def tiny_world(out: Path, forget: str = "forget_10", profiles: int | None = None, seed: int = 0,
               run: RunManifest | None = None) -> World:
    """The tiny world under ``out/bench``, written on first use (and recorded as a step of ``run``)."""
    bench = Path(out) / "bench"
    complete = run.done("data") if run else (bench / "Retain_Set").exists()
    if not complete:
        make_world_data(bench, profiles=profiles, seed=seed)
        if run:
            run.complete("data", sorted(bench.glob("*/*.parquet")))
    return load_world(str(bench), forget)


def _generator_digest() -> str:
    """A short hash of the synthetic generator's source: a changed generator writes a fresh world directory
    instead of reusing one written by an older version."""
    from . import bench, synthetic

    digest = hashlib.sha256()
    for module in (bench, synthetic, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:10]


def people_cap() -> int | None:
    """``$MANU_LITE_PEOPLE``: at most this many people per set in :func:`profile_world` (unset: no cap).

    For a quick look at a profile's code path, and for the CPU rehearsal of ``colab`` (:mod:`manu_lite.rehearsal`),
    where the full sets would take hours: ``MANU_LITE_PEOPLE=2`` keeps every step and shrinks every loop."""
    value = os.environ.get("MANU_LITE_PEOPLE", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"MANU_LITE_PEOPLE={value!r} is not a positive whole number of people; set e.g. "
                         "MANU_LITE_PEOPLE=2, or unset it for the full sets")
    return int(value)


def cap_people(world: World, people: int | None, seed: int = 0) -> World:
    """``world`` with at most ``people`` forget people (their Test_Set and training rows follow), retain people
    (a seeded sample, evaluation and training rows alike) and celebrities; ``world`` itself when ``None``."""
    if people is None:
        return world
    world = world.with_retain_sample(people, seed)
    forget = world.forget[:people]
    kept, retained = {r.id for r in forget}, {r.id for r in world.retain}
    return dataclasses.replace(
        world, forget=forget, test=[r for r in world.test if r.id in kept],
        forget_train=[r for r in world.forget_train if r.id in kept],
        retain_train=[r for r in world.retain_train if r.id in retained], celebrity=world.celebrity[:people])


def profile_world(profile: Profile | str | None, forget: str | None = None, max_retain: int | None = None) -> World:
    """The world of a profile: the synthetic bench (``tiny``) or MLLMU-Bench from the hub (``colab``/``full``),
    capped at :func:`people_cap` people per set when ``$MANU_LITE_PEOPLE`` is set."""
    profile = resolve_profile(profile)
    forget = forget or profile.forget_split
    if profile.data == "synthetic":
        world = tiny_world(book_workdir() / f"tiny-{_generator_digest()}", forget).with_retain_sample(max_retain)
    else:
        world = load_world(profile.data, forget, max_retain=max_retain)
    return cap_people(world, people_cap())


# --------------------------------------------------------------------------------------------------- models
def tiny_vanilla(world: World, seed: int = 0, epochs: int | None = None, progress: bool = True):
    """The tiny vanilla model of ``world`` (cached): ``(model, processor, adapter)``."""
    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    return vanilla_model(world, config=config, progress=progress)


def tiny_retain(world: World, seed: int = 0, epochs: int | None = None, progress: bool = True):
    """The tiny retain model of ``world`` (cached): the vanilla recipe without the forget people, the same number
    of steps (:func:`manu_lite.finetune.retain_model`). ``epochs`` is the *vanilla's* epochs."""
    config = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    return retain_model(world, config=config, progress=progress)


def load_retain_model(name: str, world: World | None = None, *, retain: str | None = None, dtype: str = "auto",
                      load_in_4bit: bool = False, seed: int = 0, epochs: int | None = None, progress: bool = True):
    """The retain model (never saw the forget people) matching the vanilla model ``name``.

    ``"tiny"``: trained on ``world`` (:func:`tiny_retain`). A hub model has no retain model we could afford to
    train: pass ``retain``, the hub name or local path of a checkpoint fine-tuned without the forget split;
    without it this raises. Returns ``(model, processor, adapter)``.
    """
    if name == "tiny" and retain is None:
        if world is None:
            raise ValueError("the tiny retain model is trained on a world: pass world=profile_world('tiny')")
        return tiny_retain(world, seed, epochs, progress=progress)
    if retain is None:
        raise ValueError(f"no retain model for {name!r}: pass retain=<hub name or path of a checkpoint fine-tuned "
                         "without the forget people> (for MLLMU-Bench, the fine-tune on the retain split only)")
    from .models import load_mllm

    return load_mllm(retain, dtype=dtype, load_in_4bit=load_in_4bit, device_map=default_device_map())


def default_device_map():
    """``"auto"`` (spread over the GPUs, offloading what does not fit) when CUDA is present, else ``None``
    (plain CPU tensors: accelerate's dispatch only adds hooks there)."""
    import torch

    return "auto" if torch.cuda.is_available() else None


def load_model(name: str, world: World | None = None, *, dtype: str = "auto", load_in_4bit: bool = False,
               seed: int = 0, epochs: int | None = None, progress: bool = True):
    """A vanilla model by name: ``"tiny"`` (trained on ``world``) or a hub checkpoint / local path.

    Returns ``(model, processor, adapter)``. Hub models load with ``dtype``, 4-bit when ``load_in_4bit``, on
    :func:`default_device_map`.
    """
    if name == "tiny":
        if world is None:
            raise ValueError("the tiny model is trained on a world: pass world=profile_world('tiny')")
        return tiny_vanilla(world, seed, epochs, progress=progress)
    from .models import load_mllm

    return load_mllm(name, dtype=dtype, load_in_4bit=load_in_4bit, device_map=default_device_map())


def profile_model(profile: Profile | str | None, world: World | None = None, progress: bool | None = None):
    """The vanilla model of a profile: ``(model, processor, adapter)``, by :func:`load_model`.

    ``progress=None`` shows progress bars only in a live session (:func:`interactive`): in a saved notebook a bar
    is frozen at its first state.
    """
    profile = resolve_profile(profile)
    if progress is None:
        progress = interactive()
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return load_model(profile.model, world, dtype=profile.dtype, load_in_4bit=profile.load_in_4bit, progress=progress)


def profile_eval(profile: Profile | str | None, **overrides) -> EvalConfig:
    """The evaluation settings of a profile (:attr:`Profile.evaluation`), with ``overrides``."""
    return dataclasses.replace(resolve_profile(profile).evaluation, **overrides)


def profile_manu(profile: Profile | str | None) -> ManuConfig:
    """MANU's settings for a profile (:attr:`Profile.manu`): on ``tiny`` :data:`manu_lite.config.TINY_MANU`."""
    return resolve_profile(profile).manu


def for_hub_model(config, batch_size: int = 4):
    """A :class:`~manu_lite.compare.CompareConfig` for a hub model (7B-class, often 4-bit): the baselines train
    LoRA adapters on the one loaded model (no per-method copy; 4-bit weights cannot be trained themselves) and
    MANU's statistics are collected in batches of ``batch_size``."""
    return dataclasses.replace(config, unlearn=dataclasses.replace(config.unlearn, lora=True),
                               manu_batch_size=batch_size)


# ---------------------------------------------------------------------------------------------- the session
def interactive() -> bool:
    """True when a person drives this kernel, so widgets and live progress bars make sense.

    The rule, in order: ``MANU_LITE_STATIC=1`` → False and ``MANU_LITE_STATIC=0`` → True (the book build and the
    notebook tests set ``MANU_LITE_STATIC=1``); no IPython kernel → False; Colab → True; otherwise True only when a
    widget front end started the kernel: a Jupyter server (jupyter_server >= 2 sets ``JPY_SESSION_NAME`` for
    its kernels) or VS Code (``VSCODE_PID``). Tools that execute notebooks unattended (jupyter-book, papermill,
    nbconvert, nbmake) start kernels without a server, so their saved outputs get static figures; a front end
    that sets neither variable also gets the static figures (never a dead widget).
    """
    forced = os.environ.get("MANU_LITE_STATIC")
    if forced in ("0", "1"):
        return forced == "0"
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    if "google.colab" in sys.modules:
        return True
    return any(os.environ.get(name) for name in ("JPY_SESSION_NAME", "VSCODE_PID"))
