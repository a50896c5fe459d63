"""A labelled comparison image for one face crop: low-resolution input | bicubic | SDK N = 1 |
SDK N = k | original, each panel with its PSNR against the original (and, for a face aligned in
a larger photograph, the photograph with the result pasted back).

All panels are at the model's output size R (the low-resolution input enlarged nearest
neighbour, as it is shown), enlarged nearest neighbour to the panel size so their pixels
compare one to one. PSNR is on 8-bit RGB at R px: 10 log10(255^2 / MSE). Inversion bundles
have no low-resolution input and no bicubic panel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from samples.video_io import SampleError
from sdk import Translator
from sdk.tasks import low_resolution

COMPARED_TASKS = ("super_resolution", "inversion")
LABEL_BAND = 40  # px above each panel: its name and its PSNR
FOOTER = 22  # px under the panels: what the factor means and which bundle made them


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two equal-size uint8 images (inf when they are equal)."""
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class Panel:
    name: str
    image: np.ndarray  # HxWx3 uint8 RGB
    psnr: float | None = None  # None: not scored (the reference, the pasted-back photograph)


def iteration_counts(translator: Translator, iterations: int | None = None) -> list[int]:
    """The loop lengths compared: 1 and ``iterations`` (default the bundle's own), within the
    bundle's schedule (a one-pass bundle gives [1])."""
    schedule = translator.manifest.schedule
    n = iterations or schedule.default_iterations
    if schedule.max_iterations is not None:
        n = min(n, schedule.max_iterations)
    return sorted({1, n})


def comparison_panels(
    translator: Translator,
    crop: np.ndarray,
    reference: np.ndarray,
    iterations: int | None = None,
    factor: int | None = None,
) -> list[Panel]:
    """The panels for ``crop`` (HxWx3 uint8, the square the model sees, any size: resized to
    the model input S by the task) and ``reference`` (RxRx3 uint8, the same square at the output
    size R)."""
    from PIL import Image

    m = translator.manifest
    if m.task not in COMPARED_TASKS:
        raise SampleError(
            f"the comparison needs a {' or '.join(COMPARED_TASKS)} bundle, not {m.task}: use --no-compare"
        )
    size = translator.output_size
    if reference.shape[:2] != (size, size):
        raise SampleError(f"the reference must be {size}x{size} (the output size); got {reference.shape[:2]}")
    options = {}
    panels = []
    if m.task == "super_resolution":
        factor = int(m.task_options.get("factor", 4)) if factor is None else factor
        options = {"factor": factor}
        model_crop = np.asarray(Image.fromarray(crop).resize((m.input_size,) * 2, Image.BILINEAR))
        low = low_resolution(model_crop.transpose(2, 0, 1).astype(np.float32) / 255.0, factor)
        low = Image.fromarray(low.astype(np.uint8).transpose(1, 2, 0))
        shown = np.asarray(low.resize((size, size), Image.NEAREST))
        cubic = np.asarray(low.resize((size, size), Image.BICUBIC))
        panels += [Panel(f"input {low.width} px (x{factor})", shown), Panel("bicubic", cubic)]
    for n in iteration_counts(translator, iterations):
        panels.append(Panel(f"SDK N = {n}", translator(crop, iterations=n, **options)))
    for panel in panels:
        panel.psnr = psnr(panel.image, reference)
    panels.append(Panel("original", reference))
    return panels


def render(panels: list[Panel], panel_size: int = 192, footer: str = "") -> np.ndarray:
    """The panels side by side, each ``panel_size`` px high under its label; a panel that is
    not square (a pasted-back photograph) keeps its aspect. HxWx3 uint8 RGB."""
    from PIL import Image, ImageDraw

    widths = [panel_size if p.image.shape[0] == p.image.shape[1] else _width(p.image, panel_size) for p in panels]
    canvas = Image.new("RGB", (sum(widths) + 4 * (len(panels) - 1), LABEL_BAND + panel_size + FOOTER), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(15), _font(12)
    x = 0
    for panel, width in zip(panels, widths):
        square = panel.image.shape[0] == panel.image.shape[1]
        resample = Image.NEAREST if square else Image.LANCZOS  # pixels one to one; a photograph shrunk smoothly
        canvas.paste(Image.fromarray(panel.image).resize((width, panel_size), resample), (x, LABEL_BAND))
        draw.text((x + 3, 2), panel.name, fill="black", font=font)
        draw.text((x + 3, 21), _score(panel), fill=(60, 60, 60), font=small)
        x += width + 4
    if footer:
        draw.text((3, LABEL_BAND + panel_size + 4), footer, fill=(60, 60, 60), font=small)
    return np.asarray(canvas)


def _width(image: np.ndarray, height: int) -> int:
    return max(1, round(image.shape[1] * height / image.shape[0]))


def _score(panel: Panel) -> str:
    if panel.psnr is None:
        return "reference" if panel.name == "original" else ""
    return "identical" if math.isinf(panel.psnr) else f"PSNR {panel.psnr:.1f} dB"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType builds (the PyPI wheels): scalable
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()
