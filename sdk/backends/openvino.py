"""OpenVINO backend: the bundle's portable ONNX graphs on Intel's CPU inference engine.

``backend="openvino"`` (the ``openvino`` extra). Each graph is read once from the portable file
the manifest names (``graphs.<key>.file``, digest-checked by the loop like every other file) and
compiled once per batch size, reshaped to it. The loop's buffers are numpy arrays that OpenVINO
tensors wrap without a copy (``shared_memory``); each binding is an infer request with its input
and output tensors set once, so a step reads the previous step's latents and image in place and
a call allocates nothing.

Precision: ``fp32`` compiles the graphs as they are. ``bf16`` (AMX or AVX512-BF16 CPUs) and
``fp16`` (AMX-FP16 CPUs) set OpenVINO's ``INFERENCE_PRECISION_HINT``; a ``-islands`` variant keeps
every op whose outputs are small (styles, demodulation statistics, latents and the residual add,
the first low-resolution layers) and every op producing a graph output in FP32, by the
``disable_fp16_compression`` runtime mark OpenVINO's CPU plugin honours for BF16 and FP16 alike.
``precision="auto"`` picks the fastest one that passes :mod:`sdk.precision_gate` on this machine
(see :func:`open_backend`); a CPU without either runs FP32 and says so in the log.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..bundle import Bundle, GraphSpec
from ..errors import BackendError, BundleError
from .base import Backend, Runner
from .onnxruntime.cpu import CPUINFO, cpu_flags
from .onnxruntime.tensors import tensor_mismatch

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'gan-encoder-rt[openvino]'"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HINTS = ("LATENCY", "THROUGHPUT")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)"}  # as tensor_mismatch names them
ISLAND_ELEMENTS = 1 << 16  # ops with outputs at most this large stay FP32 in the -islands variants
FP32_MARK = "disable_fp16_compression_0"  # ov::DisableFP16Compression's runtime-info key


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendError(f"backend 'openvino' needs OpenVINO: {EXTRA_HINT}") from None
    return openvino


def available() -> bool:
    """Whether OpenVINO can be imported here."""
    try:
        import_openvino()
    except BackendError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def core():
    """The process's ``openvino.Core`` (its CPU plugin and thread pools are shared by all graphs)."""
    return import_openvino().Core()


def capabilities() -> frozenset[str]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` ("FP32", "BF16", "FP16", ...)."""
    return frozenset(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _flags() -> frozenset[str]:
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            return cpu_flags(f)
    except OSError:
        return frozenset()


def reduced_precisions() -> list[str]:
    """The reduced precisions worth trying here (none without OpenVINO), fastest first: bf16 where OpenVINO reports
    BF16 (AMX or AVX512-BF16), fp16 where the CPU has AMX-FP16 tiles (AVX512-FP16 alone runs BF16's
    matmuls no faster, and FP16's narrower range is the riskier one)."""
    flags = _flags()
    if not flags & {"avx512_bf16", "amx_bf16", "amx_fp16"} or not available():  # most CPUs: without loading OpenVINO
        return []
    caps = capabilities()
    found = ["bf16"] if "BF16" in caps else []
    if "FP16" in caps and "amx_fp16" in flags:
        found.append("fp16")
    return found


def machine_id() -> str:
    """What a precision decision depends on: the OpenVINO release and the CPU's model and features."""
    ov = import_openvino()
    caps = ",".join(sorted(capabilities()))
    name = core().get_property("CPU", "FULL_DEVICE_NAME")
    isa = ",".join(sorted(f for f in _flags() if f.startswith(("amx", "avx512", "avx2", "fma"))))
    return f"openvino {ov.__version__}; {name}; {caps}; {hashlib.sha256(isa.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class OpenVinoOptions:
    """How graphs are compiled. ``threads``: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's choice);
    ``hint``: ``PERFORMANCE_HINT``, "LATENCY" (one stream, the loop's case) or "THROUGHPUT";
    ``pinning``: ``ENABLE_CPU_PINNING`` (None: OpenVINO's default); ``precision``: "fp32", "bf16"
    or "fp16", optionally with "-islands" (see the module docstring)."""

    threads: int | None = None
    hint: str = "LATENCY"
    pinning: bool | None = None
    precision: str = "fp32"

    def __post_init__(self):
        base, _, islands = self.precision.partition("-")
        if base not in _OV_PRECISION or islands not in ("", "islands"):
            raise BackendError(f"unknown OpenVINO precision {self.precision!r}; expected fp32, bf16, fp16 (+ -islands)")
        if self.hint not in HINTS:
            raise BackendError(f"unknown OpenVINO performance hint {self.hint!r}; expected one of {HINTS}")

    @property
    def islands(self) -> bool:
        return self.precision.endswith("-islands")

    def config(self) -> dict:
        cfg: dict = {
            "PERFORMANCE_HINT": self.hint,
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision.partition("-")[0]],
        }
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.pinning is not None:
            cfg["ENABLE_CPU_PINNING"] = bool(self.pinning)
        return cfg


def mark_fp32_islands(model, max_elements: int = ISLAND_ELEMENTS) -> int:
    """Mark the ops of a reshaped (static) ``ov.Model`` that stay FP32 under a reduced inference
    precision: those whose every output has at most ``max_elements`` values, and those feeding a
    graph output. Returns how many were marked."""
    outputs = {r.input_value(0).get_node().get_friendly_name() for r in model.get_results()}
    marked = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() in ("Parameter", "Constant", "Result"):
            continue
        shapes = [node.get_output_partial_shape(i) for i in range(node.get_output_size())]
        small = all(s.is_static and int(np.prod(list(s.to_shape()))) <= max_elements for s in shapes)
        if small or node.get_friendly_name() in outputs:
            node.get_rt_info()[FP32_MARK] = ""
            marked += 1
    return marked


class OpenVinoRunner(Runner):
    """One graph: read once, compiled once per batch size; ``bind`` returns an infer request."""

    def __init__(self, backend: OpenVinoBackend, spec: GraphSpec, path: Path):
        self.spec, self._backend = spec, backend
        try:
            self._model = backend.core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            raise BundleError(
                f"OpenVINO could not read {path} ({type(e).__name__}: {e}); the file is corrupt or "
                f"not an ONNX graph. Rebuild with export/build_engines.py"
            ) from None
        self._check(path)
        self._compiled: dict[int, object] = {}

    def _check(self, path: Path) -> None:
        ports = {p.get_any_name(): p for p in [*self._model.inputs, *self._model.outputs]}
        declared = {t.name: t for t in self.spec.inputs + self.spec.outputs}
        if set(ports) != set(declared):
            raise BundleError(
                f"{path} has tensors {sorted(ports)} but the manifest declares {sorted(declared)}; "
                f"the graph and manifest come from different builds. Rebuild the bundle"
            )
        for name, port in ports.items():
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            ov_type = port.get_element_type().get_type_name()
            problem = tensor_mismatch(declared[name], shape, _OV_TYPES.get(ov_type, ov_type))
            if problem:
                raise BundleError(
                    f"{path}: tensor {name!r} is {problem}; the graph and manifest come from "
                    f"different builds. Rebuild the bundle with export/build_engines.py"
                )

    def compiled(self, batch: int):
        """The graph compiled for ``batch`` (compiled on first use)."""
        if batch not in self._compiled:
            model = self._model.clone()
            model.reshape({t.name: list(t.concrete_shape(batch)) for t in self.spec.inputs})
            options = self._backend.options
            if options.islands:
                log.debug("graph %s: %d ops kept in FP32", self.spec.key, mark_fp32_islands(model))
            try:
                self._compiled[batch] = self._backend.core.compile_model(model, "CPU", options.config())
            except Exception as e:
                raise BackendError(
                    f"OpenVINO could not compile graph {self.spec.key!r} for batch {batch} ({type(e).__name__}: {e})"
                ) from None
        return self._compiled[batch]

    def bind(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]):
        tensor = self._backend.ov.Tensor
        batch = next(iter(inputs.values())).shape[0]
        request = self.compiled(batch).create_infer_request()
        for name, array in {**inputs, **outputs}.items():
            request.set_tensor(name, tensor(array, shared_memory=True))  # wraps the buffer: no copy
        return request

    def run(self, binding) -> None:
        try:
            self._backend.infer(binding)
        except Exception as e:
            raise BackendError(f"OpenVINO failed running graph {self.spec.key!r} ({type(e).__name__}: {e})") from None

    def close(self) -> None:
        self._compiled.clear()


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU with :class:`OpenVinoOptions`; buffers are host numpy arrays."""

    name = "openvino"

    def __init__(self, options: OpenVinoOptions | None = None):
        self.ov = import_openvino()
        self.core = core()
        self.options = options or OpenVinoOptions()
        # The binding's synchronous infer with the outputs shared: the public InferRequest.infer
        # copies every output into new arrays, and start_async + wait costs a thread hand-off
        # (about twice the call overhead, measured on the tiny graphs).
        native = getattr(getattr(self.ov, "_pyopenvino", None), "InferRequest", None)
        if native is not None and hasattr(native, "infer"):
            self.infer = lambda request: native.infer(request, {}, True, False)
        else:  # pragma: no cover - an OpenVINO without the native class
            self.infer = lambda request: (request.start_async(), request.wait())

    @property
    def precision(self) -> str:
        return self.options.precision

    def files(self, spec: GraphSpec) -> list[str]:
        """The portable graph only (the ONNX Runtime CPU graphs hold ORT's own operators)."""
        return [spec.file]

    def load(self, spec: GraphSpec, path: Path) -> OpenVinoRunner:
        return OpenVinoRunner(self, spec, path)

    def empty(self, shape: Sequence[int], dtype: str) -> np.ndarray:
        return np.zeros(tuple(shape), dtype=np.dtype(dtype))

    def upload(self, dst: np.ndarray, array: np.ndarray) -> None:
        np.copyto(dst, array, casting="same_kind")

    def download(self, src: np.ndarray) -> np.ndarray:
        return src.copy()


def open_backend(
    bundle: Bundle | None, precision: str = "auto", options: OpenVinoOptions | None = None
) -> OpenVinoBackend:
    """The OpenVINO backend for ``bundle`` at ``precision``:

    * "fp32": the graphs as they are;
    * "bf16" / "fp16": that precision with FP32 islands, ungated (:class:`BackendError` where the
      CPU lacks it);
    * "auto": the first of this CPU's :func:`reduced_precisions` (plain, then with islands) that
      passes :func:`sdk.precision_gate.decide` on ``bundle``, decided once per machine and bundle
      and cached; FP32 where none passes, where the CPU has none, or without a bundle."""
    options = options or OpenVinoOptions()
    import_openvino()  # the missing extra named first
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision in ("bf16", "fp16"):
        if precision not in reduced_precisions():
            raise BackendError(
                f"precision {precision!r} needs a CPU with {'AMX or AVX512-BF16' if precision == 'bf16' else 'AMX-FP16'}"
                f" (OpenVINO reports {sorted(capabilities())}); use precision='auto' or 'fp32'"
            )
        return OpenVinoBackend(replace(options, precision=f"{precision}-islands"))
    reduced = reduced_precisions() if precision == "auto" else []
    if precision == "auto" and not reduced:
        log.info("OpenVINO: this CPU has no BF16 or AMX-FP16 support; running FP32")
    if not reduced or bundle is None:
        return OpenVinoBackend(replace(options, precision="fp32"))
    from ..precision_gate import decide

    candidates = [c for p in reduced for c in (p, f"{p}-islands")]
    decision = decide(bundle, machine_id(), candidates, lambda p: OpenVinoBackend(replace(options, precision=p)))
    return OpenVinoBackend(replace(options, precision=decision.precision))


def options_from(threads: int | None, options: Mapping | None) -> OpenVinoOptions:
    """:class:`OpenVinoOptions` from a Translator's ``threads`` and ``backend_options``
    (``{"hint": "LATENCY" | "THROUGHPUT", "pinning": bool}``)."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"hint", "pinning"})
    if unknown:
        raise BackendError(f"unknown OpenVINO option(s) {unknown}; expected 'hint' and/or 'pinning'")
    if options.get("pinning") is not None and not isinstance(options["pinning"], bool):
        raise BackendError(f"OpenVINO option 'pinning' must be True, False or None; got {options['pinning']!r}")
    return OpenVinoOptions(threads=threads, **options)


def auto_cpu(
    bundle: Bundle | None, precision: str, options: OpenVinoOptions, fallback: Callable[[], Backend]
) -> Backend:
    """``backend="auto"`` without a GPU. The rule (measured: docs/cpu_backends.md): OpenVINO at a
    reduced precision where OpenVINO is installed, the CPU has BF16 or AMX-FP16, and the
    precision passes the accuracy gate on ``bundle``; otherwise ``fallback()`` (ONNX Runtime on
    the bundle's CPU graphs, faster than OpenVINO in FP32). ``precision="fp32"`` always takes the
    fallback; "bf16"/"fp16" ask for OpenVINO at that precision (an error where it cannot run)."""
    if precision in ("bf16", "fp16"):
        return open_backend(bundle, precision, options)
    if precision == "auto" and bundle is not None and reduced_precisions():
        backend = open_backend(bundle, "auto", options)
        if backend.precision != "fp32":
            return backend
        log.info("no reduced precision passed the accuracy gate for %s; ONNX Runtime (FP32) runs it", bundle.path)
    return fallback()
