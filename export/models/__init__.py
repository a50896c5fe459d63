"""Export-friendly PyTorch modules whose parameter names match the public checkpoints."""
