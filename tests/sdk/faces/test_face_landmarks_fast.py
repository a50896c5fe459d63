"""The fast back end, landmarks="mediapipe" (MediaPipe's Apache-2.0 models on LiteRT, or converted
to ONNX on ONNX Runtime): its FFHQ quads within 10 % of dlib's on the package photographs and
their variants, tracking, no face, the two runtimes against each other, the missing extra."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from helpers import face_photos as fp
from sdk.errors import BackendError, InputError
from sdk.faces import Landmarks, align_face, detect_faces, ffhq_quad, get_backend
from sdk.faces.mediapipe_landmarks import ANCHORS, MediapipeLandmarks, anchors_mesh

# dlib on every photo (~0.3 s each, its model 5 s to load)
pytestmark = pytest.mark.slow(minutes=0.4)

needs_litert = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_litert") is None, reason="the faces extra (ai-edge-litert) is not installed"
)
# the reference quads: dlib's landmarks as pSp computes them (tests/helpers/psp_align.py)
needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None, reason="the faces-dlib extra is not installed"
)


@needs_dlib
@pytest.mark.parametrize("name, variant", fp.CASES, ids=[f"{p}-{v}" for p, v in fp.CASES])
def test_quad_within_10_percent_of_dlibs(name, variant):
    from helpers.psp_align import dlib_landmarks, psp_quad

    image = fp.photo(name, variant)
    face = align_face(image, landmarks="mediapipe")
    assert face is not None
    assert face.landmarks.shape == (468, 2) and face.image.shape == (256, 256, 3)
    reference, qsize = psp_quad(dlib_landmarks(image).astype(np.float64))
    corner_error = np.linalg.norm(face.quad - reference, axis=1).max()
    assert corner_error <= 0.10 * qsize, (corner_error, qsize)


def test_detections_best_first_and_in_the_frame():
    image = fp.astronaut()
    faces = detect_faces(image, landmarks="mediapipe")
    assert len(faces) == 1  # the mission patch is no face for BlazeFace
    assert 0.5 <= faces[0].score <= 1.0
    centre = faces[0].quad.mean(axis=0)
    assert 150 < centre[0] < 300 and 30 < centre[1] < 200, centre


def test_tracking_follows_the_face_and_loses_it():
    backend = get_backend("mediapipe")
    image = fp.photo("grace_hopper", "original")
    found = backend.detect(image)[0]
    moved = np.ascontiguousarray(np.roll(image, (6, -5), axis=(0, 1)))
    tracked = backend.track(moved, found)
    assert tracked is not None and tracked.score >= 0.5
    assert np.abs(tracked.anchors - (found.anchors + [-5, 6])).max() < 4.0
    assert backend.track(np.full_like(image, 127), found) is None  # no face there any more
    other = Landmarks(found.points[:68], found.anchors, 1.0, "dlib")  # not a mesh: detect instead
    assert backend.track(image, other) is None


@pytest.mark.parametrize("image", [np.full((240, 320, 3), 127, np.uint8), np.zeros((48, 640, 3), np.uint8)])
def test_no_face_is_none_and_an_empty_list(image):
    assert align_face(image, landmarks="mediapipe") is None
    assert detect_faces(image, landmarks="mediapipe") == []


def test_anchor_grid_and_mesh_anchor_points():
    assert ANCHORS.shape == (896, 2)
    np.testing.assert_allclose(ANCHORS[0], [1 / 32, 1 / 32])
    np.testing.assert_allclose(ANCHORS[512], [1 / 16, 1 / 16])
    points = np.zeros((468, 2))
    points[[61, 291]] = [[10, 50], [30, 50]]
    points[[33, 133]], points[[263, 362]] = [[8, 20], [12, 20]], [[28, 20], [32, 20]]
    anchors = anchors_mesh(points)
    np.testing.assert_allclose(anchors[2:], [[10, 50], [30, 50]])
    quad, qsize = ffhq_quad(anchors)
    assert qsize > 0 and quad.shape == (4, 2)


def test_without_litert_auto_runs_the_onnx_models_and_litert_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert MediapipeLandmarks().runtime == "onnxruntime"
    with pytest.raises(BackendError, match=r"\[faces\]"):
        MediapipeLandmarks(runtime="litert")
    with pytest.raises(InputError, match="runtime"):
        MediapipeLandmarks(runtime="tflite")


@needs_litert
@pytest.mark.parametrize("name, variant", [("grace_hopper", "rotated-25"), ("astronaut_face", "flipped")])
def test_onnx_runtime_gives_litert_s_landmarks(name, variant):
    """The converted models (sdk.faces.tflite_onnx) on ONNX Runtime against the .tflite on LiteRT."""
    image = fp.photo(name, variant)
    on_litert = MediapipeLandmarks(runtime="litert").detect(image)
    on_ort = MediapipeLandmarks(runtime="onnxruntime").detect(image)
    # the best face; a second detection scoring near the 0.5 threshold may fall either side of it
    assert on_litert and on_ort
    assert abs(on_litert[0].score - on_ort[0].score) < 1e-4
    assert np.abs(on_litert[0].points - on_ort[0].points).max() < 0.01


def test_the_conversion_reproduces_the_shipped_onnx_files(tmp_path):
    """The same operators, attributes and weights (compared as graphs: onnx releases may serialise
    the same model to other bytes)."""
    onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
    from onnx import numpy_helper

    from sdk.faces import tflite_onnx

    def content(path):
        graph = onnx.load(str(path)).graph
        nodes = [(n.op_type, list(n.input), list(n.output), str(n.attribute)) for n in graph.node]
        weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        return nodes, weights, str(graph.input), str(graph.output)

    for stem in tflite_onnx.NAMES:
        tflite_onnx.convert(tflite_onnx.MODELS / f"{stem}.tflite", tmp_path / f"{stem}.onnx")
        nodes, weights, inputs, outputs = content(tmp_path / f"{stem}.onnx")
        shipped = content(tflite_onnx.MODELS / f"{stem}.onnx")
        assert (nodes, inputs, outputs) == (shipped[0], shipped[2], shipped[3])
        assert weights.keys() == shipped[1].keys()
        assert all(np.array_equal(weights[k], shipped[1][k]) for k in weights)
