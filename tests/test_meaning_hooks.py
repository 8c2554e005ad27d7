"""``hooks.token_mask_from_batch`` pinned by hand where test_hooks does not reach (issue 19, mutation survivors):
a batch without ``attention_mask`` (every position counts), the mask's dtype, and the error messages, which must
name the problem first and end on the fix.
"""
from __future__ import annotations

import pytest
import torch

from manu_lite.hooks import token_mask_from_batch

IDS = torch.tensor([[5, 6, 7], [8, 9, 10]])
# Position t recalls when token t + 1 is an answer token (label != -100); the last position never does.
LABELS = torch.tensor([[-100, -100, 3], [-100, 4, 5]])


def test_without_attention_mask_every_position_counts():
    every = token_mask_from_batch({"input_ids": IDS}, "all")
    assert every.dtype == torch.bool and every.tolist() == [[True, True, True], [True, True, True]]
    recall = token_mask_from_batch({"input_ids": IDS, "labels": LABELS}, "recall")
    assert recall.dtype == torch.bool and recall.tolist() == [[False, True, False], [True, True, False]]


def test_with_attention_mask_the_mask_is_bool_and_padding_never_counts():
    batch = {"input_ids": IDS, "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]), "labels": LABELS}
    every = token_mask_from_batch(batch, "all")
    assert every.dtype == torch.bool and every.tolist() == [[False, True, True], [True, True, True]]
    padded = {**batch, "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1]])}
    assert token_mask_from_batch(padded, "recall").tolist() == [[False, True, False], [False, True, False]]


def test_errors_name_the_problem_then_the_fix():
    with pytest.raises(ValueError, match=r"^the batch has no 'input_ids'; a batch is a dict of model inputs plus "
                                         r"'labels'$"):
        token_mask_from_batch({"labels": LABELS}, "all")
    with pytest.raises(ValueError, match=r"^positions='recall' needs 'labels' in the batch \(-100 everywhere except "
                                         r"answer tokens\); add them or use positions='all'$"):
        token_mask_from_batch({"input_ids": IDS}, "recall")
    with pytest.raises(ValueError, match=r"^labels have shape \(2, 2\) but input_ids \(2, 3\); they must align "
                                         r"token by token$"):
        token_mask_from_batch({"input_ids": IDS, "labels": LABELS[:, 1:]}, "recall")
    with pytest.raises(ValueError, match=r"^unknown positions 'answers'; choose one of \('recall', 'all'\)$"):
        token_mask_from_batch({"input_ids": IDS}, "answers")
