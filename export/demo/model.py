"""The demo models.

* :data:`export.demo.DEMO_CHECKPOINT`, the **embedded default**: a small trained OME
  super-resolution model (64 px, ``ome_stylegan2`` format), trained by ``export/demo/train.py``
  and committed; ``python export/build_engines.py`` with no arguments builds it into ``engines/demo``.
* :func:`make_demo_checkpoint`: a reference-architecture ReStyle/OME-format checkpoint
  (GradualStyleEncoder IR-SE-50 over 6 channels, 64 px StyleGAN2, 10 styles) with
  **deterministic, untrained** weights (seed 0), for benchmarks and tests that need the public
  architecture at a small output size. The encoder's last layers are scaled down so the offsets
  stay small and the loop stays near the average image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from export.models.encoders import build_encoder
from export.models.stylegan2 import Generator

log = logging.getLogger(__name__)

OFFSET_SCALE = 0.05


def make_demo_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write the demo checkpoint in the official ReStyle file structure."""
    torch.manual_seed(seed)
    generator = Generator(64, style_dim=512, n_mlp=8, channel_multiplier=2)
    encoder = build_encoder(
        {
            "encoder_type": "GradualStyleEncoder",
            "num_layers": 50,
            "mode": "ir_se",
            "input_nc": 6,
            "n_styles": generator.n_latent,
        }
    )
    with torch.no_grad():
        for style in encoder.styles:
            style.linear.weight.mul_(OFFSET_SCALE)
            style.linear.bias.zero_()
        latent_avg = generator.mean_latent(4096, seed=seed).repeat(generator.n_latent, 1)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in generator.state_dict().items()})
    opts = {
        "encoder_type": "GradualStyleEncoder",
        "input_nc": 6,
        "output_size": 64,
        "n_iters_per_batch": 5,
        "start_from_latent_avg": True,
        "dataset_type": "demo_untrained",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg}, tmp)
    tmp.replace(path)
    return path
