"""ONNX-Runtime-CPU graph rewrites: each graph as ONNX Runtime's CPU provider optimises it, saved
into the bundle, and the batch-1 rewrites applied to that optimised graph."""
