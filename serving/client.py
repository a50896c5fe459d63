"""A ``tritonclient`` client for the served translator, and a command-line example.

    from serving.client import TranslationClient

    with TranslationClient("127.0.0.1:8000") as c:                 # or protocol="grpc", "127.0.0.1:8001"
        out = c.translate(frame, factor=8)                          # HxWx3 uint8, as translator(frame, factor=8)
        res = c.translate(frame, iterations=3, latents=True)        # res.output, res.raw, res.latents
        res = c.infer(x, iterations=5)                              # x: [B, C, S, S] pre-processed (Translator.infer)

    python -m serving.client --image face.png --output out.png --factor 8
    python -m serving.client --protocol grpc --url 127.0.0.1:8001 --image face.png --output out.png

The server is ``python -m serving.pytriton_server``; the names and types are in
:mod:`serving.batching`. Any KServe v2 client works the same way (``perf_analyzer`` too).
"""

from __future__ import annotations

import argparse
import logging
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdk.errors import InputError, SdkError
from sdk.imaging import as_rgb_uint8

from .batching import CONDITION, IMAGE, ITERATIONS, LATENTS, OUTPUT, OUTPUT_RAW
from .environment import missing_serve_extra

log = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
_TRITON_TYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}


class ServerError(SdkError):
    """The server refused or failed a request (its message is included). ``status`` is the
    protocol's status: ``"400"`` or ``"500"`` over HTTP, ``"StatusCode.INVALID_ARGUMENT"`` or
    ``"StatusCode.INTERNAL"`` over gRPC (None when the server sent none)."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class ServedResult:
    """``output``: [B, R, R, 3] uint8; ``raw``: [B, 3, R, R] float32 generator output;
    ``latents``: [B, M, D] W+ codes, when asked for (``latents=True``)."""

    output: np.ndarray
    raw: np.ndarray
    latents: np.ndarray | None = None


class TranslationClient:
    """One connection to a served translator over HTTP or gRPC. Not thread-safe: open one per
    thread (tritonclient's clients are not meant to be shared by threads)."""

    def __init__(
        self, url: str = "127.0.0.1:8000", protocol: str = "http", model: str = "translator", timeout_s: float = 120.0
    ):
        if protocol not in PROTOCOLS:
            raise InputError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
        if protocol == "http":
            import tritonclient.http as tc

            # geventhttpclient's timeouts are in seconds; one connection per client object
            self._client = tc.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s)
        else:
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(url)
        self._tc, self.protocol, self.model, self.url, self.timeout_s = tc, protocol, model, url, timeout_s

    # ------------------------------------------------------------------ requests
    def translate(
        self, image: np.ndarray, iterations: int | None = None, latents: bool = False, **task_options: int
    ) -> ServedResult:
        """One HxWxC uint8 image (or a batch [B, H, W, C] of equal size); the server runs the
        task's pre-processing with ``task_options`` (e.g. ``factor=8``)."""
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3, 4):
            raise InputError(
                f"translate() takes uint8 HxW, HxWxC or [B, H, W, C] images; got {arr.dtype} {list(arr.shape)}"
            )
        if arr.ndim == 2:
            arr = arr[:, :, None]
        batch = arr if arr.ndim == 4 else arr[None]
        return self._infer({IMAGE: batch}, len(batch), iterations, latents, task_options)

    def infer(self, condition: np.ndarray, iterations: int | None = None, latents: bool = False) -> ServedResult:
        """Pre-processed input [C, S, S] or [B, C, S, S] float32 in the model's range."""
        x = np.asarray(condition, dtype=np.float32)
        batch = x if x.ndim == 4 else x[None]
        return self._infer({CONDITION: batch}, len(batch), iterations, latents, {})

    def _infer(self, arrays: dict, batch: int, iterations, latents: bool, options: dict) -> ServedResult:
        per_row = {ITERATIONS: iterations, **options}
        for name, value in per_row.items():
            if value is not None:
                arrays[name] = np.full((batch, 1), value, dtype=np.int32)
        inputs = []
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            tensor = self._tc.InferInput(name, list(value.shape), _TRITON_TYPES[value.dtype])
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        names = [OUTPUT, OUTPUT_RAW] + ([LATENTS] if latents else [])
        outputs = [self._tc.InferRequestedOutput(n) for n in names]
        from tritonclient.utils import InferenceServerException

        try:
            if self.protocol == "grpc":
                result = self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            else:
                result = self._client.infer(self.model, inputs, outputs=outputs)
        except InferenceServerException as e:
            raise ServerError(
                f"{self.protocol} {self.url} model {self.model!r}: {e.message()}",
                None if e.status() is None else str(e.status()),
            ) from None
        return ServedResult(
            output=result.as_numpy(OUTPUT),
            raw=result.as_numpy(OUTPUT_RAW),
            latents=result.as_numpy(LATENTS) if latents else None,
        )

    # ------------------------------------------------------------------ health
    def ready(self) -> bool:
        """Whether the server and the model are ready (what a readiness probe asks)."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:  # refused connections come as several exception types, per protocol
            return False

    def close(self) -> None:
        """Close the connection (an open HTTP connection delays the server's shutdown)."""
        self._client.close()

    def __enter__(self) -> TranslationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text exposition format → ``(name, labels, value)`` samples."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples.append((match.group(1), dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return samples


def model_metrics(metrics_url: str, model: str = "translator") -> dict[str, float]:
    """Triton's ``nv_*`` counters for ``model`` (summed over versions), e.g.
    ``nv_inference_request_success``, ``nv_inference_count`` (rows), ``nv_inference_exec_count``
    (executions: rows / executions is the average batch the model ran)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # loopback or your cluster's address
        text = response.read().decode("utf-8")
    totals: dict[str, float] = {}
    for name, labels, value in parse_metrics(text):
        if labels.get("model") == model:
            totals[name] = totals.get(name, 0.0) + value
    return totals


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serving.client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=None, help="host:port (default: 127.0.0.1:8000 for http, :8001 for grpc)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http")
    p.add_argument("--model", default="translator", help="Triton model name (default: %(default)s)")
    p.add_argument("--image", type=Path, required=True, help="input image (PNG, JPEG, ...)")
    p.add_argument("--output", type=Path, required=True, help="where to write the translated image")
    p.add_argument("--iterations", type=int, help="refinement iterations (default: the bundle's)")
    p.add_argument("--factor", type=int, help="super-resolution factor (super-resolution bundles)")
    p.add_argument("--latents", type=Path, help="also save the W+ codes to this .npy file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    missing = missing_serve_extra("PIL", f"tritonclient.{a.protocol}")
    if missing:
        log.error("%s", missing)
        return 2
    from PIL import Image

    url = a.url or ("127.0.0.1:8000" if a.protocol == "http" else "127.0.0.1:8001")
    options = {} if a.factor is None else {"factor": a.factor}
    try:
        image = as_rgb_uint8(a.image)  # the SDK's reading: 16-bit and palette files too, typed errors
        with TranslationClient(url, a.protocol, a.model) as client:
            res = client.translate(image, iterations=a.iterations, latents=a.latents is not None, **options)
    except SdkError as e:
        log.error("%s", e)
        return 2
    except OSError as e:  # refused or reset connections (HTTP); gRPC's come as ServerError
        log.error("cannot reach Triton at %s (%s); start it: python -m serving.pytriton_server --bundle BUNDLE", url, e)
        return 1
    a.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(res.output[0]).save(a.output)
    if a.latents is not None:
        np.save(a.latents, res.latents[0])
    log.info("wrote %s (%dx%d)", a.output, res.output.shape[2], res.output.shape[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
