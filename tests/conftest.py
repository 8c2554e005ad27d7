"""Shared fixtures: a very small synthetic world and its vanilla model, built once per test session."""
from __future__ import annotations

import os

import pytest
import torch

# Models this small gain nothing from intra-op threads, and on a shared 2-core machine OpenMP barriers made a
# forward pass ~50x slower (0.7 s instead of 14 ms) when other processes held the cores.
torch.set_num_threads(1)

# Tests never reach a model hub, and they use their own model cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory):
    """A synthetic MLLMU-Bench with 20 fictitious people and 4 celebrities (hub layout, real parquet)."""
    from manu_lite.synthetic import make_synthetic_bench

    return make_synthetic_bench(tmp_path_factory.mktemp("bench"), n_profiles=20, n_celebrities=4, seed=1)


@pytest.fixture(scope="session")
def small_world(small_bench):
    from manu_lite.bench import load_world

    return load_world(str(small_bench), "forget_10")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("model-cache")
    previous = os.environ.get("MANU_LITE_CACHE")
    os.environ["MANU_LITE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MANU_LITE_CACHE", None)
    else:
        os.environ["MANU_LITE_CACHE"] = previous


# Few epochs: enough to learn well above chance in seconds; the CLI's ``--epochs 25`` hits the same cache entry.
SMALL_EPOCHS = 25


@pytest.fixture(scope="session")
def small_vanilla(small_world, model_cache):
    """The tiny LLaVA memorizing ``small_world`` (a few seconds of training, cached for the session)."""
    from manu_lite.finetune import TrainConfig, vanilla_model

    return vanilla_model(small_world, config=TrainConfig(epochs=SMALL_EPOCHS), progress=False)
