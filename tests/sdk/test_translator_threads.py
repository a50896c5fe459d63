"""Threads and lifetime (issue 5, area 5): one ``Translator`` shared by threads gives the
single-threaded results (calls are serialised); ``close()`` and ``with`` release the sessions
and buffers, also when a close races calls in other threads.
"""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np

from helpers import tiny_bundle as tb
from sdk import InputError, Translator

THREADS, CALLS = 4, 50


_x = tb.random_input


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40 + seed, 50, 3), dtype=np.uint8)


def _run_threads(work, n: int = THREADS) -> list:
    errors: list = []
    barrier = threading.Barrier(n)

    def wrapped(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as e:  # surfaced by the caller
            errors.append(e)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    return errors


def test_four_threads_fifty_calls_each(tiny_bundles):
    """Each call's inputs differ (method, batch size, iterations); every result equals the
    single-threaded result bit for bit."""

    def job(i: int, k: int):
        kind = (i + k) % 4
        if kind == 0:
            return "infer", (_x(1 + k % 3, seed=1000 * i + k), 1 + k % 5)
        if kind == 1:
            return "call", (_image(k % 7), 1 + k % 3)
        if kind == 2:
            z = np.random.default_rng(k).standard_normal((1 + k % 2, tb.M, tb.D)).astype(np.float32)
            return "synthesise", (z,)
        return "steps", (_x(2, seed=k), 3)

    def run(t, name, args):
        if name == "infer":
            r = t.infer(args[0], iterations=args[1])
            return r.images, r.latents
        if name == "call":
            return (t(args[0], iterations=args[1]),)
        if name == "synthesise":
            return (t.synthesise(args[0]),)
        r = t.infer(args[0], iterations=args[1], return_steps=True)
        return tuple(s.image for s in r.steps) + tuple(s.latents for s in r.steps)

    jobs = {(i, k): job(i, k) for i in range(THREADS) for k in range(CALLS)}
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        expected = {key: run(t, *jobs[key]) for key in jobs}
        got: dict = {}

        def work(i):
            for k in range(CALLS):
                got[(i, k)] = run(t, *jobs[(i, k)])

        errors = _run_threads(work)
    assert not errors, errors
    assert len(got) == THREADS * CALLS
    for key, outputs in expected.items():
        assert len(got[key]) == len(outputs)
        for a, b in zip(got[key], outputs):
            np.testing.assert_array_equal(a, b, err_msg=f"thread {key[0]} call {key[1]} ({jobs[key][0]})")


def test_close_drops_sessions_and_buffers(tiny_bundles):
    t = Translator(tiny_bundles["two_stage"], backend="onnxruntime", threads=1)
    t.infer(_x(2, 0))
    loop = t._loop
    sessions = [weakref.ref(r.session) for r in loop.runners.values()]
    assert len(sessions) == 3 and loop._arenas
    t.close()
    gc.collect()
    assert t._loop is None and not loop.runners and not loop._arenas
    assert all(ref() is None for ref in sessions), "a session outlived close()"


def test_with_block_drops_sessions(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1) as t:
        t.infer(_x(1, 0))
        sessions = [weakref.ref(r.session) for r in t._loop.runners.values()]
    gc.collect()
    assert all(ref() is None for ref in sessions)


def test_close_while_other_threads_call(tiny_bundles):
    """Calls racing a close() either finish with the right result or raise InputError('closed');
    nothing else (no KeyError from a dropped session, no crash)."""
    t = Translator(tiny_bundles["iterative"], backend="onnxruntime", threads=1)
    x = _x(1, 3)
    expected = t.infer(x, iterations=2).images
    outcomes: list = []
    started = threading.Event()

    def work(i):
        if i == 0:
            started.wait(timeout=30)
            t.close()
            return
        for _ in range(200):
            try:
                np.testing.assert_array_equal(t.infer(x, iterations=2).images, expected)
                outcomes.append("ok")
            except InputError as e:
                assert "closed" in str(e)
                outcomes.append("closed")
                return
            finally:
                started.set()

    errors = _run_threads(work)
    assert not errors, errors
    assert outcomes.count("closed") == THREADS - 1  # every caller saw the close, cleanly
    assert t._loop is None
