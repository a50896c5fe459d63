"""sdk.faces.translate: align every face (or the best), translate each crop, paste it back;
with a fake landmark back end and the tiny bundles (S = 256 in, R = 16 out)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2", reason="sdk.faces needs OpenCV (the faces and test extras install it)")

from fakes.fake_landmarks import FakeLandmarks  # noqa: E402
from sdk import Translator  # noqa: E402
from sdk.errors import InputError  # noqa: E402
from sdk.faces import face_from_landmarks  # noqa: E402
from sdk.faces.translate import STAGES, translate_faces, translate_faces_timed  # noqa: E402

H, W = 240, 400
TWO_FACES = [(110, 110, 16, 0.9), (290, 120, 20, 0.95)]  # the second is the best


@pytest.fixture(scope="module")
def frame():
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def translator(tiny_bundles):
    with Translator(tiny_bundles["iterative"], threads=1) as t:
        yield t


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.abs(a.astype(int) - b.astype(int)) > 2).any(axis=2)


def quad_box(face, margin: int = 2):
    (x0, y0), (x1, y1) = face.quad.min(axis=0) - margin, face.quad.max(axis=0) + margin
    return int(x0), int(y0), int(x1), int(y1)


def test_every_face_is_pasted_back_inside_its_quad_and_the_input_is_untouched(translator, frame):
    before = frame.copy()
    result = translate_faces_timed(translator, frame, FakeLandmarks(TWO_FACES), "all")
    np.testing.assert_array_equal(frame, before)
    assert result.frame.shape == frame.shape and result.frame.dtype == np.uint8
    assert [f.score for f in result.faces] == [0.95, 0.9]  # best first
    assert [o.shape for o in result.outputs] == [(16, 16, 3)] * 2
    inside = np.zeros((H, W), bool)
    for face in result.faces:
        x0, y0, x1, y1 = quad_box(face)
        inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
        cx, cy = (int(v) for v in face.quad.mean(axis=0))
        assert changed(result.frame, frame)[cy - 3 : cy + 3, cx - 3 : cx + 3].all()  # the face itself is replaced
    assert not changed(result.frame, frame)[~inside].any()


def test_best_translates_only_the_best_face(translator, frame):
    result = translate_faces_timed(translator, frame, FakeLandmarks(TWO_FACES), "best")
    assert [f.score for f in result.faces] == [0.95]
    x0, _, _, _ = quad_box(result.faces[0])
    assert not changed(result.frame, frame)[:, : x0 - 1].any()  # the other face (left) is as it was


def test_no_face_gives_an_unchanged_copy(translator, frame):
    out = translate_faces(translator, frame, landmarks=FakeLandmarks([]))
    assert out is not frame
    np.testing.assert_array_equal(out, frame)


def test_stage_times_and_the_task_options_reach_the_translator(translator, frame, make_tiny_bundle):
    result = translate_faces_timed(translator, frame, FakeLandmarks(TWO_FACES[:1]), iterations=2)
    assert set(result.ms) == set(STAGES) and all(v >= 0 for v in result.ms.values())
    assert result.ms["translate"] > 0
    face = result.faces[0]
    np.testing.assert_array_equal(result.outputs[0], translator(face.image, iterations=2))
    with Translator(make_tiny_bundle(task="super_resolution", factor=4), threads=1) as sr:
        x4 = translate_faces_timed(sr, frame, FakeLandmarks(TWO_FACES[:1]), factor=4).outputs[0]
        x8 = translate_faces_timed(sr, frame, FakeLandmarks(TWO_FACES[:1]), factor=8).outputs[0]
        np.testing.assert_array_equal(x8, sr(face.image, factor=8))
        assert not np.array_equal(x4, x8)


def test_given_faces_are_not_detected_again(translator, frame):
    backend = FakeLandmarks(TWO_FACES)
    faces = [face_from_landmarks(frame, lm, 256) for lm in backend.detect(frame)]
    backend.detect_calls.clear()
    result = translate_faces_timed(translator, frame, backend, "all", faces=faces)
    assert backend.detect_calls == [] and len(result.faces) == 2
    with pytest.raises(InputError, match="input size 256"):
        translate_faces_timed(translator, frame, backend, faces=[face_from_landmarks(frame, backend._found()[0], 64)])


def test_bad_arguments_are_input_errors(translator, frame, tiny_bundles):
    backend = FakeLandmarks(TWO_FACES)
    with pytest.raises(InputError, match="which"):
        translate_faces(translator, frame, backend, which="first")
    with pytest.raises(InputError, match="8x8"):
        translate_faces(translator, frame[:4, :4], backend)
    with pytest.raises(InputError, match="landmarks"):
        translate_faces(translator, frame, landmarks="haar")
    closed = Translator(tiny_bundles["iterative"], threads=1)
    closed.close()
    with pytest.raises(InputError, match="closed"):
        translate_faces(closed, frame, FakeLandmarks([]))
    assert backend.detect_calls == []  # every check comes before the detector runs


def test_the_translator_method_is_the_pipeline(translator, frame):
    backend = FakeLandmarks(TWO_FACES)
    expected = translate_faces(translator, frame, backend, which="best", iterations=2)
    np.testing.assert_array_equal(
        translator.translate_faces(frame, landmarks=backend, which="best", iterations=2), expected
    )
