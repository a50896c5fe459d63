"""Offline tools beside the build: HRInversion's per-image latent optimisation and the bundle
comparison."""
