"""Serving a bundle at scale with NVIDIA Triton Inference Server.

* :mod:`serving.pytriton_server`: ``python -m serving.pytriton_server --bundle engines/demo``
  serves a ``Translator`` under Triton (PyTriton), with dynamic batching and model instances.
* :mod:`serving.client`: a ``tritonclient`` client (HTTP or gRPC) and a command-line example.
* :mod:`serving.model_repository`: ``python -m serving.model_repository --bundle B --out R``
  writes a stock Triton model repository for GPU fleets (TensorRT plans + a Python BLS loop).
* :mod:`serving.batching`: the served model's inputs and outputs, and the batch executor.

Nothing here is imported by ``sdk``; it needs the ``serve`` extra (``pip install -e ".[serve]"``).
"""
