"""PyTorch-level rewrites: modules swapped for equivalent forms that export to faster ONNX graphs
(merged style heads, phase up-convolutions, Winograd convolutions, PReLU and pooling forms).
Parity is always checked against the original module."""
