"""The pretrained base: the benchmark's own prompts on a population nobody scores, cached, and the start of the
vanilla and retain models."""
from __future__ import annotations

import pytest
import torch

from manu_lite.finetune import (TrainConfig, fine_tune_items, pretrained_base, retain_model, training_items,
                                vanilla_model, vanilla_records)
from manu_lite.models import PromptAdapter, TinySpec, build_tiny_llava, encode_item, tokenizer_of
from manu_lite.pretrain import BenchmarkPrompts, PretrainConfig, format_items, population, shifted
from manu_lite.protocol import mllmu_cloze_prompt, mllmu_generation_prompt, mllmu_letter, mllmu_mc_prompt

SMALL = PretrainConfig(people=20, seed=7, tasks=("mc_zero_shot",), epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def pretraining():
    full, train = population(PretrainConfig(people=20, seed=7))
    return full, train, format_items(full, train, seed=0)


def test_the_population_is_not_the_world(pretraining, small_world):
    full, _, _ = pretraining
    world_people = {r.name for r in small_world.forget + small_world.retain}
    assert len(full) == 20 and len({r.name for r in full} & world_people) < 3


def test_items_use_the_benchmarks_prompts_and_answers(pretraining):
    full, _, items = pretraining
    person = full[0]
    for rendering in ("image_text", "text_only"):
        if rendering == "image_text":
            ours = [i for i in items if i.rendering == rendering and i.image is person.image]
        else:
            ours = [i for i in items if i.rendering == rendering and person.name in i.question]
        rotations = {mllmu_mc_prompt(q.question, shifted(q, k).options, rendering): (q, shifted(q, k))
                     for q in person.mc[rendering] for k in range(4)}
        zero_shot = [i for i in ours if not i.prefix and i.question in rotations]
        assert sorted(i.question for i in zero_shot) == sorted(rotations)  # every rotation once
        for item in zero_shot:
            q, shown = rotations[item.question]
            # The letter the benchmark's parse reads names the true option text: letters cannot be memorised.
            assert shown.options[mllmu_letter(item.answer.strip(), shown.options)] == q.options[q.answer]
        few_shot = [i for i in ours if i.prefix and i.question in rotations]
        assert len(few_shot) == len(person.mc[rendering])
        for item in few_shot:
            assert item.prefix.count("Correct Answer:") == len(person.mc[rendering])  # one other profile
            assert item.answer == " " + rotations[item.question][1].answer
        for q in person.cloze[rendering]:
            cloze = [i for i in ours if i.question == mllmu_cloze_prompt(q.question, rendering)]
            assert len(cloze) == 1 and cloze[0].answer == " " + q.answer
            assert cloze[0].prefix.count("Correct Answer:") == 2 * len(person.cloze[rendering])  # two profiles
        for q in person.generation[rendering]:
            gen = [i for i in ours if i.question == mllmu_generation_prompt(q.question, rendering)]
            # image+text prompts end "ASSISTANT: " (space included), text-only ones "ASSISTANT:".
            assert len(gen) == 1 and gen[0].answer == (q.answer if rendering == "image_text" else " " + q.answer)
        if rendering == "text_only":
            assert all(person.name not in i.prefix for i in ours)  # shots are other people


def test_few_shot_items_come_from_another_person_and_encode(pretraining):
    full, _, items = pretraining
    processor = pretrained_processor(items)
    shots = [i for i in items if i.prefix]
    assert shots
    for item in shots[:: max(1, len(shots) // 12)]:
        assert len(item.prefix_images) == (item.prefix.count("<image>") if item.rendering == "image_text" else 0)
        encoded = encode_item(processor, BenchmarkPrompts(), item)
        assert encoded["input_ids"].shape[1] <= 1024


def pretrained_processor(items):
    """The processor pretrained_base builds: a tokenizer trained on the items' text (1200 tokens)."""
    from manu_lite.models import build_tiny_processor, train_tokenizer

    spec = TinySpec(max_positions=1024)
    return build_tiny_processor(train_tokenizer([i.prefix + i.question + i.answer for i in items], spec.vocab_size),
                                spec)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="choose from"):
        PretrainConfig(tasks=("essay",))
    with pytest.raises(ValueError, match="use >= 20"):
        PretrainConfig(people=5)
    with pytest.raises(ValueError, match="needs a pretrained base"):
        TrainConfig(replay=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainConfig(pretrain=SMALL, replay=-0.5)


def test_replay_mixes_the_bases_formats_into_the_fine_tune_and_encodes_the_pairs_unchanged(small_world, small_vanilla):
    _, processor, llava = small_vanilla
    records = vanilla_records(small_world)
    pairs = training_items(records)
    assert fine_tune_items(records, TrainConfig()) == (pairs, PromptAdapter("llava"))
    config = TrainConfig(pretrain=PretrainConfig(people=20, seed=7), replay=0.5)
    items, adapter = fine_tune_items(records, config)
    assert isinstance(adapter, BenchmarkPrompts) and len(items) == len(pairs) + round(0.5 * len(pairs))
    # The world's pairs, now full prompts, encode to the very tokens and labels LLaVA's plain prompt gives them.
    for plain, full in zip(pairs[:40:7], items[:40:7]):
        expected, got = encode_item(processor, llava, plain), encode_item(processor, adapter, full)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    # The replayed items are the base's own population in the benchmark's formats, a seeded draw.
    formats = format_items(*population(config.pretrain), config.pretrain.tasks, config.pretrain.train_seed)
    replayed = items[len(pairs):]

    def texts(batch):  # images are loaded anew by each population() call: compare what is written
        return [(i.rendering, i.prefix, i.question, i.answer) for i in batch]

    assert set(texts(replayed)) <= set(texts(formats)) and any("Just give ONE letter" in i.question for i in replayed)
    assert texts(fine_tune_items(records, config)[0]) == texts(items)
    reseeded = fine_tune_items(records, TrainConfig(pretrain=config.pretrain, replay=0.5, seed=1))[0]
    assert texts(reseeded[len(pairs):]) != texts(replayed)
    with pytest.raises(ValueError, match="has .* lower TrainConfig.replay or raise PretrainConfig.people"):
        fine_tune_items(records, TrainConfig(pretrain=config.pretrain, replay=100.0))


def test_the_base_is_cached_hash_checked_and_starts_vanilla_and_retain(small_world, model_cache):
    spec = TinySpec(max_positions=1024)
    base, processor = pretrained_base(spec, SMALL, progress=False)
    again, _ = pretrained_base(spec, SMALL, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), again.state_dict().values()))
    assert len(list(model_cache.glob("tiny-base-*"))) == 1
    config = TrainConfig(epochs=1, pretrain=SMALL)
    vanilla, vanilla_processor, _ = vanilla_model(small_world, spec, config, progress=False)
    retain, retain_processor, _ = retain_model(small_world, spec, config, progress=False)
    vocab = tokenizer_of(processor).get_vocab()
    assert tokenizer_of(vanilla_processor).get_vocab() == vocab == tokenizer_of(retain_processor).get_vocab()
    assert vanilla.config.text_config.max_position_embeddings == 1024
    # Fine-tuned from the base, not from a fresh init: one epoch leaves it far closer to the base than a new init is.
    fresh = build_tiny_llava(tokenizer_of(processor), spec, seed=SMALL.train_seed + 1)

    def distance(a, b):
        return sum(float((x - y).norm()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert 0 < distance(vanilla, base) < distance(fresh, base) / 3
