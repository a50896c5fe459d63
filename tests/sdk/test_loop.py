"""The refinement loop (sdk/loop.py) against a direct re-computation of the recurrence.

    z_0 = latent_avg, y_0 = average image
    z_{t+1} = E_t(x, y_t, z_t),  y_{t+1} = G(z_{t+1})

The reference runs each ONNX graph with plain ``InferenceSession.run`` on numpy arrays (no
IOBinding, no ping-pong buffers), and separately the numpy twin of the toy model
(tests/helpers/tiny_bundle.py), so both the buffer plumbing and the schedule are checked.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

import sdk
from helpers import tiny_bundle as tb
from sdk import InputError, RefinementLoop, Translator
from sdk.backends import create_backend
from sdk.bundle import Bundle

EXACT = dict(rtol=0, atol=1e-5)  # same graphs, same runtime: float32 rounding (steps differ by >1e-2)
TWIN = dict(rtol=0, atol=1e-4)  # numpy float64 twin vs the float32 graphs


def _x(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, tb.C_X, tb.S, tb.S), dtype=np.float32) * 2 - 1).astype(np.float32)


class OrtReference:
    """The recurrence with one plain ONNX Runtime session per graph, driven by the manifest."""

    def __init__(self, bundle_path):
        self.bundle = Bundle(bundle_path)
        m = self.bundle.manifest
        self.sessions = {
            k: ort.InferenceSession(str(self.bundle.graph_path(k)), providers=["CPUExecutionProvider"])
            for k in m.graphs
        }
        consts = self.bundle.constants()
        self.z0, self.y0 = consts["latent_avg"], consts["average_image"]

    def run(self, x: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        m = self.bundle.manifest
        b = x.shape[0]
        z = np.repeat(self.z0[None], b, axis=0)
        y = np.repeat(self.y0[None], b, axis=0)
        out = []
        for t in range(n):
            stage = m.schedule.stages[min(t, len(m.schedule.stages) - 1)]
            g = m.graphs[stage.graph]
            by_role = {"condition": x, "image": y, "latents": z}
            z = self.sessions[stage.graph].run(None, {s.name: by_role[s.role] for s in g.inputs})[0]
            y = self.sessions["generator"].run(None, {"z": z})[0]
            out.append((z, y))
        return out


@pytest.fixture(scope="module")
def references(tiny_bundles):
    return {v: OrtReference(p) for v, p in tiny_bundles.items()}


# --------------------------------------------------------------------------- the recurrence

CASES = [("iterative", n) for n in range(1, 6)] + [("single", 1), ("two_stage", 1), ("two_stage", 2)]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant,n", CASES)
def test_loop_equals_recurrence(translators, references, tiny_graphs, variant, n, batch):
    x = _x(batch, seed=10 * n + batch)
    res = translators[variant].infer(x, iterations=n, return_steps=True)
    assert res.iterations == n and len(res.steps) == n
    assert res.images.shape == (batch, 3, tb.R, tb.R) and res.images.dtype == np.float32
    assert res.latents.shape == (batch, tb.M, tb.D) and res.latents.dtype == np.float32
    ref = references[variant].run(x, n)
    twin = tiny_graphs.model.steps(tb.VARIANTS[variant][0], x, n)
    for t, (step, (z, y), (zt, yt)) in enumerate(zip(res.steps, ref, twin)):
        np.testing.assert_allclose(step.latents, z, **EXACT, err_msg=f"latents of step {t + 1}")
        np.testing.assert_allclose(step.image, y, **EXACT, err_msg=f"image of step {t + 1}")
        np.testing.assert_allclose(step.latents, zt, **TWIN, err_msg=f"latents of step {t + 1} (numpy twin)")
        np.testing.assert_allclose(step.image, yt, **TWIN, err_msg=f"image of step {t + 1} (numpy twin)")
    np.testing.assert_array_equal(res.images, res.steps[-1].image)
    np.testing.assert_array_equal(res.latents, res.steps[-1].latents)
    # without return_steps: the same last step, no steps
    plain = translators[variant].infer(x, iterations=n)
    assert plain.steps is None and plain.iterations == n
    np.testing.assert_array_equal(plain.images, res.images)
    np.testing.assert_array_equal(plain.latents, res.latents)


def test_steps_really_differ(translators):
    """Guard against a vacuous recurrence: each iteration moves the latents and the image."""
    res = translators["iterative"].infer(_x(1, 0), iterations=5, return_steps=True)
    for a, b in zip(res.steps, res.steps[1:]):
        assert np.abs(a.latents - b.latents).mean() > 1e-2
        assert np.abs(a.image - b.image).mean() > 1e-3


def test_batch_rows_equal_single_runs(translators):
    x = _x(3, seed=7)
    t = translators["iterative"]
    batched = t.infer(x, iterations=4, return_steps=True)
    assert np.abs(batched.images[0] - batched.images[1]).max() > 1e-2  # rows really differ
    for i in range(3):
        single = t.infer(x[i : i + 1], iterations=4, return_steps=True)
        for sb, ss in zip(batched.steps, single.steps):
            np.testing.assert_allclose(sb.latents[i : i + 1], ss.latents, **EXACT)
            np.testing.assert_allclose(sb.image[i : i + 1], ss.image, **EXACT)


def test_default_iterations_from_manifest(translators, references):
    x = _x(1, seed=3)
    for variant, (_, _, default_n, _) in tb.VARIANTS.items():
        res = translators[variant].infer(x)
        assert res.iterations == default_n
        z, y = references[variant].run(x, default_n)[-1]
        np.testing.assert_allclose(res.images, y, **EXACT)
        np.testing.assert_allclose(res.latents, z, **EXACT)


def test_inputs_bound_by_role_not_position(make_tiny_bundle, references):
    """The manifest may list a graph's inputs in any order: the loop binds by role/name."""
    path = make_tiny_bundle("iterative", edit=lambda m: m["graphs"]["encoder"]["inputs"].reverse())
    assert [i["role"] for i in tb.read_manifest(path)["graphs"]["encoder"]["inputs"]] == [
        "latents",
        "image",
        "condition",
    ]
    x = _x(2, seed=5)
    with Translator(path, backend="onnxruntime", threads=1) as t:
        res = t.infer(x, iterations=3)
    z, y = references["iterative"].run(x, 3)[-1]
    np.testing.assert_allclose(res.images, y, **EXACT)
    np.testing.assert_allclose(res.latents, z, **EXACT)


def test_refinement_loop_directly(tiny_bundles, references):
    """RefinementLoop on a backend, without the Translator's input checks."""
    backend = create_backend("onnxruntime", threads=1)
    loop = RefinementLoop(backend, Bundle(tiny_bundles["iterative"]))
    x = _x(2, seed=9)
    res = loop.run(x, 2)
    assert isinstance(res, sdk.LoopResult) and res.iterations == 2
    z, y = references["iterative"].run(x, 2)[-1]
    np.testing.assert_allclose(res.images, y, **EXACT)
    np.testing.assert_allclose(res.latents, z, **EXACT)
    with pytest.raises(InputError, match=r"\[B, 3, 256, 256\]"):
        loop.run(x[:, :, :128], 2)
    loop.close()


# --------------------------------------------------------------------------- ping-pong state


def test_consecutive_calls_do_not_leak_state(tiny_bundles, references):
    xa, xb = _x(1, seed=21), _x(1, seed=22)
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        ra = t.infer(xa, iterations=5, return_steps=True)
        ra_copy = [(s.latents.copy(), s.image.copy()) for s in ra.steps]
        rb = t.infer(xb, iterations=5, return_steps=True)
        ra2 = t.infer(xa, iterations=5)
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as fresh:
        rb_fresh = fresh.infer(xb, iterations=5, return_steps=True)
    for s, f in zip(rb.steps, rb_fresh.steps):
        np.testing.assert_array_equal(s.latents, f.latents)
        np.testing.assert_array_equal(s.image, f.image)
    np.testing.assert_array_equal(ra2.images, ra.images)
    # results already returned are host copies: later calls do not overwrite them
    for s, (z, y) in zip(ra.steps, ra_copy):
        np.testing.assert_array_equal(s.latents, z)
        np.testing.assert_array_equal(s.image, y)
    assert np.abs(ra.images - rb.images).max() > 1e-2


@pytest.mark.parametrize("sequence", [(1, 5, 2), (2, 1, 4, 3, 1, 5)])
def test_iteration_counts_alternate(translators, references, sequence):
    """Odd and even N end in different ping-pong slots; any order must give the recurrence."""
    t = translators["iterative"]
    for k, n in enumerate(sequence):
        x = _x(1 + k % 2, seed=100 + k)  # alternate batch sizes (separate arenas) too
        res = t.infer(x, iterations=n)
        z, y = references["iterative"].run(x, n)[-1]
        np.testing.assert_allclose(res.latents, z, **EXACT, err_msg=f"call {k} (N={n})")
        np.testing.assert_allclose(res.images, y, **EXACT, err_msg=f"call {k} (N={n})")


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, False, "2"])
def test_bad_iterations_rejected(translators, bad):
    with pytest.raises(InputError, match="iterations"):
        translators["iterative"].infer(_x(1, 0), iterations=bad)


@pytest.mark.parametrize("bad", [2, 5, 0, -1, 1.5, True])
def test_single_pass_iterations(translators, bad):
    with pytest.raises(InputError, match=r"iterations must be an int in 1\.\.1") as err:
        translators["single"].infer(_x(1, 0), iterations=bad)
    assert "psp" in str(err.value)


def test_two_stage_schedule_is_exhausted_after_two(translators):
    t = translators["two_stage"]
    assert t.infer(_x(1, 0), iterations=2).iterations == 2
    with pytest.raises(InputError, match=r"1\.\.2"):
        t.infer(_x(1, 0), iterations=3)


def test_numpy_integer_iterations_accepted(translators, references):
    x = _x(1, 4)
    res = translators["iterative"].infer(x, iterations=np.int64(4))
    assert res.iterations == 4 and type(res.iterations) is int
    np.testing.assert_allclose(res.images, references["iterative"].run(x, 4)[-1][1], **EXACT)


def test_batch_above_range(translators):
    with pytest.raises(InputError, match=r"batch size 5 is outside this bundle's range 1\.\.4"):
        translators["iterative"].infer(_x(5, 0), iterations=1)


def test_batch_below_range(make_tiny_bundle):
    path = make_tiny_bundle("iterative", batch=(2, 4))
    with Translator(path, backend="onnxruntime", threads=1) as t:
        with pytest.raises(InputError, match=r"batch size 1 is outside this bundle's range 2\.\.4"):
            t.infer(_x(1, 0))
        assert t.infer(_x(2, 0)).images.shape[0] == 2


# --------------------------------------------------------------------------- threads


def test_shared_translator_across_threads(tiny_bundles):
    jobs = [(_x(1 + i % 2, seed=200 + i), 1 + i) for i in range(4)]  # per thread: own input, batch and N
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        sequential = [t.infer(x, iterations=n) for x, n in jobs]
        results: dict = {}
        errors: list = []
        barrier = threading.Barrier(len(jobs))

        def work(i):
            try:
                barrier.wait()
                x, n = jobs[i]
                results[i] = [t.infer(x, iterations=n) for _ in range(3)]
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors, errors
    for i, seq in enumerate(sequential):
        for r in results[i]:
            assert r.iterations == jobs[i][1]
            np.testing.assert_allclose(r.images, seq.images, **EXACT)
            np.testing.assert_allclose(r.latents, seq.latents, **EXACT)
