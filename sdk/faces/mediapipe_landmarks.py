"""``landmarks="mediapipe"``: the fast back end, MediaPipe's BlazeFace short-range detector and its
468-point face mesh, without MediaPipe: on LiteRT (``ai-edge-litert``, XNNPACK on the CPU; the
``faces`` extra) where installed, else on ONNX Runtime (the SDK's own dependency).

Models: ``face_detection_short_range.tflite`` and ``face_landmark.tflite`` as MediaPipe 0.10.21's
wheel ships them (``mediapipe/modules/...``), copied into ``sdk/faces/models`` with their licence
(Apache-2.0, commercial use allowed), and their ONNX conversions beside them
(``python -m sdk.faces.tflite_onnx`` writes them).

What it computes, as MediaPipe's face-mesh graph does:

1. detection: the frame letterboxed to 128 x 128 (values -1..1), 896 SSD anchors decoded,
   scores above :data:`MIN_SCORE`, weighted non-maximum suppression (IoU 0.3);
2. a region per face: the box centre, rotated so the eyes (detector key points 0 and 1) are
   level, 1.5 x the box's longer side, sampled to 192 x 192 (values 0..1);
3. the mesh: 468 points in that region, mapped back to the frame; the face-presence output
   (a logit) is the score of :meth:`MediapipeLandmarks.track`.

The FFHQ anchors are the means of the mesh's eye contours (16 points each) and the outer mouth
corners 61 and 291. The short-range detector is made for faces within about 2 m of a camera:
small faces in group photographs are missed.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import BackendError, InputError
from .types import LandmarkBackend, Landmarks

MODELS = Path(__file__).with_name("models")
DETECTOR = MODELS / "face_detection_short_range"  # .tflite as MediaPipe ships it, .onnx converted
MESH = MODELS / "face_landmark"
MIN_SCORE = 0.5  # MediaPipe's min_score_thresh for the short-range detector
NMS_IOU = 0.3
MIN_PRESENCE = 0.5  # a tracked region below this face-presence probability is lost
ROI_SCALE = 1.5
EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
MOUTH_CORNERS = (61, 291)
EXTRA_HINT = 'pip install -e ".[faces]" (ai-edge-litert)'


def _anchors() -> np.ndarray:
    """``(896, 2)`` anchor centres (x, y) in 0..1 of the short-range detector: 2 per cell of the
    16 x 16 grid (stride 8), then 6 per cell of the 8 x 8 grid (stride 16)."""
    out = []
    for grid, per_cell in ((16, 2), (8, 6)):
        ys, xs = np.mgrid[0:grid, 0:grid]
        centres = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out)


ANCHORS = _anchors()


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))


def anchors_mesh(points: np.ndarray) -> np.ndarray:
    """The FFHQ anchors of the 468-point mesh: the eye contours' means and the mouth corners."""
    return np.stack(
        [
            points[list(EYE_IMAGE_LEFT)].mean(axis=0),
            points[list(EYE_IMAGE_RIGHT)].mean(axis=0),
            points[MOUTH_CORNERS[0]],
            points[MOUTH_CORNERS[1]],
        ]
    )


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, extra: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """MediaPipe's weighted NMS: each group of boxes overlapping the best remaining one by IoU
    above :data:`NMS_IOU` becomes their score-weighted mean (``boxes`` ``x0, y0, x1, y1``;
    ``extra`` rows averaged the same way). ``(score, averaged [box, extra])`` best first."""
    order = np.argsort(-scores)
    rows = np.concatenate([boxes, extra], axis=1)
    out = []
    while order.size:
        best = boxes[order[0]]
        others = boxes[order]
        ix = np.clip(np.minimum(best[2], others[:, 2]) - np.maximum(best[0], others[:, 0]), 0, None)
        iy = np.clip(np.minimum(best[3], others[:, 3]) - np.maximum(best[1], others[:, 1]), 0, None)
        inter = ix * iy
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / np.maximum(area(best) + area(others) - inter, 1e-12)
        group = order[iou > NMS_IOU]
        w = scores[group]
        out.append((float(scores[order[0]]), (rows[group] * w[:, None]).sum(axis=0) / w.sum()))
        order = order[iou <= NMS_IOU]
    return out


def _model(stem: Path, suffix: str) -> str:
    path = stem.with_suffix(suffix)
    if not path.is_file():
        raise BackendError(f"the mediapipe back end's model {path} is missing: reinstall gan-encoder-rt")
    return str(path)


def _by_size(shapes: list) -> list[int]:
    """Output positions, the larger output first (regressors / landmarks, then scores / presence)."""
    return sorted(range(len(shapes)), key=lambda i: -int(np.prod(shapes[i])))


class _OrtModel:
    """One converted model (``.onnx``, :mod:`sdk.faces.tflite_onnx`) on ONNX Runtime's CPU provider:
    an NHWC float32 image in, its outputs (batch dimension dropped), the larger first."""

    def __init__(self, stem: Path, num_threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        # no spinning between the many small operators: on a busy CPU a spinning pool doubles the time
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(_model(stem, ".onnx"), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        outputs = self._session.get_outputs()
        self._outputs = [outputs[i].name for i in _by_size([o.shape for o in outputs])]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        return [out[0] for out in self._session.run(self._outputs, {self._input: image[None]})]


class _LiteRtModel:
    """The original ``.tflite`` on LiteRT (XNNPACK), the same contract as :class:`_OrtModel`."""

    def __init__(self, stem: Path, num_threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise BackendError(f"runtime='litert' needs LiteRT: {EXTRA_HINT}") from e
        self._it = Interpreter(model_path=_model(stem, ".tflite"), num_threads=num_threads)
        self._it.allocate_tensors()
        self._input = self._it.get_input_details()[0]["index"]
        details = self._it.get_output_details()
        self._outputs = [details[i]["index"] for i in _by_size([d["shape"] for d in details])]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        self._it.set_tensor(self._input, image[None])
        self._it.invoke()
        return [self._it.get_tensor(i)[0].copy() for i in self._outputs]


RUNTIMES: dict[str, type[_OrtModel] | type[_LiteRtModel]] = {"onnxruntime": _OrtModel, "litert": _LiteRtModel}


class MediapipeLandmarks(LandmarkBackend):
    """MediaPipe's face detector and face mesh, two threads each by default, on LiteRT
    (``runtime="litert"``: the original ``.tflite`` files on XNNPACK, the fastest; the ``faces``
    extra) or on ONNX Runtime (``runtime="onnxruntime"``: the same models converted by
    :mod:`sdk.faces.tflite_onnx`, no extra package, 1.1-4x the time on a busy CPU). ``"auto"`` takes LiteRT
    where it is installed. The two agree within 0.01 px."""

    name = "mediapipe"
    licence = "Apache-2.0 (MediaPipe's BlazeFace short-range and face-mesh models)"

    def __init__(self, num_threads: int = 2, runtime: str = "auto") -> None:
        if runtime == "auto":
            runtime = "litert" if importlib.util.find_spec("ai_edge_litert") is not None else "onnxruntime"
        if runtime not in RUNTIMES:
            raise InputError(f"runtime must be 'auto' or one of {sorted(RUNTIMES)}; got {runtime!r}")
        self.runtime = runtime
        self._detector = RUNTIMES[runtime](DETECTOR, num_threads)
        self._mesh = RUNTIMES[runtime](MESH, num_threads)
        self._lock = threading.Lock()  # a session / interpreter runs one call at a time

    def _detections(self, image: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """``(score, box x0 y0 x1 y1, keypoints (6, 2))`` in frame pixels, best first."""
        h, w = image.shape[:2]
        side = max(h, w)
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        square = cv2.copyMakeBorder(image, pad_y, side - h - pad_y, pad_x, side - w - pad_x, cv2.BORDER_CONSTANT)
        small = cv2.resize(square, (128, 128), interpolation=cv2.INTER_AREA if side > 128 else cv2.INTER_LINEAR)
        raw, logits = self._detector(small.astype(np.float32) / 127.5 - 1.0)
        scores = _sigmoid(logits[:, 0])
        keep = scores >= MIN_SCORE
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep] / 128.0, scores[keep], ANCHORS[keep]
        centre = raw[:, 0:2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        out = []
        for score, row in _weighted_nms(boxes, scores, keypoints.reshape(-1, 12)):
            to_px = lambda p: p * side - np.array([pad_x, pad_y]) - 0.5  # noqa: E731 (0..1 edges -> pixel centres)
            box = np.concatenate([to_px(row[0:2]), to_px(row[2:4])])
            out.append((score, box, to_px(row[4:].reshape(6, 2))))
        return out

    def _mesh_in(self, image: np.ndarray, centre: np.ndarray, side: float, angle: float) -> tuple[np.ndarray, float]:
        """The mesh on the ``side`` px square at ``centre`` rotated by ``angle`` (radians, the
        face's x axis from the frame's): ``(468 x 2 frame points, presence probability)``."""
        ax = np.array([np.cos(angle), np.sin(angle)]) * side / 192.0
        ay = np.array([-np.sin(angle), np.cos(angle)]) * side / 192.0
        origin = centre - 96.0 * (ax + ay) + 0.5 * (ax + ay)  # region pixel centres -> frame pixel centres
        to_frame = np.array([[ax[0], ay[0], origin[0]], [ax[1], ay[1], origin[1]]])
        roi = cv2.warpAffine(
            image, to_frame, (192, 192), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
        )
        raw, presence = self._mesh(roi.astype(np.float32) / 255.0)
        local = raw.reshape(-1, 3)[:, :2] - 0.5  # the model's 0..192 edges -> region pixel centres
        points = local @ to_frame[:, :2].T + to_frame[:, 2]
        return points, float(_sigmoid(presence.reshape(-1)[:1])[0])

    def detect(self, image: np.ndarray) -> list[Landmarks]:
        image = np.ascontiguousarray(image)
        faces = []
        with self._lock:
            for score, box, keypoints in self._detections(image):
                d = keypoints[1] - keypoints[0]  # image-left eye -> image-right eye
                side = max(box[2] - box[0], box[3] - box[1]) * ROI_SCALE
                points, _ = self._mesh_in(image, (box[:2] + box[2:]) / 2, side, float(np.arctan2(d[1], d[0])))
                faces.append(Landmarks(points, anchors_mesh(points), score, self.name))
        return faces

    def track(self, image: np.ndarray, previous: Landmarks) -> Landmarks | None:
        """The mesh alone on the region of ``previous``'s mesh (MediaPipe's tracking: no
        detector); ``None`` when its face-presence probability drops below :data:`MIN_PRESENCE`."""
        if previous.points.shape[0] != 468:
            return None
        d = previous.points[263] - previous.points[33]
        angle = float(np.arctan2(d[1], d[0]))
        rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])  # frame -> face axes
        local = previous.points @ rot.T
        lo, hi = local.min(axis=0), local.max(axis=0)
        centre = ((lo + hi) / 2) @ rot
        side = float(max(hi - lo)) * ROI_SCALE
        with self._lock:
            points, presence = self._mesh_in(np.ascontiguousarray(image), centre, side, angle)
        if presence < MIN_PRESENCE:
            return None
        return Landmarks(points, anchors_mesh(points), presence, self.name)
