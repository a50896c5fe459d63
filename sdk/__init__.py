"""Real-time GAN-encoder image translation at run time: numpy + ONNX Runtime (+ TensorRT).

    from sdk import Translator
    t = Translator("engines/demo")
    out = t(frame)                       # HxWx3 uint8 RGB in and out

Never imports PyTorch.
"""

from .bundle import Bundle
from .device_arrays import DeviceArray
from .errors import BackendError, BundleError, InputError, SdkError, StaleEngineError
from .loop import LoopResult, RefinementLoop
from .translator import TranslationResult, Translator

__version__ = "0.1.0"
__all__ = [
    "Translator",
    "TranslationResult",
    "DeviceArray",
    "Bundle",
    "RefinementLoop",
    "LoopResult",
    "SdkError",
    "BundleError",
    "BackendError",
    "InputError",
    "StaleEngineError",
    "__version__",
]
