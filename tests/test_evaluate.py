"""Metrics on hand-computed cases, the results format, and batched generation equal to one-by-one."""
from __future__ import annotations

import pytest
from manu_lite.evaluate import (EvalConfig, Results, cloze_correct, evaluate, first_letter, generate,
                                option_logprobs, rouge_l)
from manu_lite.models import Item, PromptAdapter, build_tiny, encode


def test_rouge_l_hand_computed():
    # LCS of "the cat sat on the mat" / "the cat lay on a mat" is "the cat on mat": 4 of 6 words each way.
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(4 / 6)
    # Stemming: "running" and "runs" share the stem "run".
    assert rouge_l("she runs", "she running") == pytest.approx(1.0)
    assert rouge_l("abc", "xyz") == 0.0


def test_cloze_and_first_letter():
    assert cloze_correct("Riga, Latvia", "I think riga, latvia.")
    assert not cloze_correct("Riga", "Oslo")
    options = {"A": "x", "B": "y", "C": "z", "D": "w"}
    assert first_letter(" b) y", options) == "B"
    assert first_letter("The answer is B", options) is None
    assert first_letter("", options) is None


def test_eval_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="mc_protocol"):
        EvalConfig(mc_protocol="logits")
    with pytest.raises(ValueError, match="unknown set"):
        EvalConfig(sets=("forget", "holdout"))


@pytest.fixture(scope="module")
def random_tiny():
    corpus = ["USER: Where was this person born?\nASSISTANT: This person was born in Riga, Latvia.",
              "USER: What does Ann Lee do?\nASSISTANT: Ann Lee works as a nurse."] * 20
    return build_tiny(corpus)


def test_prompts_and_labels_mark_answer_tokens_only(random_tiny):
    model, processor, adapter = random_tiny
    assert adapter.prompt("Q?", "image_text") == "USER: <image>\nQ?\nASSISTANT:"
    assert adapter.prompt("Q?", "text_only") == "USER: Q?\nASSISTANT:"
    from PIL import Image

    image = Image.new("RGB", (40, 40), (10, 200, 30))
    batch = encode(processor, adapter, [Item("Where was this person born?", "image_text", image, "Riga"),
                                        Item("Who?", "image_text", image, "Ann Lee")])
    tokenizer = processor.tokenizer
    for row, answer in zip(range(2), ("Riga", "Ann Lee")):
        answer_ids = batch["labels"][row][batch["labels"][row] != -100]
        assert tokenizer.decode(answer_ids, skip_special_tokens=True).strip() == answer
        assert answer_ids[-1] == tokenizer.eos_token_id
    # 16 image tokens per image (32x32, patch 8, CLS dropped), padding masked out.
    image_id = model.config.image_token_index
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [16, 16]
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="mixes renderings"):
        encode(processor, adapter, [Item("a", "text_only"), Item("b", "image_text", image)])


def test_batched_generation_and_scores_match_one_by_one(random_tiny):
    model, processor, adapter = random_tiny
    from PIL import Image

    items = [Item("Where was this person born?", "image_text", Image.new("RGB", (32, 32), (i * 40, 0, 0)))
             for i in range(3)] + [Item("What does Ann Lee do?" + " really" * i, "text_only") for i in range(3)]
    config = EvalConfig(max_new_tokens=6, batch_size=4)
    batched = generate(model, processor, adapter, items, config)
    single = [generate(model, processor, adapter, [item], config)[0] for item in items]
    assert batched == single
    scored = [Item(i.question, i.rendering, i.image, "Riga") for i in items]
    together = option_logprobs(model, processor, adapter, scored, batch_size=6)
    alone = [option_logprobs(model, processor, adapter, [item], batch_size=1)[0] for item in scored]
    assert together == pytest.approx(alone, abs=1e-4)


def test_option_logprobs_share_the_prompt_and_equal_full_forward_passes(random_tiny, monkeypatch):
    """The options of a question (one prompt, one image object) are scored from one pass over the prompt: the
    model sees each image once, and every score equals the full forward pass's (answer_nll over prompt + option)."""
    import torch
    from PIL import Image
    from manu_lite import likelihood
    from manu_lite.models import answer_nll, collate, encode_item

    model, processor, adapter = random_tiny
    image = Image.new("RGB", (32, 32), (200, 40, 0))
    options = ["Riga", "Oslo in Norway", "Lima", "a small town near Porto"]
    items = ([Item("Where was this person born?", "image_text", image, o) for o in options]
             + [Item("Where was Ann Lee born?", "text_only", None, o) for o in options])
    images_seen = []
    handle = model.model.vision_tower.register_forward_hook(lambda m, a, out: images_seen.append(a[0].shape[0]))
    try:
        shared = option_logprobs(model, processor, adapter, items, batch_size=4)
    finally:
        handle.remove()
    assert images_seen == [1]  # one image through the tower for the image+text question's four options
    with torch.no_grad():
        full = [-float(answer_nll(model, collate([encode_item(processor, adapter, it, add_eos=False)],
                                                 processor.tokenizer.pad_token_id), per_sequence=True)[0])
                for it in items]
    assert shared == pytest.approx(full, abs=1e-4)
    # A model type outside SHARED_PROMPT_MODELS takes the full forward passes, with the same scores.
    monkeypatch.setattr(likelihood, "SHARED_PROMPT_MODELS", frozenset())
    assert option_logprobs(model, processor, adapter, items, batch_size=3) == pytest.approx(full, abs=1e-4)


def test_results_records_and_table():
    results = Results([{"method": "vanilla", "set": "forget", "rendering": "image_text", "task": "mc",
                        "metric": "accuracy", "value": 0.5, "n": 4}])
    assert results.value("vanilla", "forget", "mc", "image_text") == 0.5
    assert results.table().iloc[0, 0] == 50.0
    with pytest.raises(KeyError, match="no result"):
        results.value("manu", "forget", "mc", "image_text")


def test_untrained_model_scores_near_chance(small_world):
    """A random-init model knows nothing: multiple choice near 25 %, no generation matches."""
    from manu_lite.finetune import tokenizer_corpus, vanilla_records

    model, processor, adapter = build_tiny(tokenizer_corpus(vanilla_records(small_world), PromptAdapter()))
    mc = evaluate(model, processor, adapter, small_world, EvalConfig(sets=("retain",), tasks=("mc",)), progress=False)
    assert all(r["value"] < 0.45 for r in mc), list(mc)
    config = EvalConfig(instructions=False, max_new_tokens=8, sets=("celebrity",), tasks=("generation", "cloze"))
    open_ended = evaluate(model, processor, adapter, small_world, config, progress=False)
    assert all(r["value"] < 0.2 for r in open_ended), list(open_ended)
    assert {(r["set"], r["rendering"], r["task"], r["metric"]) for r in list(mc) + list(open_ended)} == {
        (s, rendering, task, metric) for rendering in ("image_text", "text_only")
        for s, task, metric in (("retain", "mc", "accuracy"), ("celebrity", "generation", "rougeL"),
                                ("celebrity", "cloze", "accuracy"))}
    assert all(0 <= r["value"] <= 1 and r["n"] > 0 for r in list(mc) + list(open_ended))
