"""``Translator``: the public API. Opens a bundle, picks a backend, runs the refinement loop.

    t = Translator("engines/demo")
    out = t(frame)                                     # HxWx3 uint8 RGB in, HxWx3 uint8 out
    res = t.infer(x, iterations=5, return_steps=True)  # NCHW float32 in the model's range
    res.images, res.latents, res.steps

On a GPU: ``Translator(..., cuda_graphs=True)`` replays the loop from CUDA graphs (TensorRT),
``infer`` takes CUDA arrays (PyTorch, CuPy, DLPack) and returns them with ``output="device"``
(``docs/gpu.md``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arguments import check_magnitude, check_options, float_array, init_pair, layer_mask
from .backends import create_backend
from .bundle import Bundle, Manifest
from .checks import finite_float, is_int, match_shape, refuse_masked, shown
from .device_arrays import DeviceInput, device_view, is_device_array
from .errors import BackendError, InputError
from .imaging import to_uint8_image
from .loop import LoopResult, RefinementLoop, Step
from .tasks import preprocess

log = logging.getLogger(__name__)

State = np.ndarray | DeviceInput  # one array of a loop state or input: on the host, or a CUDA array


@dataclass
class TranslationResult:
    """``images``: [B, 3, R, R] float32 raw generator output (about [-1, 1], not clipped);
    ``latents``: [B, M, D] W+ codes; ``steps``: each iteration's latents and images when
    ``return_steps=True``; ``iterations``: how many ran (fewer than asked after an early exit);
    ``latent_change``: with ``early_exit``, each step's mean absolute latent change (the
    largest over the batch). With ``infer(..., output="device")`` the arrays are
    :class:`sdk.device_arrays.DeviceArray` (GPU memory) instead of numpy arrays."""

    images: np.ndarray
    latents: np.ndarray
    iterations: int
    steps: list[Step] | None = None
    latent_change: list[float] | None = None

    @classmethod
    def from_loop(cls, r: LoopResult) -> TranslationResult:
        return cls(
            images=r.images, latents=r.latents, iterations=r.iterations, steps=r.steps, latent_change=r.latent_change
        )


class Translator:
    """Image-to-image translation with a bundle built by ``export/build_engines.py``.

    Args:
        bundle: path of the bundle folder (``engines/NAME``).
        backend: ``"auto"`` (the bundle's TensorRT engines where TensorRT and a GPU are present and
            the engines were built for them, else ONNX Runtime on CUDA if available, else on a CPU
            OpenVINO at gated BF16/FP16 where the CPU has it, else ONNX Runtime: docs/cpu_backends.md),
            ``"tensorrt"``, ``"onnxruntime"`` (CPU), ``"onnxruntime-cuda"``, ``"onnxruntime-tensorrt"``
            (ONNX Runtime's TensorRT provider), ``"openvino"`` (CPU, the openvino extra).
        threads: intra-op threads for CPU back ends, an int in 1..:func:`sdk.arguments.max_threads` (four per
            core, at most 1024: more only oversubscribes the cores, and ONNX Runtime takes minutes
            to start 10**5 threads); None: the runtime's choice.
        verify: check the SHA-256 of every bundle file the backend loads, before loading it
            (recommended; ``Bundle(path).verify()`` checks all of them).
        device: the GPU index for the GPU back ends, an int in 0..:data:`sdk.arguments.MAX_DEVICE`.
        cuda_graphs: record each (batch, iterations, cold/warm start) loop into a CUDA graph on
            its first call and replay it afterwards (TensorRT backend; others warn and run eagerly).
            Calls with ``return_steps`` or ``early_exit`` read the host between steps and run eagerly.
        precision: "auto" (on a CPU: BF16/FP16 on OpenVINO where the CPU has it and the bundle
            passes the accuracy gate, :mod:`sdk.precision_gate`), "fp32" (forced), "bf16", "fp16"
            (OpenVINO only). backend_options: OpenVINO's ``{"hint": "LATENCY" | "THROUGHPUT",
            "pinning": bool}``.

    One Translator may be shared by threads; calls are serialised. ``close()`` (or a
    ``with`` block) releases the sessions and buffers.

    Every argument is checked (type, range, an array's shape and batch size) before any work,
    and a bad one raises an :class:`sdk.errors.SdkError` subclass saying what was expected.
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        backend: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        device: int = 0,
        cuda_graphs: bool = False,
        precision: str = "auto",
        backend_options: Mapping[str, Any] | None = None,
    ):
        check_options(backend, threads, verify, device, cuda_graphs)
        self.bundle = Bundle(bundle, verify=False)  # the loop checks the files its backend reads
        self.backend = create_backend(
            backend, threads, self.bundle, device, precision=precision, options=backend_options
        )
        self._loop: RefinementLoop | None = None
        try:
            self._loop = RefinementLoop(self.backend, self.bundle, cuda_graphs, verify)
        except BackendError as e:
            self.backend.close()
            if backend != "auto" or self.backend.name != "tensorrt":
                raise
            # an engine that passed the version checks but does not deserialise: the graphs still run
            log.warning(
                "TensorRT engines of %s cannot be loaded (%s); falling back to ONNX Runtime", self.bundle.path, e
            )
            self.backend = create_backend("auto", threads=threads, device=device)
            self._loop = RefinementLoop(self.backend, self.bundle, cuda_graphs, verify)
        except BaseException:
            self.backend.close()  # device memory and streams of a half-opened backend
            raise
        log.info(
            "opened %s (%s, task %s) on %s",
            self.bundle.path,
            self.manifest.family,
            self.manifest.task,
            self.backend.name,
        )

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

    @property
    def output_range(self) -> tuple[float, float]:
        """The generator's nominal output range (``images`` are raw, not clipped to it)."""
        return self.manifest.output_range

    # ------------------------------------------------------------------ inference
    def infer(
        self,
        x: np.ndarray,
        iterations: int | None = None,
        return_steps: bool = False,
        init: TranslationResult | tuple | None = None,
        early_exit: float | None = None,
        output: str = "host",
    ) -> TranslationResult:
        """Run the loop on ``x``: [B, C_x, S, S] (or [C_x, S, S]) float32 in the model's input
        range. ``iterations`` defaults to the bundle's; pSp bundles allow 1.

        GPU backends also take ``x`` (and ``init``) as CUDA arrays — anything with
        ``__cuda_array_interface__`` or CUDA ``__dlpack__`` (PyTorch, CuPy): C-contiguous float32
        on the Translator's GPU, copied device to device after the producer's stream (their
        values are not range-checked: that would need a host read). ``output="device"`` returns
        ``images``/``latents`` (and steps) as :class:`sdk.device_arrays.DeviceArray`: new GPU
        memory, ready when returned, owned by the result (valid after later calls).

        Video (iterative bundles): ``init`` = the previous frame's result (or ``(latents,
        images)``) starts the loop there instead of at the average latent (warm start), and
        ``early_exit`` = a threshold on the mean absolute latent change per step (OME Eq. 16)
        stops the loop once the codes settle, ``iterations`` being the cap::

            prev = None
            for x in frames:
                prev = t.infer(x, iterations=5, init=prev, early_exit=0.03)  # fires on the demo: docs/python_api.md
        """
        loop = self._open_loop()
        loop.check_arguments(iterations, return_steps, early_exit, output)
        checked, batch = self._check_input(x)
        start = None
        if init is not None:  # shapes checked before any array is converted
            latents, images = (init.latents, init.images) if isinstance(init, TranslationResult) else init_pair(init)
            start = self._start_state(loop, latents, images, batch)
        if isinstance(checked, np.ndarray):
            checked = self._host_input(checked)
        return TranslationResult.from_loop(loop.run(checked, iterations, return_steps, start, early_exit, output))

    def synthesise(self, latents: np.ndarray) -> np.ndarray:
        """Render W+ codes: [B, M, D] (or [M, D]) float32 → [B, 3, R, R] raw generator images."""
        loop = self._open_loop()
        m = self.manifest
        forms = [(None, m.latent_count, m.latent_dim), (m.latent_count, m.latent_dim)]
        codes = float_array(latents, "latents", lambda shape: loop.check_batch(match_shape(shape, forms, "latents")))
        check_magnitude(codes, "latents")
        return loop.synthesise(codes if codes.ndim == 3 else codes[None])

    def mix(
        self,
        x: np.ndarray,
        latent_mask=None,
        alpha: float | None = None,
        seed: int | None = None,
        inject_latents: np.ndarray | None = None,
        iterations: int | None = None,
    ) -> TranslationResult:
        """Multi-modal synthesis by style mixing (pSp Sec. 3.2): translate ``x``, then take the
        layers in ``latent_mask`` from another code — ``inject_latents`` ([B, M, D] or [B, D] W
        codes), or a random one, ``mapping(z)`` with ``z ~ N(0, I)`` drawn with ``seed``. With
        ``alpha`` the layers are blended, ``alpha * inject + (1 - alpha) * code``, as pSp's
        ``mix_alpha``. ``latent_mask`` defaults to the fine layers 8..M-1 (pSp's default for
        conditional synthesis); indices are 0-based."""
        loop = self._open_loop()
        m, d = self.manifest.latent_count, self.manifest.latent_dim
        mask = layer_mask(latent_mask, m)  # every argument is checked before the loop runs
        a = 1.0 if alpha is None else finite_float(alpha)
        if a is None or not 0.0 <= a <= 1.0:
            raise InputError(f"alpha must be a number in [0, 1]; got {shown(alpha)}")
        if seed is not None and (not is_int(seed) or seed < 0):
            raise InputError(f"seed must be a non-negative int or None; got {shown(seed)}")
        loop.check_arguments(iterations)
        b = self._check_input(x)[1]
        inject = None
        if inject_latents is None:
            loop.mapping_spec()  # a bundle without a mapping graph cannot draw the code: say so before the loop
        else:
            inject = float_array(
                inject_latents,
                "inject_latents",
                lambda shape: match_shape(shape, [(b, m, d), (b, d)], "inject_latents"),
            )
            check_magnitude(inject, "inject_latents")
            if inject.ndim == 2:
                inject = np.repeat(inject[:, None, :], m, axis=1)
        base = self.infer(x, iterations=iterations)
        codes = base.latents.copy()
        if inject is None:
            samples = np.random.default_rng(seed).standard_normal((b, d)).astype(np.float32)
            inject = np.repeat(loop.map_samples(samples)[:, None, :], m, axis=1)
        codes[:, mask] = a * inject[:, mask] + (1.0 - a) * codes[:, mask]
        return TranslationResult(images=loop.synthesise(codes), latents=codes, iterations=base.iterations)

    def __call__(self, image, iterations: int | None = None, **task_options) -> np.ndarray:
        """An image → HxWx3 uint8 RGB at the generator's resolution. ``image``: HxWx3 uint8 RGB
        (or gray HxW, RGBA, 16-bit, float in [0, 1]), a PIL image in any mode, or a file path
        (read with Pillow, if installed). ``task_options``: e.g. ``factor=8`` for super-resolution."""
        self.check_iterations(iterations)  # before the pre-processing's work
        x = self.preprocess(image, **task_options)
        result = self.infer(x[None], iterations=iterations)
        return to_uint8_image(result.images[0])

    def translate_faces(self, frame, **options) -> np.ndarray:
        """Face models on whole frames: every face (``which="best"``: the best only) FFHQ-aligned at
        the input size, translated, pasted back; a new frame of the same size. ``options``:
        ``landmarks``, ``which``, ``iterations`` and task options, as :func:`sdk.faces.translate.translate_faces`."""
        from .faces.translate import translate_faces  # the faces extras: imported only when asked

        return translate_faces(self, frame, **options)

    def preprocess(self, image, **task_options) -> np.ndarray:
        """The task's pre-processing: image (as for calls: array, PIL image or file path) →
        [C_x, S, S] float32 in the model's range."""
        self._open_loop()
        return preprocess(image, self.manifest, **task_options)

    def check_iterations(self, iterations: int | None = None) -> int:
        """The number of iterations a call with ``iterations`` runs (None: the bundle's default);
        :class:`InputError` if it is out of range or this Translator is closed. Cheap: for
        callers that check before their own pre-processing."""
        return self._open_loop().check_arguments(iterations)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the sessions and device buffers (after a call in progress); idempotent."""
        if self._loop is not None:
            self._loop.close()
            self.backend.close()
            self._loop = None
            _return_heap_to_os()

    def __enter__(self) -> Translator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ checks
    def _open_loop(self) -> RefinementLoop:
        if self._loop is None:
            raise InputError("this Translator is closed")
        return self._loop

    def _device_input(self, value, what: str) -> DeviceInput:
        self._open_loop().check_device_use("host", device_inputs=True)  # a clear error on CPU backends
        return device_view(value, self.backend.consumer_stream, what)

    def _start_state(self, loop: RefinementLoop, latents, images, batch: int) -> tuple[State, State]:
        """A warm start (latents, images) for ``batch``: shapes checked first, then each array a
        :class:`DeviceInput` (CUDA arrays) or finite float32, with the batch axis."""
        shapes = loop.state_shapes(batch)
        state: list[State] = []
        for value, shape, what in zip((latents, images), shapes, ("latents", "images")):
            forms = [shape, shape[1:]] if batch == 1 else [shape]

            def check(got, forms=forms, what=what):
                try:
                    match_shape(got, forms, f"init {what}")
                except InputError:
                    raise InputError(
                        f"init must be (latents {list(shapes[0])}, images {list(shapes[1])}) float32 "
                        f"arrays for this batch (a previous result); got init {what} of shape "
                        f"{list(got)}"
                    ) from None

            if is_device_array(value):
                view = self._device_input(value, f"init {what}")
                check(view.shape)
                state.append(view if view.ndim == len(shape) else view.with_batch())
            else:
                arr = float_array(value, f"init {what}", check)
                check_magnitude(arr, f"init {what}")
                state.append(arr if arr.ndim == len(shape) else arr[None])
        return state[0], state[1]

    def _check_input(self, x) -> tuple[np.ndarray | DeviceInput, int]:
        """``x`` (a host array as given, or a :class:`DeviceInput`) and its batch size, checked
        by shape, batch and dtype only: nothing is converted or copied yet."""
        device = is_device_array(x)
        if not device and not isinstance(x, np.ndarray):
            raise InputError(
                f"infer() takes a numpy array; got {type(x).__name__} (GPU backends also take CUDA "
                f"arrays). Use translator(image) for HxWx3 images"
            )
        if device:
            x = self._device_input(x, "x")
        else:
            refuse_masked(x, "x")
        c, s, _ = self.input_shape
        if tuple(x.shape[-3:]) != (c, s, s) or x.ndim not in (3, 4):
            raise InputError(f"expected x of shape [B, {c}, {s}, {s}] or [{c}, {s}, {s}] (NCHW); got {list(x.shape)}")
        if int(np.prod(x.shape)) == 0:
            raise InputError(f"x is empty (shape {list(x.shape)}); expected a batch of at least 1")
        batch = x.shape[0] if x.ndim == 4 else 1
        self._open_loop().check_batch(batch)  # before a copy: a broadcast view may hold a million frames
        if device:  # not range-checked: that would need a host read
            return (x if x.ndim == 4 else x.with_batch()), batch
        if not np.issubdtype(x.dtype, np.floating):
            lo, hi = self.manifest.input_range
            raise InputError(f"expected float32 input in {[lo, hi]}; got dtype {x.dtype}")
        return x, batch

    def _host_input(self, x: np.ndarray) -> np.ndarray:
        """A checked host ``x`` as C-contiguous float32 [B, C, S, S], finite and near the model's range."""
        lo, hi = self.manifest.input_range
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, refused below
            x = np.ascontiguousarray(x if x.ndim == 4 else x[None], dtype=np.float32)  # a copy if it must change
        if not np.all(np.isfinite(x)):
            raise InputError("x contains NaN or Inf (or values too large for float32)")
        # A generous bound (one range width either side) that catches 0..255 pixels given to a [-1, 1]
        # model without refusing resampling overshoot.
        span = hi - lo
        if x.min() < lo - span or x.max() > hi + span:
            raise InputError(
                f"x has values in [{x.min():.4g}, {x.max():.4g}]; this model expects its input "
                f"range [{lo:g}, {hi:g}] (pixels 0..255? use translator(image), which scales them)"
            )
        return x


def _return_heap_to_os() -> None:
    """glibc keeps the memory of freed sessions (GBs for large graphs) in its arenas; hand it back."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
