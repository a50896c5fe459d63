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
        backend: ``"auto"`` (the bundle's TensorRT engines where TensorRT and a GPU are present and
            the engines were built for them, else ONNX Runtime on CUDA if available, else CPU),
            ``"tensorrt"``, ``"onnxruntime"`` (CPU), ``"onnxruntime-cuda"``.
        threads: intra-op threads for CPU back ends (default: the runtime's choice).
        verify: check every bundle file's SHA-256 before loading (recommended).

    One Translator may be shared by threads; calls are serialised. ``close()`` (or a
    ``with`` block) releases the sessions and buffers.
    """

    def __init__(self, bundle: str | os.PathLike, backend: str = "auto", threads: int | None = None,
                 verify: bool = True):
        self.bundle = Bundle(bundle, verify=verify)
        self.backend = create_backend(backend, threads=threads, bundle=self.bundle)
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
        loop = self._open_loop()
        x = self._check_input(x)
        return TranslationResult.from_loop(loop.run(x, iterations, return_steps))

    def synthesise(self, latents: np.ndarray) -> np.ndarray:
        """Render W+ codes: [B, M, D] (or [M, D]) float32 → [B, 3, R, R] raw generator images."""
        loop = self._open_loop()
        latents = np.asarray(latents, dtype=np.float32)
        if latents.ndim == 2:
            latents = latents[None]
        if not np.all(np.isfinite(latents)):
            raise InputError("latents contain NaN or Inf")
        return loop.synthesise(np.ascontiguousarray(latents))

    def mix(self, x: np.ndarray, latent_mask=None, alpha: float | None = None, seed: int | None = None,
            inject_latents: np.ndarray | None = None, iterations: int | None = None) -> TranslationResult:
        """Multi-modal synthesis by style mixing (pSp Sec. 3.2): translate ``x``, then take the
        layers in ``latent_mask`` from another code — ``inject_latents`` ([B, M, D] or [B, D] W
        codes), or a random one, ``mapping(z)`` with ``z ~ N(0, I)`` drawn with ``seed``. With
        ``alpha`` the layers are blended, ``alpha * inject + (1 - alpha) * code``, as pSp's
        ``mix_alpha``. ``latent_mask`` defaults to the fine layers 8..M-1 (pSp's default for
        conditional synthesis); indices are 0-based."""
        loop = self._open_loop()
        base = self.infer(x, iterations=iterations)
        codes = base.latents.copy()
        b, m, d = codes.shape
        mask = list(range(8, m)) if latent_mask is None else [int(i) for i in latent_mask]
        if not mask or any(not 0 <= i < m for i in mask):
            raise InputError(f"latent_mask must list layer indices in 0..{m - 1}; got {latent_mask!r}")
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise InputError(f"alpha must be in [0, 1]; got {alpha!r}")
        if inject_latents is None:
            samples = np.random.default_rng(seed).standard_normal((b, d)).astype(np.float32)
            inject = np.repeat(loop.map_samples(samples)[:, None, :], m, axis=1)
        else:
            inject = np.asarray(inject_latents, dtype=np.float32)
            if inject.ndim == 2:
                inject = np.repeat(inject[:, None, :], m, axis=1)
            if inject.shape != codes.shape or not np.all(np.isfinite(inject)):
                raise InputError(f"inject_latents must be finite, [{b}, {m}, {d}] or [{b}, {d}]; got {list(inject.shape)}")
        a = 1.0 if alpha is None else float(alpha)
        codes[:, mask] = a * inject[:, mask] + (1.0 - a) * codes[:, mask]
        return TranslationResult(images=loop.synthesise(codes), latents=codes, iterations=base.iterations)

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
    def _open_loop(self) -> RefinementLoop:
        if self._loop is None:
            raise InputError("this Translator is closed")
        return self._loop

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
