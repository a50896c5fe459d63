"""Imported at start-up when this folder is on PYTHONPATH: makes the interpreter look like a
virtual environment with only the runtime (numpy, onnxruntime) installed.

Every optional package the extras bring is refused with the ``ModuleNotFoundError`` that a
missing package raises, before any finder could find it on disk, so ``try: import cv2 except
ImportError`` behaves as it does on a machine without OpenCV.
"""

import sys

BLOCKED = frozenset(
    {
        "torch",
        "torchvision",
        "onnx",
        "onnxscript",
        "onnxconverter_common",
        "polygraphy",
        "tensorrt",
        "cuda",
        "cupy",
        "tritonclient",
        "pytriton",
        "cv2",
        "PIL",
        "tqdm",
        "matplotlib",
        "skimage",
        "scipy",
    }
)


class _Blocked:
    """A meta-path finder that raises for the blocked top-level packages and defers otherwise."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocked())
