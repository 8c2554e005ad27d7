"""Find the MLP neurons of a multimodal LLM and record their activations.

A *neuron* is one unit of an MLP's intermediate layer. For a Llama-style MLP
``down_proj(act(gate_proj x) * up_proj x)`` the neuron activations are the **input of** ``down_proj``; for a
CLIP/ViT-style MLP ``fc2(act(fc1 x))`` they are the input of ``fc2``; for a fused Phi-3-style MLP
``down_proj(act(gate) * up)`` with ``gate, up = gate_up_proj(x).chunk(2)`` they are again the input of
``down_proj`` (the product). A :class:`NeuronSite` names one such MLP (``"language.3.down_proj"``,
``"vision.1.fc2"``), and :func:`record_neurons` attaches a forward pre-hook to its output projection, in the spirit
of TransformerLens' hook points, as a context manager that always cleans up.

Sites are found by *structure*, not by hard-coded paths, so the same code serves LLaVA, Qwen2-VL, Qwen3-VL,
Idefics2/3, Phi-4-multimodal, Llama-4 and other ``transformers`` MLLMs. Nothing is dropped in silence: a requested
tower without sites, or a layer of a tower without one, is an error (a warning with ``strict=False``), and
:func:`site_table` lists every MLP-like module with what was made of it (routed MoE experts, whose fused
per-expert weights have no ``nn.Linear`` to hook, are listed as excluded, and :func:`find_sites` warns)::

    sites = find_sites(model)                      # [NeuronSite('language.0.down_proj', width=11008), ...]
    with record_neurons(model, sites, lambda site, acts: print(site.name, acts.shape)):
        model(**inputs)
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .config import POSITIONS
# The hooks API is sites + recording: the site names are re-exported so that ``manu_lite.hooks`` is the one import
# of chapter 02.
from .sites import (MLP_LAYOUTS, NeuronSite, SiteWarning, candidate_sites, execution_device,  # noqa: F401
                    find_sites, register_mlp_layout, site_layer, site_table, site_tower, unused_layers,
                    unused_sites)


@contextlib.contextmanager
def record_neurons(model: nn.Module, sites: Iterable[NeuronSite],
                   fn: Callable[[NeuronSite, torch.Tensor], None]) -> Iterator[list[NeuronSite]]:
    """Call ``fn(site, activations)`` whenever a site's output projection runs, inside the ``with`` block.

    ``activations`` is the input of ``out_proj``, shape ``[..., width]`` (``[B, T, width]`` in the language
    model, ``[n_images, patches, width]`` or ``[patches, width]`` in a vision tower). ``fn`` must not modify it.
    Hooks are forward *pre*-hooks on ``out_proj``; they are removed on exit, also when the block raises.
    """
    sites = list(sites)
    owned = {id(m) for m in model.modules()}
    strangers = [s.name for s in sites if id(s.mlp) not in owned]
    if strangers:
        raise ValueError(f"sites {strangers} belong to another model instance; call find_sites(model) on this one")
    handles = []
    try:
        for site in sites:
            # Bind the site now: a closure over the loop variable would see only the last site.
            def hook(module, args, site=site):
                fn(site, args[0])
            handles.append(site.out_module.register_forward_pre_hook(hook))
        yield sites
    finally:
        for handle in handles:
            handle.remove()


def token_mask_from_batch(batch: Mapping[str, torch.Tensor], positions: str) -> torch.Tensor:
    """Which token positions of a batch feed the language-model statistics, as a bool ``[B, T]`` tensor.

    ``"all"``:    every non-padding position (``attention_mask``; every position when there is none).
    ``"recall"``: positions ``t`` whose *next* token is an answer token, ``labels[:, t + 1] != -100`` — the
                  positions whose prediction recalls the fact — restricted to non-padding positions.
    """
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose one of {POSITIONS}")
    input_ids = batch.get("input_ids")
    if input_ids is None:
        raise ValueError("the batch has no 'input_ids'; a batch is a dict of model inputs plus 'labels'")
    attention = batch.get("attention_mask")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention is None else attention.bool()
    if positions == "all":
        return mask
    labels = batch.get("labels")
    if labels is None:
        raise ValueError("positions='recall' needs 'labels' in the batch (-100 everywhere except answer tokens); "
                         "add them or use positions='all'")
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}; "
                         "they must align token by token")
    recall = torch.zeros_like(mask)
    recall[:, :-1] = labels[:, 1:] != -100
    return recall & mask
