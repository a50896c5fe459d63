"""The modules that become the bundle's ONNX graphs.

* :class:`EncoderStep`: ``(x, y_t, z_t) -> z_{t+1}`` with the pooling of ``y_t`` to the
  encoder size, the concatenation and the residual add inside the graph, so one loop
  iteration is two engine calls with no host work in between. Stages without image
  feedback (pSp, E2Style's first stage) drop ``y_t``; non-residual stages drop ``z_t``.
* :class:`GeneratorGraph`: ``z -> y`` (W+ codes to the raw generator image).
* :class:`MappingGraph`: ``sample -> w`` (random z to W, for style mixing).
"""

from __future__ import annotations

import torch
from torch import nn

from export.models.pooling import ExactAdaptiveAvgPool2d


class EncoderStep(nn.Module):
    """One refinement step around an encoder ``[B, C_x (+3), S, S] -> [B, M, D]``.

    ``output_size`` is the generator resolution R; ``y`` is [B, 3, R, R] raw generator output,
    pooled to S exactly as the public code's ``face_pool`` does. Latents are [B, M, D].
    """

    def __init__(
        self, encoder: nn.Module, feedback: bool, residual: bool, input_size: int, output_size: int, n_latent: int
    ):
        super().__init__()
        self.encoder = encoder
        self.n_latent = n_latent
        self.input_size, self.output_size = input_size, output_size
        self.feedback, self.residual = feedback, residual
        self.pool = ExactAdaptiveAvgPool2d(output_size, input_size) if feedback else None

    @property
    def input_names(self) -> list[str]:
        return ["x"] + (["y"] if self.feedback else []) + (["z"] if self.residual else [])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
        assert (y is not None) == self.feedback and (z is not None) == self.residual, "inputs do not match the stage"
        inp = torch.cat([x, self.pool(y)], dim=1) if self.feedback else x
        codes = self.encoder(inp)
        if codes.ndim == 2:  # encoders that learn in W: one code for every layer
            codes = codes.unsqueeze(1).repeat(1, self.n_latent, 1)
        return z + codes if self.residual else codes


class GeneratorGraph(nn.Module):
    """``z`` [B, M, D] W+ → ``y`` [B, 3, R, R] raw generator output (noise buffers fixed)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


class MappingGraph(nn.Module):
    """``sample`` [B, D] standard-normal z → ``w`` [B, D]: the generator's mapping network."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.generator.mapping(sample)
