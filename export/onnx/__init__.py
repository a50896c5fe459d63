"""From PyTorch modules to ONNX: the graphs' wrapper modules (``graphs``), tracing (``tracing``),
the parity check against PyTorch (``parity``) and the graph-editing helpers the ONNX-level
rewrites share (``edit``)."""
