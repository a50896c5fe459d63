"""Helpers shared by the test modules: tiny bundles, the shared data folder, stand-in checkpoints."""
