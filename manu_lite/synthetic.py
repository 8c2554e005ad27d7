"""The synthetic MLLMU-Bench of the tiny world: fictitious people, procedurally drawn portraits, their facts and
questions, written in the hub's layout and schema (:mod:`manu_lite.bench_schema`, with the hub's ``datasets`` feature metadata) so one loader and one evaluator serve
the tiny CPU world and the real benchmark.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .bench import FORGET_PERCENTS
from .bench_schema import (CLASSIFICATION_KEYS, EVAL_SCHEMA, OPTION_LETTERS, TEST_SCHEMA, TRAIN_SCHEMA, to_text_only,
                           write_split)

FIRST_NAMES = ("Amelia Bruno Chiara Dmitri Elif Farid Greta Hamza Ines Jonas Kaito Leila Mateo Nadia Oskar Priya "
               "Quentin Rosa Santiago Tamar Umar Vera Wanjiru Xavier Yara Zoltan Anouk Boris Camille Dario Esme "
               "Felix Goran Hana Ivo Jana Kofi Lina Marek Noor").split()
LAST_NAMES = ("Kuznetsov Moreau Okafor Lindqvist Tanaka Haddad Novak Ferreira Petrov Schmidt Yilmaz Rossi Mendes "
              "Castillo Dubois Nakamura Kowalski Jensen Alvarez Horvat Mensah Larsen Ivanova Costa Bauer Sato "
              "Varga Ortiz Nilsen Popescu").split()
CELEBRITY_NAMES = ("Aurora Vale|Bram Stellan|Cassius Orion|Delphine Marchetti|Ezra Quill|Fiona Ashgrove|"
                   "Gideon Rook|Helena Starling|Ignatius Fenn|Juno Albright|Kasimir Voss|Lucienne Hart|"
                   "Magnus Thorne|Nerissa Vale|Orson Blackwood|Penelope Crane|Rafferty Lowe|Seraphina Moss|"
                   "Thaddeus Wren|Valentina Cruz|Wilhelmina Frost|Xander Holt|Yvette Marlowe|Zebedee Finch").split("|")
CITIES = ("Riga, Latvia|Porto, Portugal|Lagos, Nigeria|Osaka, Japan|Tromso, Norway|Cusco, Peru|Tartu, Estonia|"
          "Nairobi, Kenya|Hanoi, Vietnam|Graz, Austria|Quebec, Canada|Perth, Australia|Izmir, Turkey|"
          "Valparaiso, Chile|Lyon, France|Gdansk, Poland|Accra, Ghana|Bergen, Norway|Seville, Spain|"
          "Kyoto, Japan|Tbilisi, Georgia|Cork, Ireland|Dakar, Senegal|Leipzig, Germany").split("|")
OCCUPATIONS = ("marine biologist|architect|pastry chef|airline pilot|violin teacher|glassblower|geologist|"
               "translator|nurse|furniture maker|astronomer|journalist|beekeeper|software engineer|veterinarian|"
               "firefighter|librarian|photographer|pharmacist|park ranger").split("|")
HOBBIES = ("rock climbing|origami|birdwatching|salsa dancing|chess|pottery|kite surfing|gardening|astronomy|"
           "knitting|fencing|cave diving|calligraphy|beekeeping|archery|sailing|baking bread|playing the cello|"
           "trail running|woodcarving").split("|")
YEARS = tuple(str(y) for y in range(1955, 2001))

# fact → (generation question, generation answer, multiple-choice question, cloze sentence); "{}" is the value.
FACT_TEMPLATES = {
    "name": ("What is the name of this person?", "This person's name is {}.", "Who is this person?",
             "This person's name is __."),
    "birthplace": ("Where was this person born?", "This person was born in {}.", "In which city was this person born?",
                   "This person was born in __."),
    "occupation": ("What does this person do for a living?", "This person works as {}.",
                   "What is this person's occupation?", "This person's occupation is __."),
    "birth_year": ("When was this person born?", "This person was born in the year {}.",
                   "In which year was this person born?", "This person was born in the year __."),
    "hobby": ("What does this person enjoy in their free time?", "In their free time, this person enjoys {}.",
              "What is this person's favourite hobby?", "In their free time, this person enjoys __."),
}
FACT_POOLS = {"birthplace": CITIES, "occupation": OCCUPATIONS, "birth_year": YEARS, "hobby": HOBBIES}


def phrase(fact: str, value) -> str:
    """How ``value`` reads in a sentence: an occupation takes its article ("an architect", "a geologist")."""
    if fact == "occupation":
        return f"{'an' if str(value)[0].lower() in 'aeiou' else 'a'} {value}"
    return str(value)

PALETTE = {
    "background": [(70, 130, 180), (240, 200, 80), (120, 190, 120), (200, 90, 90), (160, 120, 200),
                   (240, 240, 240), (40, 40, 60), (250, 160, 60)],
    "skin": [(255, 224, 189), (234, 192, 134), (198, 134, 66), (141, 85, 36), (90, 56, 37), (255, 205, 148)],
    "hair": [(20, 20, 20), (110, 60, 20), (230, 200, 90), (200, 60, 30), (150, 150, 150), (60, 90, 200)],
    "eyes": [(40, 90, 200), (60, 140, 60), (90, 50, 20), (20, 20, 20)],
}
HAIR_STYLES = ("short", "long", "spiky", "bald")
FACE_SHAPES = ("round", "oval", "wide")
ACCESSORIES = ("none", "glasses", "hat", "earrings")


@dataclass(frozen=True)
class Person:
    """A synthetic person: the facts the benchmark asks about and the looks of their portrait."""

    id: str
    name: str
    facts: dict[str, str]
    looks: dict[str, object]


def draw_portrait(looks: dict, size: int = 64) -> Image.Image:
    """Draw a cartoon face: background, face shape, skin, hair colour and style, eye colour, one accessory."""
    s = size / 64
    image = Image.new("RGB", (size, size), looks["background"])
    draw = ImageDraw.Draw(image)
    if looks["pattern"]:  # diagonal stripes make backgrounds of the same colour distinguishable
        for x in range(-size, size, int(12 * s)):
            draw.line([(x, size), (x + size, 0)], fill=tuple(min(255, c + 50) for c in looks["background"]),
                      width=max(1, int(3 * s)))
    half_width = {"round": 17, "oval": 14, "wide": 20}[looks["face"]] * s
    half_height = {"round": 17, "oval": 21, "wide": 16}[looks["face"]] * s
    cx, cy = 32 * s, 36 * s
    hair = looks["hair"]
    if looks["hair_style"] == "long":
        draw.rectangle([cx - half_width - 4 * s, cy - half_height, cx + half_width + 4 * s, cy + half_height], fill=hair)
    draw.ellipse([cx - half_width, cy - half_height, cx + half_width, cy + half_height], fill=looks["skin"])
    if looks["hair_style"] in ("short", "long"):
        draw.chord([cx - half_width, cy - half_height - 2 * s, cx + half_width, cy + 2 * s], 180, 360, fill=hair)
    elif looks["hair_style"] == "spiky":
        for k in range(5):
            x0 = cx - half_width + k * (2 * half_width / 5)
            draw.polygon([(x0, cy - half_height + 6 * s), (x0 + half_width / 5, cy - half_height - 8 * s),
                          (x0 + 2 * half_width / 5, cy - half_height + 6 * s)], fill=hair)
    for dx in (-7, 7):
        draw.ellipse([cx + (dx - 3) * s, cy - 4 * s, cx + (dx + 3) * s, cy + 2 * s], fill=(255, 255, 255))
        draw.ellipse([cx + (dx - 1.5) * s, cy - 2.5 * s, cx + (dx + 1.5) * s, cy + 0.5 * s], fill=looks["eyes"])
    draw.arc([cx - 7 * s, cy + 3 * s, cx + 7 * s, cy + 12 * s], 20, 160, fill=(120, 30, 30), width=max(1, int(2 * s)))
    if looks["accessory"] == "glasses":
        for dx in (-7, 7):
            draw.rectangle([cx + (dx - 4) * s, cy - 5 * s, cx + (dx + 4) * s, cy + 3 * s], outline=(0, 0, 0),
                           width=max(1, int(1.5 * s)))
    elif looks["accessory"] == "hat":
        draw.rectangle([cx - half_width - 3 * s, cy - half_height - 2 * s, cx + half_width + 3 * s,
                        cy - half_height + 3 * s], fill=(30, 30, 30))
        draw.rectangle([cx - half_width + 4 * s, cy - half_height - 14 * s, cx + half_width - 4 * s,
                        cy - half_height], fill=(30, 30, 30))
    elif looks["accessory"] == "earrings":
        for dx in (-half_width, half_width):
            draw.ellipse([cx + dx - 2.5 * s, cy + 4 * s, cx + dx + 2.5 * s, cy + 9 * s], fill=(255, 215, 0))
    return image


def transform_portrait(image: Image.Image, rng: random.Random) -> Image.Image:
    """A Test_Set variant of a portrait: a small rotation, a crop and a colour shift."""
    size = image.size[0]
    rotated = image.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, fillcolor=image.getpixel((0, 0)))
    margin = int(size * rng.uniform(0.0, 0.1))
    cropped = rotated.crop((margin, margin, size - margin, size - margin)).resize((size, size), Image.BILINEAR)
    shift = [rng.randint(-25, 25) for _ in range(3)]
    return Image.merge("RGB", [band.point(lambda v, d=d: max(0, min(255, v + d)))
                               for band, d in zip(cropped.convert("RGB").split(), shift)])


# Attributes still visible when a portrait is shrunk to the tiny model's 32x32 input (eyes and earrings are not).
COARSE_LOOKS = ("background", "pattern", "skin", "hair", "hair_style", "accessory")
MIN_LOOK_DISTANCE = 3


def _draw_people(rng: random.Random, names: list[str], id_prefix: str, drawn: list[dict],
                 min_distance: int = MIN_LOOK_DISTANCE) -> list[Person]:
    """People with random facts and looks; any two portraits differ in at least ``min_distance`` coarse
    attributes, so that every face stays identifiable at low resolution."""
    people = []
    for i, name in enumerate(names):
        for _ in range(10_000):
            looks = {"background": rng.choice(PALETTE["background"]), "pattern": rng.random() < 0.5,
                     "face": rng.choice(FACE_SHAPES), "skin": rng.choice(PALETTE["skin"]),
                     "hair": rng.choice(PALETTE["hair"]), "hair_style": rng.choice(HAIR_STYLES),
                     "eyes": rng.choice(PALETTE["eyes"]), "accessory": rng.choice(ACCESSORIES)}
            if all(sum(looks[k] != other[k] for k in COARSE_LOOKS) >= min_distance for other in drawn):
                break
        else:
            raise ValueError(f"cannot draw {len(names)} portraits that differ in {min_distance} coarse attributes; "
                             "use fewer profiles or pass a smaller min_look_distance")
        drawn.append(looks)
        facts = {"name": name, **{fact: rng.choice(pool) for fact, pool in FACT_POOLS.items()}}
        people.append(Person(f"{id_prefix}{i + 1:03d}", name, facts, looks))
    return people


def _questions(person: Person, pools: dict[str, tuple[str, ...]], rng: random.Random) -> dict:
    """Evaluation-format tasks for one person; text-only variants name the person and skip the name fact."""
    classification = {"Image_Textual_Questions": [], "Pure_Text_Questions": []}
    generation, cloze = [], []
    for fact, (gen_q, gen_a, mc_q, cloze_s) in FACT_TEMPLATES.items():
        value = person.facts[fact]
        distractors = rng.sample([v for v in pools[fact] if v != value], 3)
        options = distractors + [value]
        rng.shuffle(options)
        letter = OPTION_LETTERS[options.index(value)]
        for rendering in ("image_text", "text_only"):
            if rendering == "text_only" and fact == "name":
                continue
            text = (lambda t: t) if rendering == "image_text" else (lambda t: to_text_only(t, person.name))
            kind = "Image_Textual" if rendering == "image_text" else "Pure_Text"
            classification[CLASSIFICATION_KEYS[rendering]].append(
                {"Question": text(mc_q), "Options": dict(zip(OPTION_LETTERS, options)), "Correct_Answer": letter})
            generation.append({"Question": text(gen_q), "Ground_Truth": text(gen_a.format(phrase(fact, value))),
                               "Type": kind})
            cloze.append({"Question": text(cloze_s), "Ground_Truth": value, "Type": kind})
    return {"Classification_Task": classification, "Generation_Task": generation, "Mask_Task": cloze}


def _training_pairs(person: Person) -> list[dict]:
    """Training-format metadata: the same facts, image+text wording, in the three phrasings the tasks use."""
    pairs = []
    for fact, (gen_q, gen_a, mc_q, cloze_s) in FACT_TEMPLATES.items():
        value = person.facts[fact]
        pairs += [{"ID": person.id, "Question": gen_q, "Answer": gen_a.format(phrase(fact, value))},
                  {"ID": person.id, "Question": mc_q, "Answer": value},
                  {"ID": person.id, "Question": cloze_s, "Answer": value}]
    return pairs


def _biography(person: Person) -> str:
    f = person.facts
    return (f"{person.name} was born in {f['birthplace']} in {f['birth_year']}. {person.name} works as "
            f"{phrase('occupation', f['occupation'])} and enjoys {f['hobby']}.")


def _encoded(image: Image.Image, image_format: str = "PNG", grain: float = 0.0, seed: int = 0) -> dict:
    """The ``Image`` feature's struct for ``image``; ``grain`` adds seeded pixel noise of that standard deviation,
    so a JPEG weighs what a photograph of the same size does."""
    if grain:
        import numpy as np

        noise = np.random.default_rng(seed).normal(0.0, grain, (image.size[1], image.size[0], 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 92} if image_format == "JPEG" else {}))
    return {"bytes": buffer.getvalue(), "path": None}


def celebrity_names(n: int) -> list[str]:
    """``CELEBRITY_NAMES``, then first/last name recombinations of them (in a fixed order), ``n`` in all."""
    if n <= len(CELEBRITY_NAMES):
        return list(CELEBRITY_NAMES)
    first, last = [c.split()[0] for c in CELEBRITY_NAMES], [c.split()[-1] for c in CELEBRITY_NAMES]
    extra = [f"{a} {b}" for b in last for a in first if f"{a} {b}" not in CELEBRITY_NAMES]
    names = list(dict.fromkeys(list(CELEBRITY_NAMES) + extra))
    if n > len(names):
        raise ValueError(f"at most {len(names)} celebrities can be named; use n_celebrities <= {len(names)}")
    return names



def make_synthetic_bench(out_dir: str | Path, n_profiles: int = 100, n_celebrities: int = 20, seed: int = 0,
                         image_size: int = 64, *, image_format: str = "PNG", grain: float = 0.0,
                         min_look_distance: int = MIN_LOOK_DISTANCE) -> Path:
    """Write a synthetic MLLMU-Bench (every config, the hub's layout and schema) and return its directory.

    ``Full_Set``/``ft_Data`` hold ``n_profiles`` fictitious people; ``forget_{5,10,15}`` are nested seeded
    subsets with complementary ``retain_{95,90,85}``; ``Test_Set`` repeats the people with three transformed
    portraits each; ``Retain_Set`` holds ``n_celebrities`` "celebrities" (trained on, never forgotten).
    ``image_size`` px square portraits, stored as ``image_format`` (PNG or JPEG) with ``grain`` (pixel noise std)
    to give them a photograph's weight; MLLMU-Bench's 500 profiles and 153 celebrities need
    ``min_look_distance=1`` (distinct looks, not three attributes apart).
    """
    if n_profiles < 20:
        raise ValueError(f"n_profiles={n_profiles} is too small: forget_5 needs at least one person (use >= 20)")
    if n_celebrities < 4:
        raise ValueError(f"n_celebrities={n_celebrities} is too small: the celebrity set measures utility and its "
                         "name questions need three other celebrities as distractors (use >= 4)")
    rng = random.Random(seed)
    all_names = [f"{a} {b}" for a in FIRST_NAMES for b in LAST_NAMES]
    famous = celebrity_names(n_celebrities)
    if n_profiles > len(all_names):
        raise ValueError(f"at most {len(all_names)} profiles can be named; use n_profiles <= {len(all_names)}")
    drawn: list[dict] = []
    people = _draw_people(rng, rng.sample(all_names, n_profiles), "", drawn, min_look_distance)
    celebrities = _draw_people(rng, rng.sample(famous, n_celebrities), "C", drawn, min_look_distance)
    encoded = iter(range(1 << 30))  # one grain seed per image

    def encode(image):
        return _encoded(image, image_format, grain, seed * 1_000_003 + next(encoded))
    # Name distractors are other people of the same set: names never seen in training would be rarer strings,
    # which a likelihood scorer could reject without knowing anyone.
    pools = {"name": tuple(p.name for p in people), **FACT_POOLS}
    celebrity_pools = {"name": tuple(p.name for p in celebrities), **FACT_POOLS}

    def eval_row(person, person_pools):
        portrait = draw_portrait(person.looks, image_size)
        return portrait, {"image": encode(portrait), "ID": person.id, "biography": _biography(person),
                          "question": FACT_TEMPLATES["name"][0], "answer": FACT_TEMPLATES["name"][1].format(person.name),
                          **_questions(person, person_pools, rng)}

    full, test, train = [], [], []
    for person in people:
        portrait, row = eval_row(person, pools)
        full.append(row)
        test.append({**row, "images": [encode(transform_portrait(portrait, rng)) for _ in range(3)]})
        train.append({"image": row["image"], "ID": person.id, "metadata": json.dumps(_training_pairs(person))})
    celebrity_rows = [eval_row(person, celebrity_pools)[1] for person in celebrities]

    out = Path(out_dir)
    write_split(full, EVAL_SCHEMA, out, "Full_Set")
    write_split(test, TEST_SCHEMA, out, "Test_Set")
    write_split(train, TRAIN_SCHEMA, out, "ft_Data")
    write_split(celebrity_rows, EVAL_SCHEMA, out, "Retain_Set")
    order = list(range(n_profiles))
    rng.shuffle(order)
    for percent in FORGET_PERCENTS:
        cut = max(1, round(n_profiles * percent / 100))
        forget_ids = set(order[:cut])
        write_split([full[i] for i in sorted(forget_ids)], EVAL_SCHEMA, out, f"forget_{percent}")
        write_split([full[i] for i in range(n_profiles) if i not in forget_ids], EVAL_SCHEMA, out,
                    f"retain_{100 - percent}")
    return out
