"""``Translator``: the public API. Opens a bundle, picks a backend, runs the refinement loop.

    t = Translator("engines/demo")
    out = t(frame)                                     # HxWx3 uint8 RGB in, HxWx3 uint8 out
    res = t.infer(x, iterations=5, return_steps=True)  # NCHW float32 in the model's range
    res.images, res.latents, res.steps
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from .backends import create_backend
from .bundle import Bundle, Manifest
from .errors import InputError
from .imaging import to_uint8_image
from .loop import LoopResult, RefinementLoop, Step
from .tasks import preprocess

log = logging.getLogger(__name__)


@dataclass
class TranslationResult:
    """``images``: [B, 3, R, R] float32 raw generator output (about [-1, 1], not clipped);
    ``latents``: [B, M, D] W+ codes; ``steps``: each iteration's latents and images when
    ``return_steps=True``; ``iterations``: how many ran."""

    images: np.ndarray
    latents: np.ndarray
    iterations: int
    steps: Optional[List[Step]] = None

    @classmethod
    def from_loop(cls, r: LoopResult) -> "TranslationResult":
        return cls(images=r.images, latents=r.latents, iterations=r.iterations, steps=r.steps)


class Translator:
    """Image-to-image translation with a bundle built by ``export/build_engines.py``.

    Args:
        bundle: path of the bundle folder (``engines/NAME``).
        backend: ``"auto"`` (ONNX Runtime on CUDA if available, else CPU), ``"onnxruntime"``
            (CPU), ``"onnxruntime-cuda"``.
        threads: intra-op threads for CPU back ends (default: the runtime's choice).
        verify: check every bundle file's SHA-256 before loading (recommended).

    One Translator may be shared by threads; calls are serialised. ``close()`` (or a
    ``with`` block) releases the sessions and buffers.
    """

    def __init__(self, bundle: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 verify: bool = True):
        self.bundle = Bundle(bundle, verify=verify)
        self.backend = create_backend(backend, threads=threads)
        self._loop = RefinementLoop(self.backend, self.bundle)
        log.info("opened %s (%s, task %s) on %s", self.bundle.path, self.manifest.family, self.manifest.task,
                 self.backend.name)

    # ------------------------------------------------------------------ properties
    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def input_shape(self) -> tuple[int, int, int]:
        m = self.manifest
        return (m.input_channels, m.input_size, m.input_size)

    @property
    def output_size(self) -> int:
        return self.manifest.output_size

    # ------------------------------------------------------------------ inference
    def infer(self, x: np.ndarray, iterations: int | None = None, return_steps: bool = False) -> TranslationResult:
        """Run the loop on ``x``: [B, C_x, S, S] (or [C_x, S, S]) float32 in the model's input
        range. ``iterations`` defaults to the bundle's; pSp bundles allow 1."""
        if self._loop is None:
            raise InputError("this Translator is closed")
        x = self._check_input(x)
        return TranslationResult.from_loop(self._loop.run(x, iterations, return_steps))

    def __call__(self, image, iterations: int | None = None, **task_options) -> np.ndarray:
        """HxWx3 uint8 RGB (numpy or PIL; gray and RGBA are converted) → HxWx3 uint8 RGB at the
        generator's resolution. ``task_options``: e.g. ``factor=8`` for super-resolution."""
        x = self.preprocess(image, **task_options)
        result = self.infer(x[None], iterations=iterations)
        return to_uint8_image(result.images[0])

    def preprocess(self, image, **task_options) -> np.ndarray:
        """The task's pre-processing: image → [C_x, S, S] float32 in the model's range."""
        return preprocess(image, self.manifest, **task_options)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self.backend.close()
            self._loop = None

    def __enter__(self) -> "Translator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ checks
    def _check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputError(f"infer() takes a numpy array; got {type(x).__name__}. "
                             f"Use translator(image) for HxWx3 images")
        if x.ndim == 3:
            x = x[None]
        c, s, _ = self.input_shape
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise InputError(f"expected x of shape [B, {c}, {s}, {s}] (NCHW); got {list(x.shape)}")
        if x.size == 0:
            raise InputError("x is empty")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"expected float32 input in {list(self.manifest.input_range)}; got dtype {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise InputError("x contains NaN or Inf")
        return np.ascontiguousarray(x, dtype=np.float32)
