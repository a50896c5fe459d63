"""Lower-precision graphs (FP16) and their accuracy against FP32 over the refinement loop."""
