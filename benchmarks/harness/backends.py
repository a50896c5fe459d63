"""The back ends a benchmark compares, behind one small interface.

Each back end runs the whole refinement loop of one checkpoint, ``run(x, iterations)`` ->
images, and names the callables that make up a loop step (``stage_targets``) so the harness
can time the encoder step and the generator separately.

* ``pytorch_public``: PyTorch eager as the public repos run inference: ``torch.no_grad()``,
  eval mode, the generator in the public fused grouped-convolution form, restyle-encoder's
  ``run_on_batch`` loop (pSp's single pass; E2Style's stages in turn).
* ``pytorch_export``: PyTorch eager running the modules our bundles are traced from (the
  step and generator wrappers of export/onnx/graphs.py with the rewrites of export/fast_forms/optimize.py):
  what the exported graphs compute, without a runtime.
* ``onnxruntime``: ``sdk.Translator(bundle, backend="onnxruntime")`` on the CPU.
* ``onnxruntime-cuda``, ``tensorrt``, ``tensorrt-cudagraphs``: the same Translator on a GPU,
  where the machine has one (each reports why it is skipped otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from export.checkpoints.types import LoadedCheckpoint
from export.fast_forms.optimize import optimize_graph
from export.onnx.graphs import EncoderStep, GeneratorGraph
from sdk import Bundle, SdkError, Translator

log = logging.getLogger(__name__)

CPU_BACKENDS = ("pytorch_public", "pytorch_export", "onnxruntime")
GPU_BACKENDS = ("onnxruntime-cuda", "tensorrt", "tensorrt-cudagraphs")
LABELS = {
    "pytorch_public": "PyTorch eager, public code path (fused modulated conv)",
    "pytorch_export": "PyTorch eager, our export modules",
    "onnxruntime": "sdk.Translator, ONNX Runtime CPU",
    "onnxruntime-cuda": "sdk.Translator, ONNX Runtime CUDA",
    "tensorrt": "sdk.Translator, TensorRT",
    "tensorrt-cudagraphs": "sdk.Translator, TensorRT + CUDA graphs",
}


class BackendUnavailable(RuntimeError):
    """A back end cannot run on this machine (no GPU, no engines in the bundle, ...)."""


@dataclass
class StageTarget:
    """A callable attribute (``obj.attr``) whose time counts towards ``stage``."""

    obj: object
    attr: str
    stage: str  # "encoder" or "generator"


class EagerLoop:
    """``pytorch_public``: restyle-encoder's ``run_on_batch`` (pSp's ``forward`` for a one-stage,
    no-feedback checkpoint; E2Style's stages in turn), eager, the generator fused."""

    name = "pytorch_public"

    def __init__(self, ckpt: LoadedCheckpoint):
        self.stages = ckpt.stages
        for stage in self.stages:
            stage.encoder.eval()
        self.generator = ckpt.generator.eval()
        size = ckpt.input_size
        self.face_pool = torch.nn.AdaptiveAvgPool2d((size, size))  # the public code's face_pool
        self.latent_avg = ckpt.latent_avg
        with torch.no_grad():  # get_average_image: computed once, outside the timed loop
            self.avg_image = self._generate(self.latent_avg[None])

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        self.generator.set_fused(True)  # the public grouped-conv form (the module is shared with export)
        try:
            return self.generator(z)
        finally:
            self.generator.set_fused(False)

    def stage_targets(self) -> list[StageTarget]:
        return [StageTarget(st, "encoder", "encoder") for st in self.stages] + [
            StageTarget(self, "_generate", "generator")
        ]

    @torch.no_grad()
    def run(self, x: np.ndarray, iterations: int) -> np.ndarray:
        x = torch.from_numpy(x)
        z = self.latent_avg[None].repeat(x.shape[0], 1, 1)
        y = self.avg_image.repeat(x.shape[0], 1, 1, 1)
        for t in range(iterations):  # iteration 0 feeds face_pool(average image), as run_on_batch does
            stage = self.stages[min(t, len(self.stages) - 1)]
            codes = stage.encoder(torch.cat([x, self.face_pool(y)], dim=1) if stage.feedback else x)
            if codes.ndim == 2:  # encoders that learn in W: one code for every layer
                codes = codes[:, None].expand(-1, z.shape[1], -1)
            z = codes + z if stage.residual else codes
            y = self._generate(z)
        return y.numpy()

    def close(self) -> None:
        pass


class ExportModulesLoop:
    """``pytorch_export``: the loop over the very modules the bundle's graphs are traced from."""

    name = "pytorch_export"

    def __init__(self, ckpt: LoadedCheckpoint):
        gen = ckpt.generator.eval()
        self.steps = [
            optimize_graph(
                EncoderStep(
                    st.encoder,
                    feedback=st.feedback,
                    residual=st.residual,
                    input_size=ckpt.input_size,
                    output_size=gen.size,
                    n_latent=gen.n_latent,
                ).eval()
            )[0]
            for st in ckpt.stages
        ]
        self.generator = optimize_graph(GeneratorGraph(gen).eval())[0]
        self.latent_avg = ckpt.latent_avg
        with torch.no_grad():
            self.avg_image = gen(self.latent_avg[None])

    def stage_targets(self) -> list[StageTarget]:
        return [StageTarget(self, "_step", "encoder"), StageTarget(self, "_generate", "generator")]

    def _step(self, step: EncoderStep, x, y, z) -> torch.Tensor:
        inputs = {"x": x, "y": y, "z": z}
        return step(**{k: inputs[k] for k in step.input_names})

    def _generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    @torch.no_grad()
    def run(self, x: np.ndarray, iterations: int) -> np.ndarray:
        x = torch.from_numpy(x)
        z = self.latent_avg[None].repeat(x.shape[0], 1, 1)
        y = self.avg_image.repeat(x.shape[0], 1, 1, 1)
        for t in range(iterations):
            z = self._step(self.steps[min(t, len(self.steps) - 1)], x, y, z)
            y = self._generate(z)
        return y.numpy()

    def close(self) -> None:
        pass


class TranslatorLoop:
    """``onnxruntime`` and the GPU back ends: ``sdk.Translator.infer`` on a bundle."""

    SDK_NAMES = {
        "onnxruntime": ("onnxruntime", False),
        "onnxruntime-cuda": ("onnxruntime-cuda", False),
        "tensorrt": ("tensorrt", False),
        "tensorrt-cudagraphs": ("tensorrt", True),
    }

    def __init__(self, name: str, bundle, threads: int):
        backend, graphs = self.SDK_NAMES[name]
        self.name = name
        try:
            self.translator = Translator(bundle, backend=backend, threads=threads, cuda_graphs=graphs)
        except SdkError as e:
            raise BackendUnavailable(f"{name}: {e}") from None

    def stage_targets(self) -> list[StageTarget]:
        runners = self.translator._loop.runners  # the loop's graph runners (internal; wrapped, then restored)
        return [StageTarget(r, "run", "generator" if key == "generator" else "encoder") for key, r in runners.items()]

    def run(self, x: np.ndarray, iterations: int) -> np.ndarray:
        return self.translator.infer(x, iterations=iterations).images

    def close(self) -> None:
        self.translator.close()


def gpu_unavailable_reason(name: str, bundle) -> str | None:
    """Why a GPU back end cannot run here, or None when it can be tried."""
    from sdk.backends.onnxruntime import OrtBackend

    if name == "onnxruntime-cuda":
        return None if OrtBackend.cuda_available() else "no CUDA execution provider (onnxruntime-gpu and a GPU)"
    from sdk.backends import tensorrt as trt_backend

    reason = trt_backend.unavailable_reason()
    if reason is not None:
        return reason
    if not Bundle(bundle, verify=False).manifest.engines:
        return "the bundle has no TensorRT engines (build it on this machine with --precision fp16)"
    return None


def make_backend(name: str, ckpt: LoadedCheckpoint, bundle, threads: int):
    """The back end ``name`` for this checkpoint and its bundle (raises BackendUnavailable)."""
    if name == "pytorch_public":
        return EagerLoop(ckpt)
    if name == "pytorch_export":
        return ExportModulesLoop(ckpt)
    if name in GPU_BACKENDS:
        reason = gpu_unavailable_reason(name, bundle)
        if reason:
            raise BackendUnavailable(f"{name}: {reason}")
    if name in TranslatorLoop.SDK_NAMES:
        return TranslatorLoop(name, bundle, threads)
    raise BackendUnavailable(f"unknown back end {name!r}; expected one of {CPU_BACKENDS + GPU_BACKENDS}")


def stage_split(run: Callable[[], object], targets: list[StageTarget], runs: int, frames: int) -> dict:
    """Seconds per frame spent in each stage over ``runs`` calls of ``run`` (the targets wrapped
    in timers, then restored), plus ``other`` (pooling, concat, copies, Python)."""
    import time

    acc: dict[str, float] = {}
    saved = [(t, getattr(t.obj, t.attr)) for t in targets]

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

        return wrapper

    for target, fn in saved:
        setattr(target.obj, target.attr, timed(fn, target.stage))
    try:
        t0 = time.perf_counter()
        for _ in range(runs):
            run()
        total = time.perf_counter() - t0
    finally:
        for target, fn in saved:
            setattr(target.obj, target.attr, fn)
    split = {k: v / (runs * frames) for k, v in acc.items()}
    split["other"] = total / (runs * frames) - sum(split.values())
    return split
