"""Each pSp task end to end: a checkpoint of that task's format (pSp file structure, the
task's input channels and opts) → build_engines.py → Translator(image) — checked against
the same checkpoint run in PyTorch on the same pre-processed input.

The encoders are pSp's light backbone encoders (W and W+ heads over IR-50) and the generator
is 16 px, so each build takes seconds; the FPN encoder is covered by the reference vectors.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from export import build_engines
from export.checkpoints.registry import load_checkpoint
from helpers.psp_checkpoints import write_psp_checkpoint
from sdk import InputError, Translator

pytestmark = pytest.mark.slow(minutes=5)  # on 2 shared cores; conftest starts the longest first

# task -> (encoder type, input_nc, extra opts, expected manifest task options)
TASKS = {
    "inversion": ("BackboneEncoderUsingLastLayerIntoW", 3, {"learn_in_w": True}, {}),
    "super_resolution": (
        "BackboneEncoderUsingLastLayerIntoWPlus",
        3,
        {"dataset_type": "celebs_super_resolution"},
        {"factor": 8},
    ),
    "sketch": ("BackboneEncoderUsingLastLayerIntoWPlus", 1, {"dataset_type": "celebs_sketch_to_face"}, {}),
    "segmentation": (
        "BackboneEncoderUsingLastLayerIntoW",
        19,
        {"label_nc": 19, "learn_in_w": True, "dataset_type": "celebs_seg_to_face"},
        {"label_nc": 19},
    ),
}


def sample_input(task: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if task == "segmentation":
        labels = np.zeros((300, 300), dtype=np.uint8)  # blocks of labels, resized to 256 by the SDK
        for i in range(6):
            labels[i * 50 : (i + 1) * 50] = rng.integers(0, 19)
        return labels
    yy, xx = np.mgrid[0:320, 0:280] / 320.0
    img = np.stack([xx, yy, (xx + yy) / 2], axis=-1) + 0.1 * rng.standard_normal((320, 280, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module", params=sorted(TASKS))
def task_bundle(request, tmp_path_factory):
    task = request.param
    encoder_type, input_nc, extra, _ = TASKS[task]
    tmp = tmp_path_factory.mktemp(task)
    ckpt = tmp / f"psp_{task}.pt"
    write_psp_checkpoint(ckpt, encoder_type, input_nc, extra)
    args = ["--checkpoint", str(ckpt), "--out", str(tmp / "bundle"), "--quiet", "--max-batch", "2"]
    if task == "super_resolution":
        args += ["--factor", "8"]
    if task != "inversion":  # the tasks differ in pre-processing, not graphs: one build exercises the
        args += ["--no-optimize"]  # CPU-optimised graphs (parity-checked at build time), the rest skip them
    assert build_engines.main(args) == 0  # the task comes from the checkpoint's opts
    yield task, ckpt, tmp / "bundle"
    shutil.rmtree(tmp, ignore_errors=True)


def test_translation_matches_pytorch(task_bundle):
    task, ckpt, bundle = task_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == {"name": task, "options": TASKS[task][3]}
    # a face photograph is FFHQ-aligned first (pSp's celebs_*/ffhq_* photo tasks); drawn inputs are not
    assert manifest["input"].get("alignment") == ("ffhq" if task == "super_resolution" else None)
    loaded = load_checkpoint(ckpt)
    with Translator(bundle, backend="onnxruntime") as t:
        image = sample_input(task)
        out = t(image)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
        x = t.preprocess(image)
        assert x.shape == (TASKS[task][1], 256, 256)
        with torch.no_grad():  # pSp's forward: codes = E(x) + latent_avg, then G (W codes repeated)
            codes = loaded.stages[0].encoder(torch.from_numpy(x)[None])
            if codes.ndim == 2:
                codes = codes[:, None].repeat(1, loaded.generator.n_latent, 1)
            reference = loaded.generator(codes + loaded.latent_avg[None]).numpy()
        result = t.infer(x[None])
        err = np.abs(result.images - reference).max() / np.abs(reference).max()
        assert err <= 1e-4, err
        with pytest.raises(InputError, match="iterations"):
            t.infer(x[None], iterations=2)  # pSp is a single pass


def test_task_specific_inputs(task_bundle):
    task, _, bundle = task_bundle
    with Translator(bundle, backend="onnxruntime") as t:
        if task == "super_resolution":
            image = sample_input(task)
            assert not np.array_equal(t.preprocess(image), t.preprocess(image, factor=2))
            np.testing.assert_array_equal(t.preprocess(image), t.preprocess(image, factor=8))  # the bundle default
            with pytest.raises(InputError, match="factor"):
                t(image, factor=3)
        elif task == "segmentation":
            labels = np.full((256, 256), 19, dtype=np.int64)
            with pytest.raises(InputError, match=r"0\.\.18"):
                t(labels)
            with pytest.raises(InputError, match="integers"):
                t(np.zeros((256, 256), dtype=np.float32))
            one_hot = t.preprocess(np.arange(256 * 256).reshape(256, 256) % 19)
            np.testing.assert_array_equal(one_hot.sum(axis=0), 1.0)
        elif task == "sketch":
            x = t.preprocess(sample_input(task))
            assert x.min() >= 0.0 and x.max() <= 1.0
        else:
            with pytest.raises(InputError, match="takes no option"):
                t(sample_input(task), factor=4)


@pytest.mark.parametrize("task_bundle", ["sketch"], indirect=True)  # pSp's multi-modal example
def test_style_mixing_uses_the_mapping_network(task_bundle):
    task, ckpt, bundle = task_bundle
    loaded = load_checkpoint(ckpt)
    with Translator(bundle, backend="onnxruntime") as t:
        x = t.preprocess(sample_input(task))[None]
        mixed = t.mix(x, latent_mask=[3, 4, 5], seed=11)
        z = np.random.default_rng(11).standard_normal((1, 512)).astype(np.float32)
        with torch.no_grad():
            w = loaded.generator.mapping(torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(mixed.latents[0, 3:], np.repeat(w, 3, axis=0), rtol=1e-4, atol=1e-5)
        assert not np.allclose(mixed.latents[0, 3:], t.mix(x, latent_mask=[3, 4, 5], seed=12).latents[0, 3:])
        np.testing.assert_array_equal(mixed.latents[0, :3], t.infer(x).latents[0, :3])
