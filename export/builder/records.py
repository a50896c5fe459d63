"""The graphs a build exports: one :class:`GraphRecord` each, built from a loaded checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from export.checkpoints.types import LoadedCheckpoint
from export.onnx.graphs import EncoderStep, GeneratorGraph, MappingGraph

EXAMPLE_BATCH = 2  # batch 1 would be specialised by the exporter


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the manifest lists it: its role and shape (``"batch"`` first)."""

    name: str
    role: str
    shape: tuple

    def as_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "shape": list(self.shape), "dtype": "float32"}


@dataclass
class GraphRecord:
    """One graph of the bundle: ``key`` (its manifest name and file stem), the PyTorch module it
    is exported from, the example inputs it is traced and parity-checked on, and its I/O."""

    key: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    input_specs: tuple[TensorSpec, ...]
    output: TensorSpec

    @property
    def file(self) -> str:
        return f"{self.key}.onnx"


@dataclass
class Examples:
    """The tensors a build traces with: ``latent_avg`` [M, D], G's image of it [3, H, W], and a
    batch of example inputs per graph input name."""

    latent_avg: torch.Tensor
    average_image: torch.Tensor
    tensors: dict[str, torch.Tensor]
    specs: dict[str, TensorSpec]


def examples(ckpt: LoadedCheckpoint, generator: nn.Module, input_range: tuple[float, float]) -> Examples:
    """Example inputs (seed 0) in ``input_range`` for the encoder, G's average image for the
    feedback, codes near ``latent_avg``; ``average_image`` must then be checked for NaN/Inf."""
    size, m, d = generator.size, generator.n_latent, generator.style_dim
    s_in, cond_nc = ckpt.input_size, ckpt.condition_channels
    lo, hi = input_range
    with torch.no_grad():
        latent_avg = ckpt.latent_avg.float()
        average_image = generator(latent_avg[None])[0]
    rng = torch.Generator().manual_seed(0)
    b = EXAMPLE_BATCH
    tensors = {
        "x": lo + (hi - lo) * torch.rand(b, cond_nc, s_in, s_in, generator=rng),
        "y": average_image[None].repeat(b, 1, 1, 1),
        "z": latent_avg[None].repeat(b, 1, 1) + 0.1 * torch.randn(b, m, d, generator=rng),
    }
    if hasattr(generator, "mapping"):
        tensors["sample"] = torch.randn(b, d, generator=rng)
    specs = {
        "x": TensorSpec("x", "condition", ("batch", cond_nc, s_in, s_in)),
        "y": TensorSpec("y", "image", ("batch", 3, size, size)),
        "z": TensorSpec("z", "latents", ("batch", m, d)),
        "sample": TensorSpec("sample", "sample", ("batch", d)),
    }
    return Examples(latent_avg, average_image, tensors, specs)


def graph_records(ckpt: LoadedCheckpoint, generator: nn.Module, ex: Examples) -> list[GraphRecord]:
    """``encoder_<i>`` per stage, ``generator``, and ``mapping`` (z -> w, for pSp's style mixing)
    where the generator has a mapping network (ProGAN has none)."""
    size, m, d = generator.size, generator.n_latent, generator.style_dim
    records = []
    for i, stage in enumerate(ckpt.stages):
        step = EncoderStep(
            stage.encoder,
            feedback=stage.feedback,
            residual=stage.residual,
            input_size=ckpt.input_size,
            output_size=size,
            n_latent=m,
        ).eval()
        records.append(
            _record(f"encoder_{i}", step, step.input_names, ex, TensorSpec("z_next", "latents", ("batch", m, d)))
        )
    image = TensorSpec("image", "image", ("batch", 3, size, size))
    records.append(_record("generator", GeneratorGraph(generator).eval(), ["z"], ex, image))
    if hasattr(generator, "mapping"):
        w = TensorSpec("w", "style", ("batch", d))
        records.append(_record("mapping", MappingGraph(generator).eval(), ["sample"], ex, w))
    return records


def _record(key: str, module: nn.Module, names, ex: Examples, output: TensorSpec) -> GraphRecord:
    return GraphRecord(key, module, {n: ex.tensors[n] for n in names}, tuple(ex.specs[n] for n in names), output)
