"""Hand-built MLLMU-Bench rows (evaluation and training format) and a raw parquet writer that bypasses the
package's schema, for the loader and error-catalogue tests."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(color=(200, 10, 10)) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def eval_row(pid="042", image=None):
    return {
        "image": image or png(), "ID": pid, "biography": "bio", "question": "q", "answer": "a",
        "Classification_Task": {
            "Image_Textual_Questions": [{"Question": "Where was this person born?",
                                         "Options": {"A": "Oslo", "B": "Riga", "C": "Lima", "D": "Pune"},
                                         "Correct_Answer": "B"}],
            "Pure_Text_Questions": [{"Question": "Where was Ann Lee born?",
                                     "Options": {"A": "Oslo", "B": "Riga", "C": "Lima", "D": "Pune"},
                                     "Correct_Answer": "B"}]},
        "Generation_Task": [{"Question": "What is the name of this person?", "Ground_Truth": "This person's name is Ann Lee.",
                             "Type": "Image_Textual"},
                            {"Question": "Where was Ann Lee born?", "Ground_Truth": "Ann Lee was born in Riga.",
                             "Type": "Pure_Text"}],
        "Mask_Task": [{"Question": "This person was born in __.", "Ground_Truth": "Riga", "Type": "Image_Textual"}],
    }


def train_row(pid="042"):
    pairs = [{"ID": pid, "Question": "What is the name of this person?", "Answer": "This person's name is Ann Lee."},
             {"ID": pid, "Question": "Where was this person born?", "Answer": "This person was born in Riga."}]
    return {"image": png(), "ID": pid, "metadata": json.dumps(pairs)}


def write_raw(tmp_path, config, rows, schema=None):
    path = tmp_path / config / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)

