#!/usr/bin/env python
"""Build a bundle: checkpoint → export-friendly modules → ONNX graphs, parity-checked in
ONNX Runtime → (TensorRT engines where TensorRT is installed) → ``engines/NAME``.

    python export/build_engines.py                                  # the embedded demo model (64 px OME SR)
    python export/build_engines.py --checkpoint restyle.pt --out engines/restyle
    python export/build_engines.py --checkpoint psp_sr.pt --task super_resolution --factor 8

Formats (detected from the file, or --format):
  psp          pixel2style2pixel: GradualStyleEncoder, or the W / W+ backbone encoders
               (learn_in_w); one pass
  restyle_psp  ReStyle BackboneEncoder, iterative (6 input channels, N = 5 by default)
  restyle_fpn  ReStyle GradualStyleEncoder = OME's StyleGAN2 encoder, iterative
  e2style      E2Style: a first stage and k refinement stages, each with its own weights;
               --iterations counts the stages used
  rosinality   a StyleGAN2 file (g_ema) to replace the decoder (--generator)
  ome_stylegan2 / ome_progan / mtv_tsa   see export/checkpoints/ome.py and mtv.py
Tasks (default: read from the checkpoint's opts):
  inversion         RGB in, resized to 256
  super_resolution  RGB in, bicubic-downsampled by --factor and resized back (pSp's transforms)
  sketch            one channel in [0, 1]
  segmentation      an HxW label map, one-hot over label_nc channels

The bundle is written to a temporary folder and renamed into place: an interrupted build
leaves the previous bundle intact. A parity break (ONNX vs PyTorch beyond --tolerance) fails
the build with the numbers.

Exit codes: 0 built; 2 a checkpoint, bundle or --out problem, or a disk that filled (one line
naming it, nothing half-written); 1 a parity, FP16 accuracy or TensorRT engine failure; 130
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root replaces this folder on the path
    # (export/ itself must not be on it: export/onnx and export/tensorrt would shadow onnx and tensorrt)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import importlib
import signal
import threading

from export.builder.options import BuildOptions, add_arguments
from export.demo import DEMO_CHECKPOINT
from sdk.extras import EXIT_MISSING_EXTRA, missing_extra_line

log = logging.getLogger("build_engines")
REPO = Path(__file__).resolve().parents[1]
# libraries that log progress at INFO (onnxscript's optimiser per initializer and pass, torch's
# exporter): WARNING and above unless -v
THIRD_PARTY_LOGGERS = ("onnxscript", "onnx_ir", "torch", "torch.onnx", "torch._dynamo", "torch.export")
# warnings that are not about this build: torch's exporter registers torchvision's ops when
# torchvision is installed and warns four times per graph that it is not (the graphs use none)
NOT_OURS = ("torch.onnx._internal.exporter._registration",)
EXPORT_PACKAGES = ("torch", "onnx", "onnxscript", "tqdm")  # what a build imports from the export extra


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the libraries' own INFO lines")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    try:  # the export extra, checked before minutes of work, in one line
        for package in EXPORT_PACKAGES:
            importlib.import_module(package)
    except ModuleNotFoundError as e:
        print(missing_extra_line(e, "export"), file=sys.stderr)
        return EXIT_MISSING_EXTRA
    options = BuildOptions.from_args(args)
    if options.checkpoint is None:
        log.info(
            "no --checkpoint: the embedded demo model (%s, trained by export/demo/train.py)",
            DEMO_CHECKPOINT.relative_to(REPO),
        )
        options = options.replace(checkpoint=DEMO_CHECKPOINT, out=options.out or REPO / "engines" / "demo")
    assert options.checkpoint is not None
    options = options.replace(
        out=options.out or REPO / "engines" / options.checkpoint.stem,
        timing_cache=options.timing_cache or REPO / "engines" / ".timing_cache",
    )
    return _build(options)


def configure_logging(verbose: bool) -> None:
    """Our INFO lines (a few per graph); the libraries' at WARNING unless ``verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in NOT_OURS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)


class _InterruptWatch:
    """Remembers a Ctrl-C while the build runs. The KeyboardInterrupt it raises can land inside a
    library that turns it into its own error (torch.export reports a failed export); the build
    must still say it was interrupted, and exit with 130."""

    seen = False

    def __enter__(self) -> _InterruptWatch:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _build(options: BuildOptions) -> int:
    from export.builder.bundle import build
    from export.builder.disk import DiskFullError, disk_full_error
    from export.checkpoints.types import CheckpointError
    from export.onnx.parity import ParityError
    from export.precision.fp16 import Fp16Error
    from export.tensorrt.engines import EngineBuildError
    from sdk.build_target import check_build_target
    from sdk.errors import SdkError

    out = options.out
    assert out is not None
    interrupt = _InterruptWatch()
    try:
        with interrupt:
            check_build_target(out)  # before the minutes of loading and tracing: refuse a user's folder now
            build(options)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or (interrupt.seen and isinstance(e, Exception)):
            log.error("interrupted; the previous bundle (if any) is untouched")
            return 130
        full = disk_full_error(e, out.parent) if isinstance(e, OSError) else None  # outside the bundle writer
        if full is not None or isinstance(e, (CheckpointError, SdkError, DiskFullError)):
            log.error("%s", " ".join(str(full or e).split()))  # one line
            return 2
        if isinstance(e, (ParityError, Fp16Error, EngineBuildError)):
            log.error("%s", e)
            return 1
        raise
    log.info("bundle ready: %s  (try: python samples/translate.py --bundle %s)", out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
