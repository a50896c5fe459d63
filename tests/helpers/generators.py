"""Stand-in generators for the rewrite tests."""

from __future__ import annotations

import torch

from export.models.stylegan2 import Generator


def noisy(g: Generator, seed: int = 0) -> Generator:
    """Non-zero noise weights and buffers, so the precomputed noise products are exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(g.num_layers):
            getattr(g.noises, f"noise_{i}").normal_(generator=gen)
        for m in g.modules():
            if hasattr(m, "noise") and hasattr(m.noise, "weight"):
                m.noise.weight.normal_(0, 0.3, generator=gen)
            if hasattr(m, "activate"):
                m.activate.bias.normal_(0, 0.1, generator=gen)
    return g.eval()
