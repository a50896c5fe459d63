"""TensorRT backend: the bundle's serialized engines over cuda-python device buffers.

* Engines are listed in the manifest's ``engines`` section, one per graph key, with the
  TensorRT version and GPU compute capability they were built for. A mismatch is detected
  *before* deserialisation (:func:`engine_mismatch`) and reported with the rebuild command
  (:class:`sdk.errors.StaleEngineError`); the SHA-256 of each plan is checked before its bytes
  reach TensorRT.
* Device buffers are allocated once per shape by the loop (:class:`CudaRuntime`); every
  binding of a runner is its own ``IExecutionContext`` with its input shapes and tensor
  addresses set **once**, at bind time, so a run is a single ``execute_async_v3`` on the
  backend's one non-blocking stream. The contexts of one engine share one activation-memory
  block (``USER_MANAGED`` allocation where TensorRT offers it): they never run concurrently,
  because everything is enqueued on the same stream.
* The host is touched only by ``upload`` (the input) and ``download`` (the result), which is
  also the only stream synchronisation. GPU-resident inputs/outputs replace those two by
  device-to-device copies (``put_device``/``fetch_device``).
* ``capture`` records a piece of loop work (the N steps' ``execute_async_v3`` calls over the
  prepared contexts) into a CUDA graph that the loop replays per frame: the contexts' shapes and
  tensor addresses never change after binding, which is what a graph bakes in.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import REBUILD_HINT, GraphSpec
from ..device_arrays import DeviceArray, DeviceInput
from ..errors import BackendError, BundleError, InputError, StaleEngineError
from ..manifest import UNKNOWN_GPU, EngineSpec
from .base import Backend, Runner
from .cuda import CudaGraph, CudaRuntime, DeviceBuffer, cuda_status, device_info

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = (
    "pip install 'gan-encoder-rt[gpu-cu12]' (TensorRT 10 + cuda-python 12; '[gpu-cu13]' for "
    "TensorRT 11 + CUDA 13, driver >= 580; see the README's GPU section), or use backend='onnxruntime'"
)
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16"}


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendError(f"TensorRT is not installed; {TRT_INSTALL_HINT}") from e
    return tensorrt


def unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here (no tensorrt, no cuda-python, no GPU), else None."""
    try:
        import_tensorrt()
    except BackendError as e:
        return str(e)
    count, why = cuda_status()
    return why if count == 0 else None


def python_logger(trt):
    """A ``trt.ILogger`` that forwards TensorRT's messages to this module's logger (a plain
    ``trt.Logger`` prints to stderr, where the SDK never sees them) and keeps the errors of the
    current call in ``errors`` for the exception message."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.INFO,
        severity.VERBOSE: logging.DEBUG,
    }

    class PythonLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level, msg):
            py_level = levels.get(level, logging.WARNING)
            if py_level >= logging.ERROR:
                self.errors.append(str(msg))
            log.log(py_level, "TensorRT: %s", msg)

    return PythonLogger()


def _version_key(version: str) -> tuple:
    """Engines are tied to the TensorRT release: compare major.minor.patch (not the build number)."""
    return tuple(version.split(".")[:3])


ALLOW_OTHER_GPU_ENV = "GAN_ENCODER_RT_ALLOW_OTHER_GPU"  # "1": run engines built on another GPU model


def allow_other_gpu_default() -> bool:
    return os.environ.get(ALLOW_OTHER_GPU_ENV, "").strip().lower() in ("1", "true", "yes")


def engine_mismatch(
    spec: EngineSpec, trt_version: str, compute_capability: str, gpu: str = "", allow_other_gpu: bool = False
) -> str | None:
    """A sentence saying why ``spec`` cannot run with this TensorRT on this GPU, else None.
    Another GPU model of the same compute capability is refused too (TensorRT calls engines
    across device models unsupported) unless ``allow_other_gpu``, which only warns."""
    problems = []
    if _version_key(spec.tensorrt) != _version_key(trt_version):
        problems.append(f"TensorRT {spec.tensorrt} (this machine has {trt_version})")
    if spec.compute_capability != compute_capability:
        problems.append(
            f"compute capability {spec.compute_capability}, {spec.gpu} (this GPU: "
            f"{compute_capability}{', ' + gpu if gpu else ''})"
        )
    elif gpu and spec.gpu not in ("", UNKNOWN_GPU) and spec.gpu != gpu:
        if allow_other_gpu:
            log.warning(
                "engine %s was built on %s and runs on %s (same compute capability %s; %s is set): "
                "TensorRT does not support engines across GPU models, rebuild if results or speed are off",
                spec.file,
                spec.gpu,
                gpu,
                compute_capability,
                ALLOW_OTHER_GPU_ENV,
            )
        else:
            problems.append(
                f"the GPU {spec.gpu} (this GPU: {gpu}, same compute capability {compute_capability}, "
                f"which TensorRT does not support across GPU models; to run it anyway set "
                f"{ALLOW_OTHER_GPU_ENV}=1 or pass allow_other_gpu=True)"
            )
    if not problems:
        return None
    return f"engine {spec.file} was built for " + " and ".join(problems)


# --------------------------------------------------------------------------- runtime


@dataclass
class TrtBinding:
    """One execution context with its shapes and addresses set; ``run`` only enqueues it."""

    context: Any  # a tensorrt.IExecutionContext
    addresses: dict[str, int]  # tensor name -> device address (for inspection and tests)


class TrtRunner(Runner):
    def __init__(self, backend: TensorRTBackend, spec: GraphSpec, engine: Any):
        self.spec, self._backend = spec, backend
        self.engine: Any = engine  # a tensorrt.ICudaEngine
        trt = backend.trt
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        declared = {t.name: t for t in spec.inputs + spec.outputs}
        if set(names) != set(declared):
            raise BundleError(
                f"engine for graph {spec.key!r} has tensors {sorted(names)} but the manifest declares "
                f"{sorted(declared)}; {REBUILD_HINT.format(path=backend.bundle.path)}"
            )
        for name in names:
            dtype = _TRT_DTYPES.get(getattr(engine.get_tensor_dtype(name), "name", ""), "?")
            if dtype != declared[name].dtype:
                raise BundleError(
                    f"engine tensor {spec.key}.{name} is {dtype}, the manifest says "
                    f"{declared[name].dtype}; {REBUILD_HINT.format(path=backend.bundle.path)}"
                )
        self._scratch = None
        size = getattr(engine, "device_memory_size_v2", None)
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        if size is not None and strategy is not None:
            self._scratch = (backend.cuda.scratch(size), int(size))
            self._strategy = strategy
        self.contexts = 0

    def _new_context(self):
        if self._scratch is None:  # TensorRT without user-managed memory: each context owns its own
            context = self.engine.create_execution_context()
        else:
            context = self.engine.create_execution_context(self._strategy)
        if context is None:
            raise BackendError(
                f"TensorRT could not create an execution context for {self.spec.key!r} (out of GPU memory?)"
            )
        if self._scratch is not None:
            if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
                context.set_device_memory(*self._scratch)
            else:
                context.device_memory = self._scratch[0]
        self.contexts += 1
        return context

    def bind(self, inputs: Mapping[str, DeviceBuffer], outputs: Mapping[str, DeviceBuffer]) -> TrtBinding:
        given = {**inputs, **outputs}
        if set(given) != set(self.inputs) | set(self.outputs):
            raise BackendError(
                f"{self.spec.key}: binding {sorted(given)} but the engine's tensors are "
                f"{sorted(self.inputs + self.outputs)}"
            )
        context = self._new_context()
        for name in self.inputs:  # shapes first: output shapes follow from them
            shape = given[name].shape
            lo, _, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0))
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)) or len(shape) != len(lo):
                raise InputError(
                    f"{self.spec.key}.{name}: shape {list(shape)} is outside the engine's optimisation "
                    f"profile {list(lo)}..{list(hi)}; use a batch in that range or rebuild with "
                    f"--max-batch"
                )
            if not context.set_input_shape(name, shape):
                raise BackendError(f"TensorRT rejected shape {list(shape)} for {self.spec.key}.{name}")
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            if shape != given[name].shape:
                raise BackendError(
                    f"{self.spec.key}.{name}: the engine produces {list(shape)}, the bound buffer is "
                    f"{list(given[name].shape)}"
                )
        addresses = {}
        for name in self.inputs + self.outputs:
            if given[name].dtype != self._dtype(name):
                raise BackendError(
                    f"{self.spec.key}.{name}: buffer is {given[name].dtype}, engine wants {self._dtype(name)}"
                )
            if not context.set_tensor_address(name, given[name].ptr):
                raise BackendError(f"TensorRT rejected the address of {self.spec.key}.{name}")
            addresses[name] = given[name].ptr
        return TrtBinding(context, addresses)

    def _dtype(self, name: str) -> str:
        return _TRT_DTYPES.get(getattr(self.engine.get_tensor_dtype(name), "name", ""), "?")

    def run(self, binding: TrtBinding) -> None:
        if not binding.context.execute_async_v3(self._backend.cuda.handle):
            raise BackendError(f"TensorRT execute_async_v3 failed for {self.spec.key!r} (see the TensorRT log)")

    def close(self) -> None:
        """Drop the engine (after the loop dropped the bindings' contexts, which use it)."""
        self.engine = None


class TensorRTBackend(Backend):
    """Runs a bundle's TensorRT engines. ``device``: the CUDA device index."""

    name = "tensorrt"
    can_capture = True

    def __init__(self, bundle, device: int = 0, allow_other_gpu: bool | None = None):
        self.trt = trt = import_tensorrt()
        self.allow_other_gpu = allow_other_gpu_default() if allow_other_gpu is None else bool(allow_other_gpu)
        self.bundle = bundle
        self.engines: Mapping[str, EngineSpec] = bundle.manifest.engines
        if not self.engines:
            raise BundleError(
                f"{bundle.path} has no TensorRT engines; build them on a machine with TensorRT: "
                f"{REBUILD_HINT.format(path=bundle.path)}"
            )
        self.device = device_info(device)
        self.check_engines()  # before any plan reaches TensorRT
        self.cuda = CudaRuntime(device)
        self._logger = python_logger(trt)  # TensorRT's messages (e.g. on deserialisation) go to logging
        self._runtime = trt.Runtime(self._logger)

    def check_engines(self) -> None:
        stale = [
            msg
            for spec in self.engines.values()
            if (
                msg := engine_mismatch(
                    spec, self.trt.__version__, self.device.compute_capability, self.device.name, self.allow_other_gpu
                )
            )
        ]
        if stale:
            raise StaleEngineError(
                "; ".join(stale) + f". Engines only run with the TensorRT release and GPU "
                f"architecture they were built for: {REBUILD_HINT.format(path=self.bundle.path)} "
                f"on this machine, or use backend='onnxruntime'"
            )

    def files(self, spec: GraphSpec) -> list[str]:
        """None of the ONNX files: ``load`` reads the engine, and checks it against the manifest's
        ``engines`` entry itself."""
        return []

    def load(self, spec: GraphSpec, path: Path) -> TrtRunner:
        """``path`` (the ONNX graph) is not read: the engine for ``spec.key`` comes from the manifest."""
        es = self.engines.get(spec.key)
        hint = REBUILD_HINT.format(path=self.bundle.path)
        if es is None:
            raise BundleError(f"{self.bundle.path} has no TensorRT engine for graph {spec.key!r}; {hint}")
        plan = self.bundle.file(es.file)
        if not plan.is_file():
            raise BundleError(f"engine file {plan} is missing; {hint}")
        try:  # one read: TensorRT gets exactly the bytes that were hashed (no window to swap the file)
            data = plan.read_bytes()
        except OSError as e:
            raise BundleError(f"engine file {plan} cannot be read ({e}); {hint}") from None
        if hashlib.sha256(data).hexdigest() != es.sha256:
            raise BundleError(f"engine file {plan} does not match its SHA-256 in the manifest; {hint}")
        self._logger.errors.clear()
        self.cuda.use()  # the engine lives on the calling thread's current device (mapping loads lazily)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            said = f": {'; '.join(self._logger.errors[-3:])}" if self._logger.errors else ""
            raise StaleEngineError(
                f"TensorRT {self.trt.__version__} could not deserialize {plan} (built with "
                f"TensorRT {es.tensorrt} for {es.gpu}){said}; {hint}"
            )
        log.info(
            "loaded engine %s (%s, TensorRT %s, sm %s)", plan.name, es.precision, es.tensorrt, es.compute_capability
        )
        return TrtRunner(self, spec, engine)

    def empty(self, shape, dtype: str) -> DeviceBuffer:
        return self.cuda.empty(shape, dtype)

    def upload(self, dst: DeviceBuffer, array) -> None:
        self.cuda.upload(dst, array)

    def download(self, src: DeviceBuffer):
        return self.cuda.download(src)

    def synchronize(self) -> None:
        self.cuda.synchronize()

    # ------------------------------------------------------------------ device I/O and graphs
    @property
    def device_io(self) -> bool:
        return True

    @property
    def consumer_stream(self) -> int:
        return self.cuda.handle

    def put_device(self, dst: DeviceBuffer, src: DeviceInput) -> None:
        self.cuda.copy_in(dst.ptr, dst.nbytes, src)

    def fetch_device(self, src: DeviceBuffer) -> DeviceArray:
        return self.cuda.device_copy(src.ptr, src.shape, src.dtype)

    def capture(self, work) -> CudaGraph | None:
        """Run ``work`` once and record it into a CUDA graph (None if it cannot be captured)."""
        return self.cuda.capture(work)

    def close(self) -> None:
        self.cuda.close()
