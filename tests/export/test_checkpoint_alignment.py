"""Which checkpoints say their photographs must be FFHQ-aligned (the manifest's ``input.alignment``)."""

from __future__ import annotations

import pytest

from export.checkpoints.registry import from_dict
from helpers.checkpoints import tiny_checkpoint


@pytest.mark.parametrize(
    "dataset_type,task,expected",
    [
        ("ffhq_encode", "inversion", "ffhq"),
        ("ffhq_frontalize", "inversion", "ffhq"),
        ("celebs_super_resolution", "super_resolution", "ffhq"),
        ("celebs_sketch_to_face", "sketch", None),  # a drawing: nothing to detect
        ("celebs_seg_to_face", "segmentation", None),
        ("cars_encode", "inversion", None),  # other domains have no alignment
        (None, "inversion", None),  # our own formats say nothing
    ],
)
def test_face_datasets_ask_for_ffhq_alignment(dataset_type, task, expected):
    ckpt = tiny_checkpoint()
    if dataset_type is not None:
        ckpt["opts"]["dataset_type"] = dataset_type
    assert from_dict(ckpt).alignment(task) == expected
