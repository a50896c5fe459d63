"""A fake ``tensorrt`` module: the builder and runtime calls this project makes, no GPU.

A fake "plan" is ``FAKEPLAN`` + a JSON header (profile, build flags) + the ONNX graph's bytes;
a fake engine runs that graph with ONNX Runtime on the CPU, reading its inputs from and writing
its outputs to the fake CUDA "device" memory (``fake_cuda``), at the addresses the caller set.
Everything is recorded in ``module.log`` so tests can check the order of calls, binding
addresses per context and which buffers each execution read and wrote.

``execute_async_v3`` enqueues its work on the fake stream (``fake_cuda.FakeCudart.enqueue``): it
runs at once, or becomes a kernel node while the stream is capturing, baking in the addresses set
at that moment as a real graph does. Like TensorRT, a context's first enqueue does one-time setup
(here one synchronising fake call), which fails under capture — why code must enqueue once before capturing;
``module.uncapturable = True`` models engines that refuse to enqueue under capture at all.
"""

from __future__ import annotations

import ctypes
import enum
import json
import struct
import sys
import types

import numpy as np

MAGIC = b"FAKEPLAN"
# ONNX ops onnx-tensorrt's operator matrix lists as unsupported (8.4 to 8.5, and none of them added
# since as far as this stand-in knows): the fake parser refuses them as TensorRT's does
UNSUPPORTED_OPS = frozenset(
    {
        "BitShift",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "Det",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringNormalizer",
        "TfIdfVectorizer",
        "Unique",
    }
)


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class ILogger:
    """TensorRT's logger interface: subclasses call ``ILogger.__init__`` and implement ``log``."""

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self):
        pass

    def log(self, severity, msg):
        raise NotImplementedError


class Logger(ILogger):
    """``trt.Logger``: prints to stderr (here: keeps ``messages``), where Python logging never sees it."""

    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO

    def __init__(self, severity=ILogger.Severity.WARNING):
        self.severity, self.messages = severity, []

    def log(self, severity, msg):
        if severity <= self.severity:
            self.messages.append((severity, msg))


def make_plan(header: dict, onnx_bytes: bytes) -> bytes:
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + onnx_bytes


def read_plan(plan: bytes):
    if not plan.startswith(MAGIC):
        return None
    (n,) = struct.unpack("<I", plan[8:12])
    return json.loads(plan[12 : 12 + n]), plan[12 + n :]


def engine_graph(header: dict, onnx_bytes: bytes) -> bytes:
    """The graph a fake engine computes: the ONNX graph, with TF32 operands where the build left
    ``BuilderFlag.TF32`` set (TensorRT's default; ``fakes/tf32.py``)."""
    if "TF32" in header.get("builder_flags", []):
        from .tf32 import tf32_graph

        return tf32_graph(onnx_bytes)
    return onnx_bytes


def polygraphy_runner(plan: bytes):
    """A stand-in for Polygraphy's ``TrtRunner(EngineFromBytes(plan))``: a real Polygraphy
    ``OnnxrtRunner`` over the graph the fake engine computes (so the build's comparison runs
    Polygraphy for real, ONNX Runtime against ONNX Runtime with the engine's numerics)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    header, onnx_bytes = read_plan(bytes(plan))
    return OnnxrtRunner(
        SessionFromOnnx(engine_graph(header, onnx_bytes), providers=["CPUExecutionProvider"]), name="fake-tensorrt"
    )


# --------------------------------------------------------------------------- builder


class _Network:
    def __init__(self, flags):
        self.flags, self.onnx = flags, None


class _Parser:
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    def parse_from_file(self, path):
        import onnx

        data = open(path, "rb").read()
        try:
            nodes = onnx.load_from_string(data).graph.node
        except Exception:  # what TensorRT's parser says of bytes that are no ModelProto
            self.errors.append(f"{path}: Failed to parse ONNX model from file (not an ONNX model)")
            return False
        for node in nodes:
            if node.op_type in UNSUPPORTED_OPS:
                self.errors.append(
                    f"In node {node.name or '?'} (importModel): UNSUPPORTED_NODE: No importer "
                    f"registered for op: {node.op_type}"
                )
        if self.errors:
            return False
        self.network.onnx = data
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data) or b"FAKECACHE:0"

    def serialize(self):
        n = int(self.data.split(b":")[1]) + 1  # one more build recorded
        return b"FAKECACHE:%d" % n


class _Config:
    def __init__(self, module):
        self.flags, self.profiles, self.pools, self.cache, self._m = set(), [], {}, None, module
        tf32 = getattr(module.BuilderFlag, "TF32", None)
        if tf32 is not None:  # as in TensorRT: TF32 is on unless cleared
            self.flags.add(tf32)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data):
        return _TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return cache.data.startswith(b"FAKECACHE")

    def get_timing_cache(self):
        return self.cache


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return _Network(flags)

    def create_builder_config(self):
        return _Config(sys.modules["tensorrt"])  # the installed module: its BuilderFlag

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        if network.onnx is None or len(config.profiles) != 1:
            return None
        header = {
            "flags": network.flags,
            "builder_flags": sorted(f.name for f in config.flags),
            "profile": config.profiles[0].shapes,
            "gpu": config._m.cudart.gpu_name,
            "device": config._m.cudart.current_device,
        }  # TensorRT builds on the thread's current device
        return make_plan(header, network.onnx)


# --------------------------------------------------------------------------- runtime


class _Context:
    def __init__(self, engine, strategy):
        self.engine, self.strategy = engine, strategy
        self.shapes, self.addresses, self.device_memory = {}, {}, None
        self.set_address_calls = 0
        self.initialised = False  # the first enqueue's one-time setup done

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes.get(name, tuple(self.engine.static[name]))
        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        return tuple(batch if d == -1 else d for d in self.engine.static[name])

    def set_tensor_address(self, name, ptr):
        if name not in self.engine.static:
            return False
        self.set_address_calls += 1
        self.addresses[name] = int(ptr)
        self.engine.module.log.append(("set_tensor_address", self.engine.name, name, int(ptr)))
        return True

    def set_device_memory(self, ptr, size):
        cudart = self.engine.module.cudart
        if (
            self.strategy != ExecutionContextAllocationStrategy.USER_MANAGED
            or not cudart.region(cudart.device_mem, int(ptr), int(size))
            or size < self.engine.device_memory_size_v2
        ):
            raise RuntimeError("set_device_memory: not a user-managed context or memory too small / not device")
        self.device_memory = (int(ptr), int(size))

    def _view(self, name, ptr, shape):
        cudart = self.engine.module.cudart
        dtype = np.float16 if self.engine.dtypes[name] == DataType.HALF else np.float32
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not cudart.region(cudart.device_mem, ptr, nbytes):
            raise RuntimeError(f"address of {name} is not device memory of {nbytes} bytes")
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle):
        m = self.engine.module
        if int(stream_handle) not in m.cudart.streams or m.cudart.current_device != self.engine.device:
            return False  # (an engine runs on the device it was deserialised on, current in this thread)
        if set(self.addresses) != set(self.engine.static) or set(self.shapes) != set(self.engine.inputs):
            return False
        if self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self.device_memory is None:
            return False
        capturing = m.cudart.is_capturing(stream_handle)
        if capturing and m.uncapturable:
            m.cudart._unsafe_during_capture()  # invalidates the capture, as a refused enqueue does
            return False
        if not self.initialised:
            if m.cudart.synchronous_call("TensorRT first-enqueue setup"):  # fails while capturing
                return False
            self.initialised = True
        addresses, shapes = dict(self.addresses), dict(self.shapes)  # what a kernel node bakes in
        m.log.append(("execute_async_v3", self.engine.name, addresses, int(stream_handle)))
        m.cudart.enqueue(
            int(stream_handle),
            m.cudart.cudaGraphNodeType.cudaGraphNodeTypeKernel,
            self.engine.name,
            lambda: self._compute(addresses, shapes),
        )
        return True

    def _compute(self, addresses: dict, shapes: dict) -> None:
        m = self.engine.module
        feeds = {n: self._view(n, addresses[n], shapes[n]).copy() for n in self.engine.inputs}
        results = self.engine.session.run(None, feeds)
        for name, value in zip(self.engine.outputs, results):
            out = self._view(name, addresses[name], value.shape)
            out[...] = value
        m.log.append(("kernel", self.engine.name, addresses))


class _Engine:
    def __init__(self, module, header, onnx_bytes):
        import onnxruntime as ort

        self.module, self.header = module, header
        self.device = module.cudart.current_device
        self.onnx = engine_graph(header, onnx_bytes)
        self.session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.name = "+".join(self.outputs) + ":" + ",".join(self.inputs)
        self.static, self.dtypes = {}, {}
        for t in self.session.get_inputs() + self.session.get_outputs():
            self.static[t.name] = tuple(d if isinstance(d, int) else -1 for d in t.shape)
            self.dtypes[t.name] = DataType.HALF if t.type == "tensor(float16)" else DataType.FLOAT
        self.device_memory_size_v2 = 4096
        self.contexts = []

    @property
    def num_io_tensors(self):
        return len(self.static)

    def get_tensor_name(self, i):
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name, index):
        return [tuple(s) for s in self.header["profile"][name]]

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        ctx = _Context(self, strategy)
        self.contexts.append(ctx)
        self.module.log.append(("create_execution_context", self.name, strategy.name))
        return ctx


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan):
        m = sys.modules["tensorrt"]
        m.log.append(("deserialize_cuda_engine", len(plan)))
        parsed = read_plan(bytes(plan))
        if parsed is None:
            self.logger.log(
                ILogger.Severity.ERROR,
                "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                "(Serialization assertion magicTagRead == kMAGIC_TAG failed.)",
            )
            return None
        if parsed[0].get("gpu", m.cudart.gpu_name) != m.cudart.gpu_name:  # what TensorRT 10 warns
            self.logger.log(
                ILogger.Severity.WARNING,
                "Using an engine plan file across different models of devices "
                "is not supported and is likely to affect performance or "
                "even cause errors.",
            )
        return _Engine(m, *parsed)


def make_module(cudart, version: str = "10.8.0.34", strongly_typed: bool = True, fp16_flag: bool = True):
    """A ``tensorrt`` module object for ``sys.modules``; ``strongly_typed``/``fp16_flag`` model
    TensorRT releases with or without ``STRONGLY_TYPED`` and ``BuilderFlag.FP16`` (11.x has none)."""
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.cudart, m.log, m.uncapturable = cudart, [], False
    m.TensorIOMode, m.DataType, m.MemoryPoolType = TensorIOMode, DataType, MemoryPoolType
    m.ExecutionContextAllocationStrategy, m.Logger, m.ILogger = ExecutionContextAllocationStrategy, Logger, ILogger
    m.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 5} if strongly_typed else {"NONE": 0}
    )
    m.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "TF32": 1} if fp16_flag else {"TF32": 1})
    m.Builder, m.Runtime, m.OnnxParser = Builder, Runtime, _Parser
    return m


def install(monkeypatch, cudart, **kwargs):
    module = make_module(cudart, **kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module
