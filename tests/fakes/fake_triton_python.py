"""A stand-in for Triton's ``triton_python_backend_utils`` that runs a written model repository.

``serving/bls_model.py`` (the repository's ``model.py``) calls other models through
``pb_utils.InferenceRequest(...).exec()``. Here those calls run the repository's own
``model.onnx`` files in ONNX Runtime, after checking each call against the called model's
``config.pbtxt`` as Triton would (input names, dtypes, dims without the batch dimension,
``max_batch_size``, requested outputs). So a test exercises the BLS loop and the configs
together on a CPU, without a Triton server or a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

_NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32, "TYPE_UINT8": np.uint8}
TRITONSERVER_MEMORY_CPU = 0


class TritonModelException(Exception):
    pass


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, msg: str, code: int = INTERNAL):
        self._msg, self._code = msg, code

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code


class _Capsule:
    """What ``to_dlpack`` returns: an object NumPy's ``from_dlpack`` accepts."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class Tensor:
    def __init__(self, name: str, array):
        if not isinstance(array, np.ndarray):
            raise TritonModelException(f"pb_utils.Tensor({name!r}) takes a numpy array; got {type(array).__name__}")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self):
        return _Capsule(self._array)

    @staticmethod
    def from_dlpack(name: str, capsule) -> Tensor:
        # a copy: numpy 1.x marks imported arrays read-only, and they could not be exported again
        return Tensor(name, np.array(np.from_dlpack(capsule)))


class PreferredMemory:
    def __init__(self, memory_type: int, device_id: int = 0):
        self.memory_type, self.device_id = memory_type, device_id


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None):
        self._outputs, self._error = list(output_tensors), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output_tensors(self) -> list:
        return self._outputs


class Request:
    """A request as ``execute`` receives it (what Triton builds from a client's inputs)."""

    def __init__(self, **arrays):
        self._inputs = [Tensor(k, v) for k, v in arrays.items()]

    def inputs(self) -> list:
        return self._inputs


def get_input_tensor_by_name(request, name: str):
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str):
    return next((t for t in response.output_tensors() if t.name() == name), None)


class InferenceRequest:
    server: RepositoryServer | None = None  # set by RepositoryServer.install()

    def __init__(self, model_name: str, requested_output_names, inputs, preferred_memory=None, **kwargs):
        self.model_name, self.requested_output_names = model_name, list(requested_output_names)
        self.inputs, self.preferred_memory = list(inputs), preferred_memory

    def exec(self) -> InferenceResponse:
        return self.server.execute(self)


class RepositoryServer:
    """The engine models of a repository (ONNX format), checked against their configs."""

    def __init__(self, repository: Path):
        import onnxruntime as ort
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        self.repository, self.configs, self.sessions, self.calls = Path(repository), {}, {}, []
        for config_path in sorted(self.repository.glob("*/config.pbtxt")):
            config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
            self.configs[config.name] = config
            if config.platform == "onnxruntime_onnx":
                self.sessions[config.name] = ort.InferenceSession(
                    str(config_path.parent / "1" / config.default_model_filename), providers=["CPUExecutionProvider"]
                )

    def execute(self, request: InferenceRequest) -> InferenceResponse:
        config = self.configs.get(request.model_name)
        if config is None or request.model_name not in self.sessions:
            return InferenceResponse(error=TritonError(f"Request for unknown model: '{request.model_name}'"))
        self.calls.append(request.model_name)
        declared = {i.name: i for i in config.input}
        feeds = {t.name(): t.as_numpy() for t in request.inputs}
        if set(feeds) != set(declared):
            raise AssertionError(f"{request.model_name}: inputs {sorted(feeds)}, config declares {sorted(declared)}")
        for name, array in feeds.items():
            spec = declared[name]
            from tritonclient.grpc import model_config_pb2

            type_name = model_config_pb2.DataType.Name(spec.data_type)
            if array.dtype != _NUMPY[type_name] or list(array.shape[1:]) != list(spec.dims):
                raise AssertionError(
                    f"{request.model_name}.{name}: {array.dtype} {list(array.shape)} vs config "
                    f"{type_name} [batch, {list(spec.dims)}]"
                )
            if not 1 <= array.shape[0] <= config.max_batch_size:
                raise AssertionError(
                    f"{request.model_name}: batch {array.shape[0]} > max_batch_size {config.max_batch_size}"
                )
        outputs = {o.name for o in config.output}
        if not set(request.requested_output_names) <= outputs:
            raise AssertionError(f"{request.model_name}: asked for {request.requested_output_names}, has {outputs}")
        results = self.sessions[request.model_name].run(request.requested_output_names, feeds)
        return InferenceResponse([Tensor(n, r) for n, r in zip(request.requested_output_names, results)])


def install() -> types.ModuleType:
    """Make ``import triton_python_backend_utils`` give this fake."""
    fake = types.ModuleType("triton_python_backend_utils")
    for name in (
        "Tensor",
        "InferenceRequest",
        "InferenceResponse",
        "TritonError",
        "TritonModelException",
        "PreferredMemory",
        "TRITONSERVER_MEMORY_CPU",
        "get_input_tensor_by_name",
        "get_output_tensor_by_name",
    ):
        setattr(fake, name, globals()[name])
    sys.modules["triton_python_backend_utils"] = fake
    return fake


def load_bls_model(repository: Path, model_name: str = "translator"):
    """Import ``<repository>/<model_name>/1/model.py`` against this fake and initialise it as
    Triton would; returns ``(model, server)``."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    server = RepositoryServer(repository)
    InferenceRequest.server = server
    install()
    folder = Path(repository) / model_name
    spec = importlib.util.spec_from_file_location(f"bls_{model_name}", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_repository": str(folder),
            "model_version": "1",
            "model_name": model_name,
            "model_instance_kind": "CPU",
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        }
    )
    return model, server
