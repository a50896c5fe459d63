"""The accuracy of a lower-precision bundle against its FP32 graphs, over the whole refinement loop.

:func:`compare_loops`: both sets of graphs run through the runtime's own
:class:`sdk.loop.RefinementLoop` on ONNX Runtime (CPU), every step's latents and images are
compared; PSNR uses the FP32 output's dynamic range (max - min) as the peak. ONNX Runtime's CPU
kernels may accumulate FP16 products in FP32 internally, like TensorRT's tensor-core kernels,
but that is not guaranteed to match TensorRT op for op: this is the proxy measurement the
design asks for on a machine without a GPU; TensorRT is compared where present
(:mod:`export.tensorrt.engines`, ``tests/gpu/``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_MIN_PSNR = 40.0


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of ``test`` against ``reference``, peak = the reference's dynamic range."""
    ref, tst = reference.astype(np.float64), test.astype(np.float64)
    if not np.all(np.isfinite(tst)):
        return float("-inf")
    mse = float(np.mean((ref - tst) ** 2))
    peak = float(ref.max() - ref.min())
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(peak, 1e-12) ** 2 / mse))


@dataclass
class LoopAccuracy:
    """FP16 vs FP32 over every step of the loop, on the same input."""

    iterations: int
    batch: int
    image_psnr: list = field(default_factory=list)  # dB per step
    latent_max_abs_error: list = field(default_factory=list)  # per step
    finite: bool = True  # no NaN/Inf in any step's latents or images (FP16 run)
    min_psnr_required: float = DEFAULT_MIN_PSNR
    backend: str = "onnxruntime-cpu"

    @property
    def min_image_psnr(self) -> float:
        return min(self.image_psnr) if self.image_psnr else float("nan")

    @property
    def ok(self) -> bool:
        return bool(self.finite and self.min_image_psnr >= self.min_psnr_required)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(min_image_psnr=self.min_image_psnr, final_image_psnr=self.image_psnr[-1], ok=self.ok)
        return {k: (round(v, 3) if isinstance(v, float) and np.isfinite(v) else v) for k, v in d.items()}

    def __str__(self) -> str:
        steps = ", ".join(f"{p:.1f}" for p in self.image_psnr)
        return (
            f"fp16 vs fp32 over {self.iterations} steps (batch {self.batch}, {self.backend}): image PSNR "
            f"per step [{steps}] dB (required >= {self.min_psnr_required:g}), max |dz| "
            f"{max(self.latent_max_abs_error):.3g}, finite: {self.finite}"
        )


class StagedBundle:
    """A bundle that is not committed yet (files in a writer's temporary folder, manifest as a
    dict): what :class:`sdk.loop.RefinementLoop` reads from a :class:`sdk.bundle.Bundle`."""

    def __init__(self, folder: Path, manifest: Mapping):
        from sdk.bundle import Manifest

        self.path = Path(folder)
        self.manifest = Manifest.parse(manifest)

    def graph_path(self, key: str) -> Path:
        return self.path / self.manifest.graphs[key].file

    def constants(self) -> dict[str, np.ndarray]:
        with np.load(self.path / self.manifest.constants_file, allow_pickle=False) as npz:
            return {k: np.ascontiguousarray(npz[k], dtype=np.float32) for k in npz.files}


def compare_loops(
    reference, candidate, x: np.ndarray, iterations: int, min_psnr: float = DEFAULT_MIN_PSNR, threads: int | None = None
) -> LoopAccuracy:
    """Run the loop of ``reference`` and ``candidate`` (bundle-like: see :class:`StagedBundle`) on
    ``x`` for ``iterations`` steps with ONNX Runtime on CPU; compare every step."""
    from sdk.backends.onnxruntime import OrtBackend
    from sdk.loop import RefinementLoop

    results = []
    for bundle in (reference, candidate):
        loop = RefinementLoop(OrtBackend("cpu", threads=threads), bundle, verify=False)  # files just written
        try:
            results.append(loop.run(x, iterations, return_steps=True).steps)
        finally:
            loop.close()
    acc = LoopAccuracy(iterations=iterations, batch=int(x.shape[0]), min_psnr_required=min_psnr)
    for ref, got in zip(*results):
        acc.finite &= bool(np.all(np.isfinite(got.image)) and np.all(np.isfinite(got.latents)))
        acc.image_psnr.append(psnr(ref.image, got.image))
        acc.latent_max_abs_error.append(float(np.max(np.abs(ref.latents.astype(np.float64) - got.latents))))
    return acc


def accuracy_input(manifest: Mapping, batch: int = 2, seed: int = 0) -> np.ndarray:
    """The fixed input of the accuracy check: smooth random images in the model's input range
    (4x4 noise upsampled: natural images are smooth at 256 px; pure noise is not a face)."""
    rng = np.random.default_rng(seed)
    c, s = manifest["input"]["channels"], manifest["input"]["size"]
    lo, hi = manifest["input"]["range"]
    coarse = rng.uniform(0.0, 1.0, (batch, c, 8, 8))
    x = np.repeat(np.repeat(coarse, s // 8, axis=2), s // 8, axis=3)
    x = x + 0.05 * rng.standard_normal(x.shape)  # some high-frequency detail
    return np.clip(lo + (hi - lo) * x, lo, hi).astype(np.float32)
