"""A tiny checkpoint in the project's own format, for loader and validation tests."""

from __future__ import annotations

import copy

import torch

from export.models.ome_encoder import OMEEncoder
from export.models.stylegan2 import Generator

_TINY = {}


def tiny_checkpoint(fmt: str = "ome_stylegan2") -> dict:
    """A fresh copy of a tiny ``ome_stylegan2`` checkpoint (``fmt="psp"``: the same weights with
    no format marker, as pSp/ReStyle files come)."""
    if not _TINY:
        torch.manual_seed(0)
        g = Generator(8, style_dim=8, n_mlp=1, channels={4: 4, 8: 4})
        e = OMEEncoder(depth=18, input_nc=6, width=4, fpn_dim=4, code_dim=8, codes_per_level=(1, 1, 2), input_size=64)
        state = {f"encoder.{k}": v for k, v in e.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
        _TINY["ckpt"] = {
            "format": "ome_stylegan2",
            "format_version": 1,
            "state_dict": state,
            "latent_avg": 0.1 * torch.randn(8),
            "opts": {"input_size": 64, "n_iters_per_batch": 2},
        }
    ckpt = copy.deepcopy(_TINY["ckpt"])
    if fmt == "psp":
        del ckpt["format"]
    return ckpt
