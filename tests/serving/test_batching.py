"""The served model's batch executor (serving/batching.py), without a server: requests with
different iteration counts and task options in one batch are each answered as asked."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_bundle as tb
from sdk import InputError, Translator
from serving.batching import (
    CONDITION,
    IMAGE,
    ITERATIONS,
    LATENTS,
    OUTPUT,
    OUTPUT_RAW,
    model_inputs,
    task_options,
    translate_requests,
)

RAW_ATOL = 1e-5  # float32; stacked and single runs of the same ONNX graphs differ in the last bits at most


def images(n: int, seed: int, size=(40, 30)) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *size, 3)) * 255).astype(np.uint8)


def check_rows(answer: dict, expected: list) -> None:
    assert answer[OUTPUT].dtype == np.uint8 and answer[OUTPUT].shape == (len(expected), tb.R, tb.R, 3)
    for i, e in enumerate(expected):
        np.testing.assert_allclose(answer[OUTPUT_RAW][i], e.images[0], atol=RAW_ATOL, rtol=0)
        np.testing.assert_allclose(answer[LATENTS][i], e.latents[0], atol=RAW_ATOL, rtol=0)


def test_mixed_requests_are_answered_each_as_asked(make_tiny_bundle):
    with Translator(make_tiny_bundle("iterative", task="super_resolution", factor=4), backend="onnxruntime") as t:
        assert task_options(t.manifest.task) == ("factor",)
        assert [i.name for i in model_inputs(t)] == [IMAGE, CONDITION, ITERATIONS, "factor"]
        a, b = images(3, seed=1), images(1, seed=2)
        x = tb.random_input(2, seed=4)
        requests = [
            {IMAGE: a, ITERATIONS: np.array([[1], [4], [2]], np.int32), "factor": np.array([[8], [2], [8]], np.int32)},
            {CONDITION: x},  # default iterations, already pre-processed
            {IMAGE: b},  # the bundle's factor and iterations
        ]
        answers = translate_requests(t, requests, max_batch=2)  # forces the groups into chunks
        single = [
            t.infer(t.preprocess(a[i], factor=f)[None], iterations=n)
            for i, (n, f) in enumerate([(1, 8), (4, 2), (2, 8)])
        ]
        check_rows(answers[0], single)
        check_rows(answers[1], [t.infer(x[i : i + 1]) for i in range(2)])
        check_rows(answers[2], [t.infer(t.preprocess(b[0])[None])])
        np.testing.assert_array_equal(answers[2][OUTPUT][0], t(b[0]))  # what translator(image) returns
        with pytest.raises(InputError, match="request 0 .*apply to 'image' inputs"):
            translate_requests(t, [{CONDITION: x, "factor": np.array([[2], [2]], np.int32)}], 4)
        with pytest.raises(InputError, match="request 0 .*factor must be one of"):
            translate_requests(t, [{IMAGE: b, "factor": np.array([[3]], np.int32)}], 4)


def test_fixed_batch_bundle_is_padded(make_tiny_bundle):
    bundle = make_tiny_bundle("iterative", edit=lambda m: tb.fix_batch(m, 2))
    with Translator(bundle, backend="onnxruntime") as t:
        x = tb.random_input(3, seed=5)
        answers = translate_requests(t, [{CONDITION: x}], max_batch=2)  # chunks of 2 and 1 (padded to 2)
        expected = np.concatenate([t.infer(x[:2]).images, t.infer(np.concatenate([x[2:], x[2:]])).images[:1]])
        np.testing.assert_allclose(answers[0][OUTPUT_RAW], expected, atol=RAW_ATOL, rtol=0)


def test_errors_name_the_request(tiny_bundles):
    with Translator(tiny_bundles["iterative"], backend="onnxruntime") as t:
        x = tb.random_input(1)
        with pytest.raises(InputError, match=r"request 1 of this batch: send exactly one"):
            translate_requests(t, [{CONDITION: x}, {CONDITION: x, IMAGE: images(1, 0)}], 4)
        with pytest.raises(InputError, match=r"request\(s\) \[1\] of this batch: iterations must be"):
            translate_requests(t, [{CONDITION: x}, {CONDITION: x, ITERATIONS: np.array([[0]], np.int32)}], 4)
        with pytest.raises(InputError, match="request 0 .*one value per row"):
            translate_requests(t, [{CONDITION: x, ITERATIONS: np.array([1, 2], np.int32)}], 4)


def test_environment_reasons(monkeypatch):
    """Where Triton cannot start, the reason says why (the serving tests skip with it)."""
    import os
    import platform

    from serving import environment

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert "Linux only" in environment.unavailable_reason()
    with pytest.raises(environment.ServingUnavailable, match="Linux only"):
        environment.prepare_environment()
    monkeypatch.undo()
    if environment.unavailable_reason() is None and environment.interpreter_library_dir() is not None:
        # a shared-library interpreter where Triton can start: the stub gets this interpreter's libpython
        monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
        environment.prepare_environment()
        paths = os.environ["LD_LIBRARY_PATH"].split(os.pathsep)
        assert paths == [str(environment.interpreter_library_dir()), "/somewhere"]
