"""From a square crop to the model input and the low-resolution image it stands for, and the
side-by-side composite (input | bicubic | SDK result) with its status bar.

Low resolution, two ways (``factor``):

* simulated (``factor`` > 1, super-resolution bundles): the crop is taken at the model's input
  size and the task's own pre-processing downsamples it by ``factor`` and resizes it back, as
  the model was trained (pSp's SuperResTransforms). The low-resolution image shown is the
  downsampled one the model saw (S / factor px).
* real (``factor`` = 1, or an inversion bundle): the crop is the low-resolution image as the
  camera delivers it (a small or distant face), resized to the input size by the task's
  pre-processing with factor 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from samples.frame_stats import STAGES, FrameStats
from samples.video_io import SampleError
from sdk import Translator
from sdk.imaging import to_uint8_image
from sdk.tasks import low_resolution

SUPPORTED_TASKS = ("super_resolution", "inversion")
BAR = 40  # status bar height under the panels, px
MIN_PANEL = 64


def composite_size(panel: int) -> tuple[int, int]:
    """(width, height) of every composite frame (and of the ``--output`` video)."""
    return 3 * panel, panel + BAR


@dataclass
class ModelInput:
    x: np.ndarray  # [C, S, S] float32, the model's input
    low_res: np.ndarray  # HxWx3 uint8, the low-resolution image x was made from


class LowResolution:
    """Makes :class:`ModelInput` from crops for one bundle and ``factor`` (see the module doc)."""

    def __init__(self, translator: Translator, factor: int | None = None):
        m = translator.manifest
        if m.task not in SUPPORTED_TASKS:
            raise SampleError(
                f"this sample translates camera images; bundle task {m.task!r} needs other input "
                f"(supported: {', '.join(SUPPORTED_TASKS)})"
            )
        if m.task == "super_resolution":
            factor = int(m.task_options.get("factor", 4)) if factor is None else factor
        elif factor not in (None, 1):
            raise SampleError(f"--factor applies to super-resolution bundles; this bundle's task is {m.task}")
        self.translator, self.factor = translator, factor or 1
        self.simulated = self.factor > 1
        if self.simulated and m.input_size % self.factor:
            raise SampleError(f"--factor {self.factor} does not divide the model's input size {m.input_size}")
        self._options = {"factor": self.factor} if m.task == "super_resolution" else {}

    @property
    def crop_size(self) -> int | None:
        """The size to crop at: the model's input size when simulating, else the crop's own."""
        return self.translator.manifest.input_size if self.simulated else None

    def __call__(self, crop: np.ndarray) -> ModelInput:
        x = self.translator.preprocess(crop, **self._options)
        if not self.simulated:
            return ModelInput(x, crop)
        # the low-resolution image the task's pre-processing makes before it resizes back: shown and scored
        low = low_resolution(crop.transpose(2, 0, 1).astype(np.float32) / 255.0, self.factor)
        return ModelInput(x, low.astype(np.uint8).transpose(1, 2, 0))

    def describe(self) -> str:
        """What the model's input is, for the overlay: the factor's meaning, not a claim about
        the camera (``--factor 1`` on a sharp face is a sharp input, not a low-resolution one)."""
        if self.translator.manifest.task != "super_resolution":
            return "inversion"
        if self.simulated:
            return f"x{self.factor}: downsampled {self.factor}x"
        return "x1: as captured, not downsampled"


class VideoLoop:
    """The loop frame after frame. Cold: every frame from the average latent, ``iterations``
    steps. Warm (``warm=True``): each frame from the previous frame's result, ``warm_iterations``
    steps (default ``iterations``); a frame starts cold when asked (``restart``: a new face, a
    cut), the first time, and every ``refresh``-th frame (0: never).

    Why refresh: an encoder trained on short chains of steps need not have a stable fixed point —
    the demo model's codes keep moving a little every step (mean |dz| about 0.02 after step 5)
    and its images degrade after 10 or so steps from the average, so a warm-started stream, which
    runs frames x steps, degrades. A cold frame every few frames bounds the chain.
    ``early_exit`` applies to every frame, the frame's step count being the cap."""

    def __init__(
        self,
        translator: Translator,
        iterations: int | None = None,
        warm: bool = False,
        warm_iterations: int | None = None,
        refresh: int = 0,
        early_exit: float | None = None,
    ):
        self.translator, self.iterations, self.warm = translator, iterations, warm
        self.warm_iterations = iterations if warm_iterations is None else warm_iterations
        self.refresh, self.early_exit = refresh, early_exit
        self._previous = None
        self._since_cold = 0
        self.last_was_warm = False

    def __call__(self, x: np.ndarray, restart: bool = False):
        """Run one frame (``x``: [1, C, S, S]); returns the :class:`sdk.TranslationResult`."""
        warm = (
            self.warm
            and self._previous is not None
            and not restart
            and not (self.refresh and self._since_cold >= self.refresh)
        )
        result = self.translator.infer(
            x,
            iterations=self.warm_iterations if warm else self.iterations,
            init=self._previous if warm else None,
            early_exit=self.early_exit,
        )
        self._since_cold = self._since_cold + 1 if warm else 1
        self._previous = result if self.warm else None
        self.last_was_warm = warm
        return result


def result_image(translator: Translator, images: np.ndarray) -> np.ndarray:
    """The first image of a result's ``images`` as HxWx3 uint8 RGB (the bundle's output range)."""
    lo, hi = translator.output_range
    return to_uint8_image(images[0], float(lo), float(hi))


def bicubic(cv2, low_res: np.ndarray, size: int) -> np.ndarray:
    """The baseline: bicubic resampling of the low-resolution image to ``size`` px (area filter
    if it has to shrink, as for a real crop larger than the output)."""
    interp = cv2.INTER_CUBIC if size >= low_res.shape[0] else cv2.INTER_AREA
    return cv2.resize(low_res, (size, size), interpolation=interp)


class Compositor:
    """Three panels of ``panel`` px — the low-resolution input (nearest neighbour), bicubic and
    the SDK result (both at the model's output size, enlarged nearest neighbour so their pixels
    compare one to one) — over a status bar; RGB uint8, :func:`composite_size`."""

    def __init__(self, cv2, output_size: int, panel: int = 256):
        if panel < MIN_PANEL or panel % 2:
            raise SampleError(f"--panel-size must be an even number >= {MIN_PANEL}; got {panel}")
        self.cv2, self.output_size, self.panel = cv2, output_size, panel
        self.size = composite_size(panel)

    def _enlarge(self, rgb: np.ndarray) -> np.ndarray:
        return self.cv2.resize(rgb, (self.panel, self.panel), interpolation=self.cv2.INTER_NEAREST)

    def compose(self, low_res: np.ndarray, result: np.ndarray) -> np.ndarray:
        width, height = composite_size(self.panel)
        canvas = np.zeros((height, width, 3), np.uint8)
        panels = (low_res, bicubic(self.cv2, low_res, self.output_size), result)
        for i, image in enumerate(panels):
            canvas[: self.panel, i * self.panel : (i + 1) * self.panel] = self._enlarge(image)
        return canvas

    def overlay(self, canvas: np.ndarray, labels: tuple[str, ...], status: list[str]) -> None:
        """Panel labels and up to two status lines, drawn in place."""
        draw_overlay(self.cv2, canvas, self.panel, [i * self.panel for i in range(len(labels))], labels, status)


class SideBySide:
    """Two frames of the source's aspect — the input and the frame with the result pasted back —
    ``panel`` px high, over the status bar; RGB uint8, :attr:`size`."""

    def __init__(self, cv2, frame_size: tuple[int, int], panel: int = 256):
        if panel < MIN_PANEL or panel % 2:
            raise SampleError(f"--panel-size must be an even number >= {MIN_PANEL}; got {panel}")
        w, h = frame_size
        self.cv2, self.panel = cv2, panel
        self.width = max(2, round(panel * w / max(h, 1) / 2) * 2)  # even: the mp4v encoder needs even sizes

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every composite frame (and of the ``--output`` video)."""
        return 2 * self.width, self.panel + BAR

    def compose(self, frame: np.ndarray, pasted: np.ndarray) -> np.ndarray:
        width, height = self.size
        canvas = np.zeros((height, width, 3), np.uint8)
        for i, image in enumerate((frame, pasted)):
            interp = self.cv2.INTER_AREA if image.shape[0] > self.panel else self.cv2.INTER_LINEAR
            shown = self.cv2.resize(image, (self.width, self.panel), interpolation=interp)
            canvas[: self.panel, i * self.width : (i + 1) * self.width] = shown
        return canvas

    def overlay(self, canvas: np.ndarray, labels: tuple[str, ...], status: list[str]) -> None:
        draw_overlay(self.cv2, canvas, self.panel, [0, self.width], labels, status)


def draw_overlay(cv2, canvas: np.ndarray, panel: int, xs, labels, status: list[str]) -> None:
    """Labels at the top left of the panels starting at ``xs``, and up to two status lines
    under the ``panel`` px high panels, drawn in place."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4 if panel >= 128 else 0.3
    for x, label in zip(xs, labels):
        org = (x + 4, 14)
        cv2.putText(canvas, label, org, font, scale, (0, 0, 0), 3, cv2.LINE_AA)  # outline: readable on any image
        cv2.putText(canvas, label, org, font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    for j, line in enumerate(status[:2]):
        cv2.putText(canvas, line, (4, panel + 15 + 18 * j), font, scale, (230, 230, 230), 1, cv2.LINE_AA)


def status_lines(stats: FrameStats, iterations: int, mode: str) -> list[str]:
    """The overlay's two lines: FPS and the loop, then this frame's per-stage milliseconds
    (capture and output are the previous frame's: this frame's are not finished yet)."""
    ms = " ".join(
        f"{label} {stats.current(key) or stats.last(key):.0f}" for key, label in STAGES if stats.recorded(key)
    )
    return [f"{stats.fps:4.1f} FPS | {iterations} it | {mode}", f"ms {ms}"]
