"""The accuracy gate of reduced-precision CPU inference, and its per-machine cache.

A reduced precision (BF16, FP16) is accepted for a bundle only if the whole loop, run in it on
a fixed input, stays within :data:`PSNR_FLOOR` dB of the FP32 loop at every step (image PSNR,
peak = the FP32 image's range) with no NaN or Inf in any step's latents or images. Candidates are
tried in the caller's order (fastest first); the first that passes is chosen, else FP32.

The decision depends on the machine (its CPU kernels) and the bundle, so it is made once per
(machine, bundle digest) and cached as JSON in the user's cache folder:
``$GAN_ENCODER_RT_CACHE``, else ``$XDG_CACHE_HOME/gan-encoder-rt``, else
``~/.cache/gan-encoder-rt`` (never the bundle folder, which may be read-only and is verified
file by file). A cache that cannot be read or written costs a new gate run, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends.base import Backend
from .bundle import Bundle
from .manifest import Manifest

log = logging.getLogger(__name__)

PSNR_FLOOR = 40.0  # dB against FP32, at every step
GATE_VERSION = 1  # bump when the gate's input, metric or islands change: old decisions are redone
CACHE_ENV = "GAN_ENCODER_RT_CACHE"


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of ``test`` against ``reference`` (peak: the reference's range); -inf where
    ``test`` has NaN or Inf, inf where they are equal."""
    ref, tst = reference.astype(np.float64), test.astype(np.float64)
    if not np.all(np.isfinite(tst)):
        return float("-inf")
    mse = float(np.mean((ref - tst) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(float(ref.max() - ref.min()), 1e-12) ** 2 / mse))


@dataclass
class GateResult:
    """One candidate against FP32: image PSNR per step and whether every step was finite."""

    precision: str
    psnr: list[float]
    finite: bool
    floor: float = PSNR_FLOOR

    @property
    def accepted(self) -> bool:
        return bool(self.finite and self.psnr and min(self.psnr) >= self.floor)

    def __str__(self) -> str:
        steps = ", ".join(f"{p:.1f}" for p in self.psnr)
        verdict = "accepted" if self.accepted else "refused"
        return f"{self.precision}: PSNR per step [{steps}] dB vs FP32 (floor {self.floor:g}), finite {self.finite}: {verdict}"


@dataclass
class Decision:
    precision: str  # the chosen one ("fp32" where no candidate passed)
    results: list[GateResult] = field(default_factory=list)
    cached: bool = False


def gate_input(manifest: Manifest, batch: int = 1, seed: int = 0) -> np.ndarray:
    """The fixed gate input: [batch, C_x, S, S] float32, a smooth random pattern (8 x 8 cells,
    bilinearly upsampled) spanning the model's input range, like an image and unlike noise."""
    lo, hi = manifest.input_range
    size, channels = manifest.input_size, manifest.input_channels
    coarse = np.random.default_rng(seed).uniform(lo, hi, (batch, channels, 9, 9))
    grid = np.linspace(0, 8, size)
    i, f = np.minimum(grid.astype(int), 7), grid - np.minimum(grid.astype(int), 7)
    rows = coarse[:, :, i] * (1 - f)[:, None] + coarse[:, :, i + 1] * f[:, None]
    return (rows[..., i] * (1 - f) + rows[..., i + 1] * f).astype(np.float32)


def loop_steps(backend: Backend, bundle: Bundle, x: np.ndarray, iterations: int) -> list:
    """Every step's (latents, image) of the loop on ``backend`` (closed afterwards)."""
    from .loop import RefinementLoop

    loop = RefinementLoop(backend, bundle)
    try:
        result = loop.run(x, iterations=iterations, return_steps=True)
        return [(s.latents, s.image) for s in result.steps or []]
    finally:
        loop.close()
        backend.close()


def compare(precision: str, reference: list, candidate: list) -> GateResult:
    """A candidate's steps against the FP32 steps (both from :func:`loop_steps`)."""
    finite = all(np.all(np.isfinite(z)) and np.all(np.isfinite(y)) for z, y in candidate)
    return GateResult(precision, [psnr(ry, cy) for (_, ry), (_, cy) in zip(reference, candidate)], bool(finite))


def bundle_digest(manifest: Manifest) -> str:
    """The bundle's identity: the digests of its graphs and constants."""
    parts = sorted(f"{k}:{g.sha256}" for k, g in manifest.graphs.items()) + [manifest.constants_sha256]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gan-encoder-rt"


def _cache_file(machine: str, digest: str, candidates: Sequence[str]) -> Path:
    key = json.dumps([GATE_VERSION, machine, digest, list(candidates)])
    return cache_dir() / "precision" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _read(path: Path) -> Decision | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        results = [GateResult(r["precision"], [float(p) for p in r["psnr"]], bool(r["finite"])) for r in raw["results"]]
        return Decision(str(raw["precision"]), results, cached=True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("precision cache %s is unreadable (%s); running the accuracy gate again", path, e)
        return None


def _write(path: Path, decision: Decision, machine: str, digest: str) -> None:
    record = {
        "precision": decision.precision,
        "results": [asdict(r) for r in decision.results],
        "machine": machine,
        "bundle_digest": digest,
        "gate_version": GATE_VERSION,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, allow_nan=True)
        os.replace(tmp, path)  # readers see the old record or the new one, never half of one
    except OSError as e:
        log.warning("could not cache the precision decision in %s (%s); the gate runs again next time", path, e)


def decide(
    bundle: Bundle,
    machine: str,
    candidates: Sequence[str],
    make_backend: Callable[[str], Backend],
    iterations: int | None = None,
) -> Decision:
    """The first of ``candidates`` (precisions, fastest first) whose loop passes the gate against
    ``make_backend("fp32")``'s, else "fp32"; cached per ``machine`` and bundle. ``iterations``:
    the steps compared (default: the bundle's default N)."""
    digest = bundle_digest(bundle.manifest)
    path = _cache_file(machine, digest, candidates)
    cached = _read(path)
    if cached is not None:
        log.info("precision %s for %s on this machine (cached in %s)", cached.precision, bundle.path, path)
        return cached
    n = iterations or bundle.manifest.schedule.default_iterations
    x = gate_input(bundle.manifest)
    reference = loop_steps(make_backend("fp32"), bundle, x, n)
    decision = Decision("fp32")
    for precision in candidates:
        result = compare(precision, reference, loop_steps(make_backend(precision), bundle, x, n))
        decision.results.append(result)
        log.info("accuracy gate of %s: %s", bundle.path, result)
        if result.accepted:
            decision.precision = precision
            break
    _write(path, decision, machine, digest)
    return decision
