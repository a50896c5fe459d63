"""A pSp checkpoint of a given task's format with light weights: the backbone encoders (W and W+
heads over IR-50) and a 16 px generator, so a build takes seconds."""

from __future__ import annotations

import torch

from export.models.encoders import build_encoder
from export.models.stylegan2 import Generator


def write_psp_checkpoint(path, encoder_type: str, input_nc: int, extra_opts: dict) -> None:
    torch.manual_seed(input_nc)
    generator = Generator(16, style_dim=512, n_mlp=2, channel_multiplier=1)
    encoder = build_encoder(
        {
            "encoder_type": encoder_type,
            "num_layers": 50,
            "mode": "ir",
            "input_nc": input_nc,
            "n_styles": generator.n_latent,
        }
    )
    with torch.no_grad():
        encoder.linear.weight.mul_(0.1)  # keep the codes in a sane range for an untrained encoder
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in generator.state_dict().items()})
    learn_in_w = extra_opts.get("learn_in_w", False)
    latent_avg = generator.mean_latent(256, seed=0)[0] if learn_in_w else generator.mean_latent(256).repeat(6, 1)
    opts = {
        "encoder_type": encoder_type,
        "input_nc": input_nc,
        "label_nc": 0,
        "output_size": 16,
        "start_from_latent_avg": True,
        "learn_in_w": False,
        **extra_opts,
    }
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg}, path)
