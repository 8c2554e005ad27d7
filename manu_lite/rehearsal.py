"""A CPU rehearsal of the ``colab`` and ``full`` paths: the hub names they load, written locally.

:func:`write_rehearsal_hub` fills a Hugging Face hub cache (the ``HF_HUB_CACHE`` layout) with

- ``MLLMMU/LLaVA_Vanilla``: a random-init ``LlavaForConditionalGeneration`` built from the published
  ``llava-hf/llava-1.5-7b-hf`` configuration (:data:`LLAVA_15_CONFIG`, every value as published) with depth and
  width cut down (:data:`LLAVA_CUT`), its 336-px CLIP image processor (:data:`LLAVA_15_PREPROCESSOR`, 576 image
  tokens) and its chat template (:data:`LLAVA_15_CHAT_TEMPLATE`);
- ``MLLMMU/Idefics2_Vanilla``: a random-init ``Idefics2ForConditionalGeneration`` of the same family as the
  benchmark's Idefics2-8B (Mistral text, SigLIP-style vision, a perceiver resampler with 64 latents), cut down,
  with the checkpoint's chat template (:data:`IDEFICS2_CHAT_TEMPLATE`);
- ``MLLMMU/MLLMU-Bench`` (dataset, at :data:`manu_lite.bench.HUB_REVISION`): the synthetic benchmark of
  :func:`manu_lite.synthetic.make_synthetic_bench` in the hub's layout, every config, portraits of
  :data:`BENCH_IMAGE_SIZE` px (JPEG with grain), ``Test_Set`` with transformed portraits, at the real sizes
  (:data:`BENCH_PROFILES` profiles, :data:`BENCH_CELEBRITIES` celebrities);
- ``MMMU/MMMU`` (dataset): the colab profile's MMMU subjects (:data:`MMMU_SUBJECTS`) in MMMU's schema and hub
  layout (``<Subject>/validation-00000-of-00001.parquet``), a few made-up questions each
  (:func:`write_mmmu_like`), so chapter 06 reads MMMU by its hub id as on Colab.

Each model gets a small Llama-style tokenizer (byte-fallback BPE, ``<s>``/``</s>``/``<unk>``), trained here on
the bench's own text, with ``<image>`` and ``<pad>`` appended after the base vocabulary as in LLaVA-1.5 (ids 32000
and 32001 there). Point ``HF_HOME`` (or ``HF_HUB_CACHE``) at the cache, set ``HF_HUB_OFFLINE=1``, and
``PROFILE="colab"`` runs the notebooks' code path on the CPU (bitsandbytes >= 0.49 runs NF4 there). The scores
mean nothing: the models are random. ``python -m manu_lite.rehearsal DIR`` writes one.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from .bench import CONFIGS, HUB_REVISION
from .synthetic import make_synthetic_bench

LLAVA_ID = "MLLMMU/LLaVA_Vanilla"
IDEFICS2_ID = "MLLMMU/Idefics2_Vanilla"
BENCH_ID = "MLLMMU/MLLMU-Bench"
MMMU_ID = "MMMU/MMMU"
# Chapter 06's colab subset of MMMU (its MMMU_PLAN); questions per subject in the rehearsal's copy.
MMMU_SUBJECTS = ("Art", "Biology", "Computer_Science", "Economics", "Math", "Physics")
MMMU_QUESTIONS = 4
# MLLMU-Bench's sizes: 500 fictitious profiles, 153 celebrities (min_look_distance=1: that many portraits cannot all
# be three attributes apart). Portraits: 1024-px JPEG with grain, which benchmarks/bench_host_memory.py sized to the
# hub's weight per image (~0.45 MB; retain_95 holds 226 MB for 475 rows); the hub's own pixel size is not checked.
BENCH_PROFILES, BENCH_CELEBRITIES = 500, 153
BENCH_IMAGE_SIZE, BENCH_GRAIN = 1024, 12.0

# llava-hf/llava-1.5-7b-hf config.json as published (transformers 4.36); the text sizes are LlamaConfig's defaults,
# which that file relies on (Vicuna-7B v1.5: hidden 4096, MLP 11008, 32 layers, 32 heads).
LLAVA_15_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu", "tie_word_embeddings": False,
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 32},
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                      "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
}
# What the rehearsal cuts. Widths stay multiples of 64: bitsandbytes' CPU layout packs NF4 weights in blocks of 64
# inputs and 32 outputs. Three vision layers with vision_feature_layer=-2 leave the last one unused, as the
# checkpoint's 24 do.
LLAVA_CUT = {"text_config": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_key_value_heads": 4},
             "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
                               "num_attention_heads": 4}}
# llava-hf/llava-1.5-7b-hf preprocessor_config.json and processor_config.json: CLIP ViT-L/14-336's preprocessing.
LLAVA_15_PREPROCESSOR = {
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 336},
}
LLAVA_15_PROCESSOR = {"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
                      "vision_feature_select_strategy": "default"}
# llava-hf/llava-1.5-7b-hf chat_template.json.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Idefics2-8B's shape (HuggingFaceM4/idefics2-8b): Mistral-7B text (hidden 4096, MLP 14336, 32 layers, 8 KV
# heads), SigLIP vision (hidden 1152, MLP 4304, 27 layers, patch 14, 980 px), a perceiver resampler of 64 latents;
# here cut to a few layers and 64-wide, at 224 px.
IDEFICS2_CUT = {"text_config": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-05},
                "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "patch_size": 14, "image_size": 224},
                "perceiver_config": {"resampler_n_latents": 64, "resampler_depth": 1, "resampler_n_heads": 4,
                                     "resampler_head_dim": 16, "num_key_value_heads": 2}}
# HuggingFaceM4/idefics2-8b processor_config.json "chat_template" (idefics2-8b-chatty has the same string).
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
BASE_VOCAB = 1024  # trained tokens; <image> and <pad> follow, and the embedding is padded to a multiple of 64


# ------------------------------------------------------------------------------------------------ hub cache
def hub_snapshot(cache: Path, repo_id: str, repo_type: str = "model", commit: str | None = None) -> Path:
    """The snapshot folder of ``repo_id`` in the hub cache ``cache`` (huggingface_hub's layout:
    ``<type>s--<org>--<name>/snapshots/<commit>/`` with ``refs/main`` naming the commit), created empty.

    ``commit`` defaults to a fixed hash of the id, so a rewritten cache has the same paths."""
    folder = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(f"manu-lite rehearsal {repo_id}".encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


# ------------------------------------------------------------------------------------------------ tokenizer
def bench_corpus(bench: Path) -> list[str]:
    """Every question, answer and biography of a bench directory (text columns only; no image is decoded)."""
    import pyarrow.parquet as pq

    texts = []
    for path in sorted(Path(bench).glob("ft_Data/*.parquet")):
        for metadata in pq.read_table(path, columns=["metadata"]).column("metadata").to_pylist():
            texts += [f"{p['Question']} {p['Answer']}" for p in json.loads(metadata)]
    for config in ("Full_Set", "Retain_Set"):
        for path in sorted(Path(bench).glob(f"{config}/*.parquet")):
            texts += pq.read_table(path, columns=["biography"]).column("biography").to_pylist()
    return texts


def llama_style_tokenizer(corpus: list[str], base_vocab: int = BASE_VOCAB, extra: dict[str, str] | None = None):
    """A Llama-style tokenizer trained on ``corpus``: byte-fallback BPE over ``▁``-marked words, ``<unk>``,
    ``<s>``, ``</s>`` at ids 0-2, a leading ``<s>``; then ``<image>`` at ``base_vocab``, ``<pad>`` after it and
    the ``extra`` special tokens (attribute name → token, e.g. Idefics2's ``image_boundary_token``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                        prepend_scheme="first")])
    trainer = trainers.BpeTrainer(vocab_size=base_vocab, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if tokenizer.get_vocab_size() != base_vocab:
        raise ValueError(f"the corpus ({len(corpus)} texts) yields {tokenizer.get_vocab_size()} tokens, fewer than "
                         f"base_vocab={base_vocab}; pass a smaller base_vocab")
    extra = {"image_token": "<image>", **(extra or {})}
    added = ["<image>", "<pad>", *[t for t in extra.values() if t != "<image>"]]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in added])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", extra_special_tokens=extra)


# ------------------------------------------------------------------------------------------------ models
def _merged(published: dict, cut: dict) -> dict:
    return {**published, **{k: {**published.get(k, {}), **v} for k, v in cut.items()}}


def llava_rehearsal(corpus: list[str], seed: int = 0):
    """``(model, processor)``: LLaVA-1.5-7B's configuration with :data:`LLAVA_CUT`, random init (seeded), and a
    tokenizer trained on ``corpus``."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = llama_style_tokenizer(corpus)
    image, pad = tokenizer.convert_tokens_to_ids(["<image>", "<pad>"])
    vocab = -(-len(tokenizer) // 64) * 64  # padded like 32064 = 32002 rounded up to 64
    values = _merged(LLAVA_15_CONFIG, LLAVA_CUT)
    values["text_config"] = {**values["text_config"], "vocab_size": vocab, "pad_token_id": pad,
                             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    values.update(vocab_size=vocab, image_token_index=image, pad_token_id=pad,
                  image_seq_length=(336 // 14) ** 2)
    for key in ("architectures", "model_type", "ignore_index"):
        values.pop(key)
    values["text_config"].pop("_name_or_path")
    config = LlavaConfig(**values)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = pad, tokenizer.eos_token_id
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(**LLAVA_15_PREPROCESSOR), tokenizer=tokenizer,
                               chat_template=LLAVA_15_CHAT_TEMPLATE, **LLAVA_15_PROCESSOR)
    return model, processor


def idefics2_rehearsal(corpus: list[str], seed: int = 0):
    """``(model, processor)``: an Idefics2-8B-shaped model with :data:`IDEFICS2_CUT`, random init (seeded), a
    tokenizer trained on ``corpus`` with Idefics2's special tokens, and the checkpoint's chat template."""
    from transformers import (Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessorPil,
                              Idefics2Processor)

    tokenizer = llama_style_tokenizer(corpus, extra={"image_boundary_token": "<fake_token_around_image>",
                                                     "end_of_utterance_token": "<end_of_utterance>"})
    vocab = -(-len(tokenizer) // 64) * 64
    values = {k: dict(v) for k, v in IDEFICS2_CUT.items()}
    values["text_config"].update(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    values["perceiver_config"].update(hidden_size=values["text_config"]["hidden_size"],
                                      rms_norm_eps=values["text_config"]["rms_norm_eps"])
    side = IDEFICS2_CUT["vision_config"]["image_size"]
    config = Idefics2Config(**values, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Idefics2ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = (tokenizer.pad_token_id,
                                                                                  tokenizer.eos_token_id)
    images = Idefics2ImageProcessorPil(do_image_splitting=False, size={"longest_edge": side, "shortest_edge": side})
    processor = Idefics2Processor(image_processor=images, tokenizer=tokenizer, chat_template=IDEFICS2_CHAT_TEMPLATE,
                                  image_seq_len=IDEFICS2_CUT["perceiver_config"]["resampler_n_latents"])
    return model, processor


# ------------------------------------------------------------------------------------------------ the cache
def write_rehearsal_hub(hf_home: str | Path, *, profiles: int = BENCH_PROFILES,
                        celebrities: int = BENCH_CELEBRITIES, image_size: int = BENCH_IMAGE_SIZE,
                        seed: int = 0) -> Path:
    """Write the rehearsal (both models, the bench and MMMU's colab subjects) into ``hf_home/hub`` and return that
    hub cache.

    Use it with ``HF_HOME=hf_home`` (or ``HF_HUB_CACHE=<returned path>``) and ``HF_HUB_OFFLINE=1``: then
    ``from_pretrained("MLLMMU/LLaVA_Vanilla")``, ``load_world("MLLMMU/MLLMU-Bench")`` and ``load_mmmu("MMMU/MMMU")``
    read it. A complete earlier cache (same arguments) is reused as it is.
    """
    cache = Path(hf_home) / "hub"
    stamp = cache / "manu_lite_rehearsal.json"
    arguments = {"profiles": profiles, "celebrities": celebrities, "image_size": image_size, "seed": seed,
                 "revision": HUB_REVISION, "mmmu": [list(MMMU_SUBJECTS), MMMU_QUESTIONS],
                 "idefics2_chat_template": True}
    if stamp.exists() and json.loads(stamp.read_text()) == arguments:
        return cache
    bench = hub_snapshot(cache, BENCH_ID, "dataset", commit=HUB_REVISION)
    make_synthetic_bench(bench, n_profiles=profiles, n_celebrities=celebrities, seed=seed, image_size=image_size,
                         image_format="JPEG", grain=BENCH_GRAIN, min_look_distance=1)
    missing = [c for c in CONFIGS if not (bench / c).is_dir()]
    if missing:
        raise RuntimeError(f"the synthetic bench lacks config(s) {missing}; the hub has {list(CONFIGS)}")
    corpus = bench_corpus(bench)
    for repo_id, build in ((LLAVA_ID, llava_rehearsal), (IDEFICS2_ID, idefics2_rehearsal)):
        model, processor = build(corpus, seed)
        snapshot = hub_snapshot(cache, repo_id)
        model.save_pretrained(snapshot)
        processor.save_pretrained(snapshot)
    write_mmmu_like(hub_snapshot(cache, MMMU_ID, "dataset"), MMMU_SUBJECTS, MMMU_QUESTIONS, seed=seed)
    stamp.write_text(json.dumps(arguments))
    return cache


def write_mmmu_like(root: str | Path, subjects=MMMU_SUBJECTS, questions: int = MMMU_QUESTIONS,
                    images_per_question=(1, 2, 3), image_size: int = 336, seed: int = 0) -> Path:
    """Made-up MMMU validation questions in MMMU's schema and hub layout:
    ``<root>/<Subject>/validation-00000-of-00001.parquet`` with MMMU's features (``id, question, options, explanation,
    image_1..image_7, img_type, answer, topic_difficulty, question_type, subfield``; images as the ``datasets``
    Image feature, unused ones null). Questions alternate multiple choice (options as the string of a Python list,
    a letter answer) and open (a list of accepted answers), with ``images_per_question`` cycled and cited as
    ``<image k>``. Seeded: the same arguments write the same files."""
    import io
    import random

    import datasets
    from PIL import Image

    rng = random.Random(seed)

    def png():
        buffer = io.BytesIO()
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (image_size, image_size), colour).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    text = ("id", "question", "options", "explanation")
    features = datasets.Features({**{name: datasets.Value("string") for name in text},
                                  **{f"image_{k}": datasets.Image() for k in range(1, 8)},
                                  **{name: datasets.Value("string") for name in
                                     ("img_type", "answer", "topic_difficulty", "question_type", "subfield")}})
    root = Path(root)
    for subject in subjects:
        rows = []
        for i in range(questions):
            m, mc = images_per_question[i % len(images_per_question)], i % 2 == 0
            mention = " and ".join(f"<image {k}>" for k in range(1, m + 1))
            value = rng.randrange(1, 5)
            rows.append({"id": f"validation_{subject}_{i + 1}", "question": f"Look at {mention}. What is the value of x?",
                         "options": "['1', '2', '3', '4']" if mc else "[]", "explanation": "",
                         "img_type": "['Diagrams']", "answer": "ABCD"[value - 1] if mc else f"['{value}']",
                         "topic_difficulty": "Easy", "question_type": "multiple-choice" if mc else "open",
                         "subfield": subject, **{f"image_{k}": png() if k <= m else None for k in range(1, 8)}})
        (root / subject).mkdir(parents=True, exist_ok=True)
        columns = {name: [row[name] for row in rows] for name in features}
        datasets.Dataset.from_dict(columns, features=features).to_parquet(
            str(root / subject / "validation-00000-of-00001.parquet"))
    return root


def time_steps(profile: str = "colab") -> dict:
    """Seconds per step of one MANU run on ``profile``, the way the notebooks run it: load the bench and the model
    (:mod:`manu_lite.profiles`), statistics and selection (:func:`~manu_lite.manu.manu_unlearn`), prune (apply the
    mask), evaluate (every set, task and rendering, pruned). Each step: ``[wall, cpu]`` seconds of this process
    (on a shared machine the wall time is inflated, the CPU time much less). Run it where the hub cache is
    configured (``HF_HOME``, ``HF_HUB_OFFLINE=1``; ``MANU_LITE_PEOPLE`` caps the sets); the figures go to the issue
    notes, not to tests."""
    import time

    from .evaluate import evaluate
    from .manu import manu_unlearn
    from .profiles import profile_eval, profile_manu, profile_model, profile_world

    times, clock = {}, [time.perf_counter(), time.process_time()]

    def lap(step):
        now = [time.perf_counter(), time.process_time()]
        times[step] = [round(now[0] - clock[0], 2), round(now[1] - clock[1], 2)]
        clock[:] = now

    world = profile_world(profile)
    lap("load bench")
    model, processor, adapter = profile_model(profile, world, progress=False)
    lap("load model")
    mask, report = manu_unlearn(model, processor, world.forget_train, world.retain_train, profile_manu(profile),
                                adapter=adapter, batch_size=4, progress=False)
    lap("statistics + selection")
    times["of which selection (wall)"] = round(report.timings["selection"], 2)
    with mask.applied(model):
        lap("prune")
        evaluate(model, processor, adapter, world, profile_eval(profile), method="MANU", progress=False)
        lap("evaluate")
    return {"world": repr(world), "mask mode": mask.mode, **times}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_home", help="the HF_HOME to write (the cache goes to HF_HOME/hub)")
    parser.add_argument("--profiles", type=int, default=BENCH_PROFILES)
    parser.add_argument("--celebrities", type=int, default=BENCH_CELEBRITIES)
    parser.add_argument("--image-size", type=int, default=BENCH_IMAGE_SIZE)
    parser.add_argument("--time", action="store_true", help="then time one colab run's steps (set HF_HOME to "
                        "hf_home and HF_HUB_OFFLINE=1 in the environment first)")
    args = parser.parse_args()
    print(write_rehearsal_hub(args.hf_home, profiles=args.profiles, celebrities=args.celebrities,
                              image_size=args.image_size))
    if args.time:
        print(json.dumps(time_steps(), indent=1))
