"""A fake ``onnxruntime-gpu``: the real (CPU) onnxruntime with its CUDA surface recorded.

It reports the CUDA and TensorRT execution providers as available, records the ``providers``
each ``InferenceSession`` is given and the device of each ``OrtValue`` allocated, and then does
the work on the CPU: sessions run on the CPU provider, and "cuda" OrtValues are CPU OrtValues
whose memory is registered with the fake CUDA runtime as device memory (so device-to-device
copies into and out of them go through ``fake_cuda``). It checks what the SDK asks of ONNX
Runtime on a GPU, never what ONNX Runtime's CUDA kernels compute.

``version`` gates the API to that release's: by default the oldest the runtime allows
(``onnxruntime>=1.17``), so ``OrtValue.tensor_size_in_bytes`` (new in 1.23) is missing, as there.
"""

from __future__ import annotations

import sys
import types

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


OLDEST = "1.17.0"  # pyproject: onnxruntime>=1.17


def _version(text: str) -> tuple:
    return tuple(int(p) for p in text.split(".")[:2])


def make_module(cudart, providers=tuple(GPU_PROVIDERS), version: str = OLDEST):
    import onnxruntime as real

    class GatedOrtValue(real.OrtValue):
        """The real OrtValue without the methods ``version`` does not have yet."""

        @property
        def tensor_size_in_bytes(self):
            if _version(version) < (1, 23):
                raise AttributeError(
                    f"'OrtValue' object has no attribute 'tensor_size_in_bytes' (onnxruntime {version}; added in 1.23)"
                )
            return super().tensor_size_in_bytes

    m = types.ModuleType("onnxruntime")
    m.__version__ = version
    m.real, m.sessions, m.values = real, [], []  # recorded: session providers, (device, device_id) per value
    m.SessionOptions, m.GraphOptimizationLevel = real.SessionOptions, real.GraphOptimizationLevel
    m.get_available_providers = lambda: list(providers) + real.get_available_providers()

    def session(path, sess_options=None, providers=None):
        m.sessions.append(providers)
        return real.InferenceSession(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    class OrtValue:
        @staticmethod
        def ortvalue_from_shape_and_type(shape, element_type, device_type="cpu", device_id=0):
            m.values.append((device_type, device_id))
            value = real.OrtValue.ortvalue_from_shape_and_type(shape, element_type, "cpu", 0)
            if device_type == "cuda":  # the fake's device memory is host memory: register it as such
                previous, cudart.current_device = cudart.current_device, device_id
                cudart.adopt(value.data_ptr(), max(value.tensor_size_in_bytes(), 1), value)
                cudart.current_device = previous
            return GatedOrtValue(value._ortvalue)

    m.InferenceSession, m.OrtValue = session, OrtValue
    m.__getattr__ = lambda name: getattr(real, name)  # anything else: the real module's (PEP 562)
    return m


def install(monkeypatch, cudart, **kwargs):
    module = make_module(cudart, **kwargs)
    monkeypatch.setitem(sys.modules, "onnxruntime", module)
    return module
