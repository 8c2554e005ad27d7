"""Tiny random-init MLLMs of real ``transformers`` classes, with hand-built batches (no processor, no hub).

``BUILDERS`` holds the four families of the core tests; ``ALL_BUILDERS`` adds LLaVA-NeXT (anyres tiles),
Qwen2.5-VL (gated vision MLPs, windowed attention), PaliGemma (Gemma text, SigLIP vision) and SmolVLM.
Each builder returns ``(model, make_batch)``; ``make_batch(batch_size, seq_len, seed, image=True)`` returns a
batch dict of model inputs plus ``labels`` (-100 except a few answer tokens at the end, before any padding),
with right padding of varying length so that padding handling is exercised. Image tokens are placed in
``input_ids`` as the models expect in transformers 5 (the processor would have expanded them).
"""
from __future__ import annotations

import torch
from manu_lite.hooks import record_neurons, token_mask_from_batch
from transformers import (
    CLIPVisionConfig,
    GemmaConfig,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

VOCAB = 128
IMAGE_TOKEN = 120
PAD = 0
ANSWER_LEN = 4
_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, pad_token_id=PAD)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
               patch_size=8)


def _text_batch(batch_size, seq_len, seed, image_tokens: int, prefix: list[int] = ()):
    """input_ids/attention_mask/labels [B, T]: [prefix, image tokens, question, answer, padding]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch_size, seq_len), generator=g)
    attention = torch.ones(batch_size, seq_len, dtype=torch.long)
    labels = torch.full((batch_size, seq_len), -100)
    start = len(prefix)
    for b in range(batch_size):
        length = seq_len - (b % 3) * 2  # rows 1, 2 (mod 3) are right-padded
        ids[b, :start] = torch.tensor(list(prefix), dtype=torch.long)
        ids[b, start:start + image_tokens] = IMAGE_TOKEN
        ids[b, length:] = PAD
        attention[b, length:] = 0
        labels[b, length - ANSWER_LEN:length] = ids[b, length - ANSWER_LEN:length]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}, g


def tiny_llava(seed: int = 0):
    """LLaVA: Llama text (hidden 64, 2 layers, MLP 256) + CLIP vision (hidden 32, 2 layers, 32 px, patch 8)."""
    torch.manual_seed(seed)
    config = LlavaConfig(text_config=LlamaConfig(**_TEXT), vision_config=CLIPVisionConfig(**_VISION),
                         image_token_index=IMAGE_TOKEN, vision_feature_select_strategy="default",
                         vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(config).eval()
    n_image_tokens = (32 // 8) ** 2  # "default" strategy drops CLS

    def make_batch(batch_size=4, seq_len=32, seed=0, image=True):
        batch, g = _text_batch(batch_size, seq_len, seed, n_image_tokens if image else 0)
        if image:
            batch["pixel_values"] = torch.randn(batch_size, 3, 32, 32, generator=g)
        return batch

    return model, make_batch


_QWEN_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
_QWEN_TOKENS = dict(image_token_id=IMAGE_TOKEN, vision_start_token_id=121, vision_end_token_id=122, video_token_id=123)


def _qwen_make_batch(grid=(1, 4, 4), patch=4, temporal=2, merge=2):
    """Qwen2-VL/2.5-VL batches: flattened patches ``[n_patches, 3 * temporal * patch²]``, ``image_grid_thw``
    ``[B, 3]``, and ``<vision_start> image tokens <vision_end>`` (the merger folds merge² patches into a token)."""
    n_image_tokens = grid[0] * grid[1] * grid[2] // merge ** 2

    def make_batch(batch_size=4, seq_len=32, seed=0, image=True):
        batch, g = _text_batch(batch_size, seq_len, seed, n_image_tokens if image else 0, prefix=[5, 121] if image
                               else [5])
        if image:
            batch["input_ids"][:, 2 + n_image_tokens] = 122
            batch["pixel_values"] = torch.randn(batch_size * grid[0] * grid[1] * grid[2], 3 * temporal * patch * patch,
                                                generator=g)
            batch["image_grid_thw"] = torch.tensor([grid] * batch_size)
            batch["mm_token_type_ids"] = (batch["input_ids"] == IMAGE_TOKEN).int()
        return batch

    return make_batch


def tiny_qwen2_vl(seed: int = 0):
    """Qwen2-VL: Qwen2 text (hidden 64, 2 layers, MLP 256) + its vision blocks (embed 32, fc1/fc2 MLP 64)."""
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config=dict(_QWEN_TEXT),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        **_QWEN_TOKENS)
    return Qwen2VLForConditionalGeneration(config).eval(), _qwen_make_batch()


def tiny_qwen2_5_vl(seed: int = 0):
    """Qwen2.5-VL: Qwen2 text + vision blocks with *gated* MLPs (gate/up/down, width 64), windowed attention in
    block 0 (a 16 px window = 2x2 merged tokens of the 4x4-patch grid) and full attention in block 1."""
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(_QWEN_TEXT),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        **_QWEN_TOKENS)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), _qwen_make_batch()


def tiny_llava_next(seed: int = 0):
    """LLaVA-NeXT: the LLaVA towers with anyres tiling. Grid pinpoints 32x32, 32x64, 64x32, 64x64 on 32 px tiles;
    images of size 32x64 (rows 0, 2, …: 2 tiles side by side) and 64x32 (rows 1, 3, …: 2 tiles stacked) come
    as the base view plus 2 tiles, ``pixel_values`` ``[B, 3, 3, 32, 32]`` and ``image_sizes`` ``[B, 2]``. Each
    gives 16 base tokens + 32 tile tokens + one ``image_newline`` per row of tile features: 52 and 56 tokens."""
    torch.manual_seed(seed)
    config = LlavaNextConfig(text_config=LlamaConfig(**_TEXT), vision_config=CLIPVisionConfig(**_VISION),
                             image_token_index=IMAGE_TOKEN, vision_feature_select_strategy="default",
                             vision_feature_layer=-1, image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]])
    model = LlavaNextForConditionalGeneration(config).eval()
    sizes, tokens = ((32, 64), (64, 32)), (52, 56)

    def make_batch(batch_size=4, seq_len=72, seed=0, image=True):
        if not image:
            return _text_batch(batch_size, seq_len, seed, 0)[0]
        rows = []
        for b in range(batch_size):  # one row at a time: the two image shapes need different token counts
            row, g = _text_batch(1, seq_len, seed * 1000 + b, tokens[b % 2])
            length = seq_len - (b % 3) * 2  # the padding pattern of _text_batch, applied per row
            row["input_ids"][0, length:], row["attention_mask"][0, length:] = PAD, 0
            row["labels"][0, :] = -100
            row["labels"][0, length - ANSWER_LEN:length] = row["input_ids"][0, length - ANSWER_LEN:length]
            row["pixel_values"] = torch.randn(1, 3, 3, 32, 32, generator=g)
            row["image_sizes"] = torch.tensor([sizes[b % 2]])
            rows.append(row)
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}

    return model, make_batch


def tiny_paligemma(seed: int = 0):
    """PaliGemma: Gemma text (gate/up/down, hidden 64, MLP 256, head_dim 16) + SigLIP vision (fc1/fc2, no
    pooling head) — 16 image tokens first, then the prompt. ``token_type_ids`` mark the answer (suffix) tokens
    with 1, as the PaliGemma processor does: the prefix attends bidirectionally, the suffix causally."""
    torch.manual_seed(seed)
    text = GemmaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=16, pad_token_id=PAD, bos_token_id=1,
                       eos_token_id=2)
    vision = SiglipVisionConfig(**_VISION, vision_use_head=False)
    config = PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN, vocab_size=VOCAB,
                             projection_dim=64, hidden_size=64)
    model = PaliGemmaForConditionalGeneration(config).eval()

    def make_batch(batch_size=4, seq_len=32, seed=0, image=True):
        batch, g = _text_batch(batch_size, seq_len, seed, 16 if image else 0)
        batch["token_type_ids"] = (batch["labels"] != -100).long()
        if image:
            batch["pixel_values"] = torch.randn(batch_size, 3, 32, 32, generator=g)
        return batch

    return model, make_batch


def _idefics(config_cls, model_cls, seed, **extra):
    torch.manual_seed(seed)
    config = config_cls(text_config=dict(model_type="llama", **_TEXT), vision_config=_VISION,
                        image_token_id=IMAGE_TOKEN, **extra)
    model = model_cls(config).eval()

    def make_batch(batch_size=4, seq_len=32, seed=0, image=True):
        batch, g = _text_batch(batch_size, seq_len, seed, 4 if image else 0, prefix=[5])
        if image:
            batch["pixel_values"] = torch.randn(batch_size, 1, 3, 32, 32, generator=g)
        return batch

    return model, make_batch


def tiny_idefics3(seed: int = 0):
    """Idefics3: Llama text + SigLIP-style vision (32 px, patch 8: 16 patches, pixel shuffle 2 -> 4 tokens)."""
    return _idefics(Idefics3Config, Idefics3ForConditionalGeneration, seed, scale_factor=2)


def tiny_idefics2(seed: int = 0):
    """Idefics2: Llama text + vision + a perceiver connector with 4 latents (-> 4 image tokens)."""
    return _idefics(Idefics2Config, Idefics2ForConditionalGeneration, seed,
                    perceiver_config=dict(hidden_size=64, resampler_n_latents=4, resampler_depth=1,
                                          resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1))


def tiny_smolvlm(seed: int = 0):
    """SmolVLM (Idefics3's successor class): Llama text + SigLIP-style vision, pixel shuffle 2 -> 4 tokens."""
    return _idefics(SmolVLMConfig, SmolVLMForConditionalGeneration, seed, scale_factor=2)


BUILDERS = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "idefics3": tiny_idefics3, "idefics2": tiny_idefics2}
ALL_BUILDERS = {**BUILDERS, "llava_next": tiny_llava_next, "qwen2_5_vl": tiny_qwen2_5_vl,
                "paligemma": tiny_paligemma, "smolvlm": tiny_smolvlm}


# ------------------------------------------------------------------ helpers shared by the hooks/prune/stats tests
def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def record(model, batch, sites):
    out = {}
    with record_neurons(model, sites, lambda s, a: out.__setitem__(s.name, a.detach().clone())), torch.no_grad():
        logits = model(**inputs(batch)).logits
    return out, logits


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} differs after restore"


def direct_stats(acts: torch.Tensor, tau: float) -> dict:
    """Plain float64 formulas on stored activations [N, W]."""
    a = acts.double()
    return {"count": a.shape[0], "sum_abs": a.abs().sum(0), "sum": a.sum(0), "sum_sq": (a ** 2).sum(0),
            "count_above": (a.abs() > tau).sum(0).double()}


def stored_activations(model, batches, sites, positions):
    """Every recorded activation, kept rows only: language by the token mask, vision all patches."""
    rows = {s.name: [] for s in sites}
    for batch in batches:
        keep = token_mask_from_batch(batch, positions).reshape(-1)
        def store(site, acts):
            x = acts.reshape(-1, site.width)
            rows[site.name].append(x[keep] if site.tower == "language" else x)
        with record_neurons(model, sites, store), torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    return {name: torch.cat(r) for name, r in rows.items()}

