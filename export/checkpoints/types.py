"""What the checkpoint loaders return, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of an unknown format, or does not match its modules."""


@dataclass
class StageModel:
    """One encoder of the refinement schedule and how the loop uses it."""

    encoder: nn.Module
    config: dict
    feedback: bool  # takes the previous synthesised image (concatenated after pooling)
    residual: bool  # its output is added to the previous latents


@dataclass
class LoadedCheckpoint:
    """Modules built and loaded from a checkpoint, in eval mode, plus what the bundle needs.

    ``stages`` run in order; past the last one, the last repeats when ``repeat_last``
    (ReStyle/OME) — otherwise the number of stages bounds the iterations (pSp 1, E2Style k).
    """

    format: str
    path: Path
    sha256: str
    opts: dict
    generator: nn.Module  # Generator, or MultiCodeProGAN for ome_progan
    latent_avg: torch.Tensor  # [M, D]
    stages: list[StageModel] = field(default_factory=list)
    repeat_last: bool = False
    default_iterations: int = 1
    input_size: int = 256  # encoder input side: 256 for every public encoder, G's size for MTV-TSA

    @property
    def encoder_config(self) -> dict:
        return self.stages[0].config

    @property
    def condition_channels(self) -> int:
        """Channels of the conditional input x (the first stage's input minus any feedback)."""
        first = self.stages[0]
        return first.config["input_nc"] - (3 if first.feedback else 0)

    @property
    def suggested_task(self) -> str:
        """The task the checkpoint was trained for, read from its opts (pSp's dataset types)."""
        if "super_resolution" in str(self.opts.get("dataset_type", "")):
            return "super_resolution"
        if int(self.opts.get("label_nc", 0) or 0) > 0:
            return "segmentation"
        if self.condition_channels == 1:
            return "sketch"
        return "inversion"

    def alignment(self, task: str) -> str | None:
        """How a photograph must be aligned before the encoder: ``"ffhq"`` for the public face
        models (pSp's ``ffhq_*`` and ``celebs_*`` dataset types, whose repositories align real
        inputs with ``align_all_parallel.py``) when the task takes a photograph; None otherwise
        (sketches and label maps are drawn, not detected; other domains have no alignment)."""
        dataset = str(self.opts.get("dataset_type", ""))
        face = dataset.startswith(("ffhq_", "celebs_"))
        return "ffhq" if face and task in ("inversion", "super_resolution") else None
