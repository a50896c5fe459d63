"""TensorRT engines from the bundle's ONNX graphs, compared with ONNX Runtime."""
