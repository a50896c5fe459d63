"""sdk.faces with landmarks="dlib" against an independent re-implementation of pSp's align_face
(tests/helpers/psp_align.py: dlib + Pillow + scipy, as pSp runs them) on real photographs and
rotated, scaled, offset and flipped versions of them; the crop-to-frame matrix; typed errors."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("dlib", reason="the faces-dlib extra (dlib-bin, face_recognition_models) is not installed")

from helpers import face_photos as fp  # noqa: E402
from helpers.psp_align import dlib_landmarks, psnr, psp_align, psp_quad  # noqa: E402
from sdk.errors import BackendError, InputError  # noqa: E402
from sdk.faces import Landmarks, align_face, crop_corners, detect_faces, face_from_landmarks, ffhq, get_backend  # noqa: E402
from sdk.faces.dlib_landmarks import DlibLandmarks, anchors_68  # noqa: E402

# dlib's detector with its 2x upsample takes ~0.3 s per photo on 2 cores, the model 5 s to load
pytestmark = pytest.mark.slow(minutes=0.6)


@pytest.fixture(scope="module", params=fp.CASES, ids=[f"{p}-{v}" for p, v in fp.CASES])
def case(request):
    image = fp.photo(*request.param)
    return image, align_face(image, landmarks="dlib"), dlib_landmarks(image)


def test_crop_matches_psp(case):
    image, face, lm = case
    assert face is not None and lm is not None
    np.testing.assert_array_equal(face.landmarks, lm)  # the best face, and dlib's points unchanged
    assert face.image.shape == (256, 256, 3) and face.image.dtype == np.uint8
    assert psnr(face.image, psp_align(image, lm)) >= 40.0


def test_matrix_maps_crop_corners_onto_the_quad(case):
    image, face, lm = case
    quad, _ = psp_quad(lm.astype(np.float64))
    corners = (face.matrix @ crop_corners(256).T).T
    np.testing.assert_allclose(corners[:, 2], 1.0)
    assert np.abs(corners[:, :2] - quad).max() <= 1.0
    np.testing.assert_allclose(face.quad, quad, atol=1e-9)


@pytest.mark.parametrize("use_pillow", [True, False], ids=["pillow", "numpy"])
@pytest.mark.parametrize("factor", [6, 9])
def test_shrink_path_matches_psp_and_the_matrix_says_where_pixels_came_from(factor, use_pillow, monkeypatch):
    """A quad of >= 2 x 256 px takes pSp's antialiased Lanczos pre-shrink; landmarks are scaled
    from the photo (dlib on a 2000 px frame would take seconds). Both pre-shrinks: Pillow's where
    installed, the numpy one otherwise."""
    monkeypatch.setattr(ffhq, "USE_PILLOW", use_pillow)
    small = fp.photo("astronaut_face", "rotated+15")
    lm = dlib_landmarks(small)
    image = cv2.resize(small, None, fx=factor, fy=factor * 1.02, interpolation=cv2.INTER_CUBIC)
    lm_big = lm * [factor, factor * 1.02] + [(factor - 1) / 2, (factor * 1.02 - 1) / 2]
    face = face_from_landmarks(image, Landmarks(lm_big, anchors_68(lm_big), 1.0, "dlib"))
    assert psnr(face.image, psp_align(image, lm_big)) >= 40.0
    # the matrix is where the crop's pixels were sampled: resampling the frame with it gives the crop
    resampled = cv2.warpAffine(image, face.matrix[:2], (256, 256), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP)
    assert psnr(resampled, face.image) >= 40.0
    quad, _ = psp_quad(lm_big)
    assert np.abs((face.matrix @ crop_corners(256).T).T[:, :2] - quad).max() <= 1.0


def test_size_1024_and_the_pad_path():
    """Output 1024 (FFHQ's size) and a face whose quad leaves the frame (pSp's reflect pad)."""
    image = np.ascontiguousarray(fp.photo("grace_hopper", "original")[150:450, 60:460])
    lm = dlib_landmarks(image)
    face = face_from_landmarks(image, Landmarks(lm, anchors_68(lm), 1.0, "dlib"), size=1024)
    assert face.image.shape == (1024, 1024, 3)
    assert psnr(face.image, psp_align(image, lm, 1024)) >= 40.0


def test_best_face_of_the_astronaut_is_her_face_not_the_mission_patch():
    image = fp.astronaut()
    faces = detect_faces(image, landmarks="dlib")
    assert len(faces) >= 1
    centre = faces[0].quad.mean(axis=0)
    assert 150 < centre[0] < 300 and 30 < centre[1] < 200, centre  # the head; the patch is near (170, 370)
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    best = align_face(image, landmarks="dlib")
    np.testing.assert_array_equal(best.image, faces[0].image)


@pytest.mark.parametrize("image", [np.full((240, 320, 3), 127, np.uint8), np.zeros((64, 64, 3), np.uint8)])
def test_no_face_is_none_and_an_empty_list(image):
    assert align_face(image, landmarks="dlib") is None
    assert detect_faces(image, landmarks="dlib") == []


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64), np.uint8), "HxWx3"),
        (np.zeros((64, 64, 4), np.uint8), "HxWx3"),
        (np.zeros((4, 64, 3), np.uint8), "at least 8x8"),
        ("not an image", "uint8"),
        (np.ma.masked_all((64, 64, 3), np.uint8), "masked"),
    ],
)
def test_bad_images_are_input_errors(image, words):
    with pytest.raises(InputError, match=words):
        align_face(image, landmarks="dlib")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": 4}, "size"),
        ({"size": 256.0}, "size"),
        ({"landmarks": "haar"}, "landmarks"),
        ({"landmarks": 3}, "landmarks"),
    ],
)
def test_bad_arguments_are_input_errors(kwargs, words):
    with pytest.raises(InputError, match=words):
        detect_faces(np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_degenerate_landmarks_are_an_input_error():
    lm = np.full((68, 2), 30.0)
    with pytest.raises(InputError, match="degenerate"):
        face_from_landmarks(np.zeros((64, 64, 3), np.uint8), Landmarks(lm, anchors_68(lm), 1.0, "dlib"))
    with pytest.raises(InputError, match="4x2"):
        Landmarks(lm, lm[:3], 1.0, "dlib")
    with pytest.raises(InputError, match="Nx2"):
        Landmarks(lm.ravel(), anchors_68(lm), 1.0, "dlib")


def test_missing_dlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(BackendError, match=r"faces-dlib"):
        DlibLandmarks()


def test_missing_model_names_the_extra_and_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("SDK_DLIB_PREDICTOR", str(tmp_path / "nothing.dat"))
    with pytest.raises(BackendError, match="SDK_DLIB_PREDICTOR"):
        DlibLandmarks()


def test_tracking_with_the_predictor_alone_stays_on_the_face():
    image = fp.photo("grace_hopper", "original")
    backend = get_backend("dlib")
    found = backend.detect(image)[0]
    moved = np.ascontiguousarray(np.roll(image, (4, -3), axis=(0, 1)))
    tracked = backend.track(moved, found)
    assert tracked is not None
    assert np.abs(tracked.anchors - (found.anchors + [-3, 4])).max() < 4.0
    assert backend.track(image, Landmarks(found.points + 5000, found.anchors, 1.0, "dlib")) is None
