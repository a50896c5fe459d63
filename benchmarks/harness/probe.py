"""Cold start and peak memory of one back end, measured in a fresh process.

    python -m benchmarks.harness.probe onnxruntime BUNDLE --iterations 5 --frames 3
    python -m benchmarks.harness.probe pytorch_public CHECKPOINT --iterations 5 --frames 3
    python -m benchmarks.harness.probe onnxruntime BUNDLE --page-cache cold --frames 1

Peak resident memory (``VmHWM``) is a per-process high-water mark, so every back end gets its
own process; the ONNX Runtime probe never imports torch (the SDK does not need it, and its
libraries alone are hundreds of MB resident). Prints one JSON object:

* ``open_s``: ``Translator(bundle)`` (SHA-256 checks, sessions) or, for PyTorch, loading the
  checkpoint and building the modules;
* ``page_cache``: where the source's files were when the clock started. Opening reads a GB or
  more, so the time depends on whether those files are in the kernel's page cache: ``warm``
  (``--page-cache warm``, the default) reads every file once first, as a service restarting on
  a bundle it just used would find them; ``cold`` asks the kernel to drop them
  (``posix_fadvise(DONTNEED)``), as after a reboot or a copy. Left to chance, the same bundle
  measured 0.8 s warm and 3.0 s on a machine's first read. ``cold`` empties this machine's cache
  only: a virtual disk's host may still hold the blocks, so a first read ever can be slower yet;
  where the platform has no ``posix_fadvise`` the state is ``unchanged``;
* ``first_frame_s``: the first call (buffers are allocated then), ``frame_s``: the later ones;
* ``rss_open_mib``, ``peak_rss_mib``: resident memory after opening, and the peak over the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from sdk.extras import exit_for_missing_extra

try:
    from benchmarks.harness.measure import peak_rss_mib, rss_mib
except ModuleNotFoundError as e:
    exit_for_missing_extra(e, "export,bench", __name__)

log = logging.getLogger("probe")
PAGE_CACHE_STATES = ("warm", "cold")


def source_files(source: str | Path) -> list[Path]:
    """The files opening ``source`` reads: every file under a bundle folder, or the checkpoint."""
    source = Path(source)
    return sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]


def prepare_page_cache(source: str | Path, state: str) -> str:
    """Put ``source``'s files in (``warm``) or out of (``cold``) the page cache; returns the state
    reached: ``warm``, ``cold``, or ``unchanged`` (asked for ``cold`` without ``posix_fadvise``)."""
    if state not in PAGE_CACHE_STATES:
        raise ValueError(f"page cache state {state!r}: use one of {PAGE_CACHE_STATES}")
    if state == "cold" and not hasattr(os, "posix_fadvise"):
        return "unchanged"
    buffer = bytearray(1 << 16)  # reused and below malloc's mmap threshold: reading leaves the heap as it was
    for path in source_files(source):
        with open(path, "rb", buffering=0) as f:
            if state == "warm":
                while f.readinto(buffer):
                    pass
            else:
                os.fdatasync(f.fileno())  # dirty pages (a bundle just built) are not dropped
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return state


def _open_sdk(bundle: str, threads: int):
    from sdk import Translator

    t = Translator(bundle, backend="onnxruntime", threads=threads)
    return (lambda x, n: t.infer(x, iterations=n).images), t.input_shape


def _open_pytorch(checkpoint: str, threads: int, name: str):
    import torch

    from benchmarks.harness.backends import make_backend
    from export.checkpoints.registry import load_checkpoint

    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    loop = make_backend(name, ckpt, None, threads)
    shape = (ckpt.condition_channels, ckpt.input_size, ckpt.input_size)
    return loop.run, shape


def probe(
    backend: str, source: str, iterations: int, frames: int, threads: int, seed: int = 0, page_cache: str = "warm"
) -> dict:
    page_cache = prepare_page_cache(source, page_cache)
    base = rss_mib()
    t0 = time.perf_counter()
    if backend == "onnxruntime":
        run, shape = _open_sdk(source, threads)
    else:
        run, shape = _open_pytorch(source, threads, backend)
    open_s = time.perf_counter() - t0
    rss_open = rss_mib()
    x = np.random.default_rng(seed).uniform(-1, 1, (1, *shape)).astype(np.float32)
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        run(x, iterations)
        times.append(time.perf_counter() - t0)
    return {
        "backend": backend,
        "iterations": iterations,
        "frames": frames,
        "threads": threads,
        "page_cache": page_cache,
        "rss_before_open_mib": base,
        "open_s": open_s,
        "first_frame_s": times[0] if times else None,
        "frame_s": times[1:],
        "rss_open_mib": rss_open,
        "rss_end_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("backend", choices=("onnxruntime", "pytorch_public", "pytorch_export"))
    p.add_argument("source", help="the bundle folder (onnxruntime) or the checkpoint file (PyTorch)")
    p.add_argument("--iterations", type=int, default=5, help="loop iterations per frame (default 5)")
    p.add_argument("--frames", type=int, default=3, help="frames to run after opening (default 3; 0: open only)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument(
        "--page-cache",
        choices=PAGE_CACHE_STATES,
        default="warm",
        help="the source's files in the page cache before opening (warm, default) or dropped from it (cold)",
    )
    args = p.parse_args(argv)
    if args.frames < 0:
        p.error(f"--frames {args.frames}: give 0 (open only) or more")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    print(
        json.dumps(
            probe(args.backend, args.source, args.iterations, args.frames, args.threads, page_cache=args.page_cache)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
