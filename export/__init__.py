"""Build-time tools: checkpoint loading, ONNX export with parity checks, bundle writing.

Needs PyTorch; never imported by :mod:`sdk`.
"""
