"""Stand-ins for GPU libraries, for control-flow tests on machines without a GPU.

They are fakes, not emulators: ``fake_cuda`` gives "device memory" that is ordinary host
memory, and ``fake_tensorrt`` "engines" that run the bundle's ONNX graph with ONNX Runtime on
the CPU. They check what the real APIs would reject (unknown pointers, copies in the wrong
direction, unset shapes or addresses, shapes outside the profile) and record every call, so
tests can assert the order of calls and which buffers were used. Nothing measured through
them says anything about GPU speed or TensorRT numerics — except one emulated on purpose:
builds that leave ``BuilderFlag.TF32`` set (TensorRT's default) get engines whose
Conv/MatMul/Gemm operands are rounded to TF32 (``tf32``), as on Ampere and newer GPUs.

``fake_cuda``'s streams are queues (``fake_streams``) that run their work only when waited for
(synchronised, or ordered by events); it records work on a capturing stream as graph nodes and
replays them on launch; ``fake_arrays`` stands in for other libraries' CUDA arrays (CUDA Array Interface,
DLPack); ``fake_ort_cuda`` is the real CPU onnxruntime with its CUDA surface recorded.
"""
