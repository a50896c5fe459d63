"""Warm start and early exit (sdk/loop.py) against the numpy twin of the toy model.

Warm start: the recurrence started from a caller's (z, y) instead of the average. Early exit:
the loop stops after the first step whose mean |z_{t+1} - z_t| (largest over the batch) is
below the threshold, and reports each step's change.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import InputError

TWIN = dict(rtol=0, atol=1e-4)


def twin_run(model: tb.TinyModel, x: np.ndarray, n: int, z: np.ndarray, y: np.ndarray):
    out = []
    for _ in range(n):
        z = model.encode("encoder", x, y, z)
        y = model.generate(z)
        out.append((z, y))
    return out


@pytest.mark.parametrize("batch", [1, 2])
def test_warm_start_is_the_recurrence_from_the_given_state(translators, tiny_graphs, batch):
    t = translators["iterative"]
    x0, x1 = tb.random_input(batch, seed=1), tb.random_input(batch, seed=2)
    prev = t.infer(x0, iterations=3)
    res = t.infer(x1, iterations=2, init=prev, return_steps=True)
    twin = twin_run(tiny_graphs.model, x1, 2, prev.latents.astype(np.float64), prev.images.astype(np.float64))
    for step, (z, y) in zip(res.steps, twin):
        np.testing.assert_allclose(step.latents, z, **TWIN)
        np.testing.assert_allclose(step.image, y, **TWIN)
    cold = t.infer(x1, iterations=2)
    assert np.abs(cold.latents - res.latents).max() > 1e-3  # the start state really mattered
    # a (latents, images) pair works like a result, and a cold call afterwards is cold again
    pair = t.infer(x1, iterations=2, init=(prev.latents, prev.images))
    np.testing.assert_array_equal(pair.latents, res.latents)
    np.testing.assert_array_equal(t.infer(x1, iterations=2).latents, cold.latents)


def test_early_exit_stops_at_the_first_small_change(translators, tiny_graphs):
    t = translators["iterative"]
    x = tb.random_input(2, seed=3)
    full = t.infer(x, iterations=12, return_steps=True)
    zs = [np.repeat(tiny_graphs.model.latent_avg[None], 2, axis=0)] + [s.latents for s in full.steps]
    changes = [float(np.abs(b - a).mean(axis=(1, 2)).max()) for a, b in zip(zs, zs[1:])]
    assert max(changes) - min(changes) > 1e-6  # the steps' changes differ: the threshold selects one
    threshold = float(np.median(changes)) * 1.000001
    expected = next(i + 1 for i, c in enumerate(changes) if c < threshold)
    res = t.infer(x, iterations=12, early_exit=threshold)
    assert res.iterations == expected < 12
    np.testing.assert_allclose(res.latent_change, changes[:expected], rtol=1e-4)
    np.testing.assert_allclose(res.latents, full.steps[expected - 1].latents, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.images, full.steps[expected - 1].image, rtol=0, atol=1e-6)
    # a tiny threshold runs to the cap
    capped = t.infer(x, iterations=4, early_exit=1e-12)
    assert capped.iterations == 4 and len(capped.latent_change) == 4


def test_early_exit_with_warm_start_measures_from_the_start_state(translators, tiny_graphs):
    t = translators["iterative"]
    x = tb.random_input(1, seed=8)
    prev = t.infer(tb.random_input(1, seed=9), iterations=2)
    z1 = tiny_graphs.model.encode("encoder", x, prev.images.astype(np.float64), prev.latents.astype(np.float64))
    first = float(np.abs(z1 - prev.latents).mean())
    res = t.infer(x, iterations=5, init=prev, early_exit=first * 1.001)
    assert res.iterations == 1
    np.testing.assert_allclose(res.latent_change[0], first, rtol=1e-4)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.1"])
def test_bad_early_exit_is_refused(translators, bad):
    with pytest.raises(InputError, match="early_exit"):
        translators["iterative"].infer(tb.random_input(1), early_exit=bad)


def test_bad_init_is_refused(translators):
    t = translators["iterative"]
    x = tb.random_input(1)
    prev = t.infer(x, iterations=1)
    with pytest.raises(InputError, match="init must be"):
        t.infer(x, init=(prev.latents[:, :2], prev.images))
    with pytest.raises(InputError, match="init must be"):
        t.infer(tb.random_input(2), init=prev)  # batch mismatch
    with pytest.raises(InputError, match="pair"):
        t.infer(x, init=prev.latents)
    with pytest.raises(InputError, match="NaN"):
        t.infer(x, init=(prev.latents * np.nan, prev.images))
    with pytest.raises(InputError, match="warm start needs an iterative"):
        translators["single"].infer(x, init=(prev.latents, prev.images))
