"""sdk.faces.smoothing (the One Euro filter) and sdk.faces.video.FaceVideo (detect every k
frames, track between, smoothed anchors), with a fake landmark back end."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("cv2", reason="sdk.faces needs OpenCV (the faces and test extras install it)")

from fakes.fake_landmarks import FakeLandmarks, anchors_at  # noqa: E402
from sdk.errors import InputError  # noqa: E402
from sdk.faces.smoothing import OneEuroFilter  # noqa: E402
from sdk.faces.video import FaceVideo  # noqa: E402

FRAME = np.full((120, 160, 3), 128, np.uint8)


def run_filter(f: OneEuroFilter, positions, fps: float) -> np.ndarray:
    return np.array([f.filter(p, i / fps) for i, p in enumerate(positions)])


# --------------------------------------------------------------------------- One Euro filter


def test_a_still_face_jitters_less():
    # half a pixel of detector noise on a face whose anchors spread 25 px (2 %)
    rng = np.random.default_rng(1)
    still = anchors_at(80, 60, 20)
    noisy = still + rng.normal(0, 0.5, (90, 4, 2))
    out = run_filter(OneEuroFilter(), noisy, 30.0)[30:]
    assert (out - still).std() < 0.5 * (noisy[30:] - still).std()


def test_beta_removes_the_lag_on_a_moving_face():
    # a face moving at 2 face widths per second: with beta = 0 the filter is a plain low-pass and lags
    path = [anchors_at(40 + 40 * i / 30, 60, 10) for i in range(45)]
    lag = {b: np.abs(run_filter(OneEuroFilter(beta=b), path, 30.0)[-1] - path[-1]).max() for b in (0.0, 1.0)}
    assert lag[1.0] < 0.5 * lag[0.0]
    assert lag[0.0] > 2.0  # the plain low-pass really lags by pixels


def test_the_same_motion_at_another_frame_rate_filters_alike():
    def at(fps):
        n = int(fps)  # one second
        return run_filter(OneEuroFilter(), [anchors_at(40 + 20 * i / fps, 60, 10) for i in range(n)], fps)[-1]

    assert np.abs(at(30.0) - at(60.0)).max() < 0.6


def test_a_jump_restarts_the_filter_at_the_new_face():
    f = OneEuroFilter()
    f.filter(anchors_at(40, 60, 10), 0.0)
    assert not f.jumped
    moved = anchors_at(120, 60, 10)
    np.testing.assert_array_equal(f.filter(moved, 1 / 30), moved)
    assert f.jumped
    f.filter(anchors_at(121, 60, 10), 2 / 30)
    assert not f.jumped


@pytest.mark.parametrize(
    "options",
    [{"min_cutoff": 0}, {"min_cutoff": math.nan}, {"beta": -1}, {"d_cutoff": "1"}, {"reset_distance": math.inf}],
)
def test_bad_parameters_are_input_errors(options):
    with pytest.raises(InputError, match=next(iter(options))):
        OneEuroFilter(**options)


@pytest.mark.parametrize("points", [np.zeros((4, 3)), np.zeros((0, 2)), np.full((4, 2), np.nan), np.zeros(8)])
def test_bad_landmarks_are_input_errors(points):
    with pytest.raises(InputError, match=r"\[N, 2\]"):
        OneEuroFilter().filter(points, 0.0)


# --------------------------------------------------------------------------- FaceVideo


def run_video(video: FaceVideo, backend: FakeLandmarks, frames: int):
    out = []
    for i in range(frames):
        backend.frame = i
        out.append((video.update(FRAME, i / 30.0), video.detected, list(video.jumped)))
    return out


def test_detects_every_k_frames_and_tracks_between():
    backend = FakeLandmarks([(80, 60, 12, 1.0)])
    video = FaceVideo(size=32, landmarks=backend, detect_every=3)
    out = run_video(video, backend, 7)
    assert backend.detect_calls == [0, 3, 6]
    assert backend.track_calls == [1, 2, 4, 5]
    assert [d for _, d, _ in out] == [True, False, False, True, False, False, True]
    assert all(len(faces) == 1 and faces[0].size == 32 for faces, _, _ in out)
    assert [j for _, _, j in out] == [[True]] + [[False]] * 6  # one track throughout
    assert set(video.last_ms) == {"detect", "align"}


def test_a_lost_track_detects_again_on_that_frame():
    backend = FakeLandmarks([(80, 60, 12, 1.0)], lose_on={2})
    run_video(FaceVideo(size=32, landmarks=backend, detect_every=5), backend, 4)
    assert backend.detect_calls == [0, 2]


def test_a_tracker_that_drifts_off_the_face_is_not_trusted():
    class Shrinking(FakeLandmarks):
        def track(self, image, previous):  # half the size each tracked frame, as a box fitted too tight would
            self.track_calls.append(self.frame)
            c = previous.anchors.mean(axis=0)
            anchors = c + 0.5 * (previous.anchors - c)
            return type(previous)(anchors, anchors, previous.score, self.name)

    backend = Shrinking([(80, 60, 12, 1.0)])
    out = run_video(FaceVideo(size=32, landmarks=backend, detect_every=5), backend, 3)
    assert backend.detect_calls == [0, 1, 2]  # every tracked result refused
    assert [j for _, _, j in out] == [[True], [False], [False]]  # and the face keeps its track


def test_a_back_end_without_tracking_detects_every_frame():
    backend = FakeLandmarks([(80, 60, 12, 1.0)], can_track=False)
    run_video(FaceVideo(size=32, landmarks=backend, detect_every=4), backend, 3)
    assert backend.detect_calls == [0, 1, 2]


def test_faces_keep_their_tracks_and_a_new_face_starts_one():
    # two faces; from frame 3 a third appears: it is a new track, the others continue theirs
    def faces(i):
        return [(40 + i, 60, 8, 0.9), (120 - i, 60, 8, 0.8)] + ([(80, 20, 6, 0.95)] if i >= 3 else [])

    backend = FakeLandmarks(faces)
    video = FaceVideo(size=16, landmarks=backend, detect_every=1, max_faces=3)
    out = run_video(video, backend, 5)
    assert [len(f) for f, _, _ in out] == [2, 2, 2, 3, 3]
    assert out[3][2] == [True, False, False]  # best first: the new face, then the two continued tracks
    assert out[4][2] == [False, False, False]
    assert [len(f) for f, _, _ in run_video(FaceVideo(16, backend, 1, max_faces=1), backend, 1)] == [1]


def test_smoothed_faces_jitter_less_than_the_raw_landmarks():
    backend = FakeLandmarks([(80, 60, 20, 1.0)], jitter=0.5)
    smooth = FaceVideo(size=32, landmarks=backend, detect_every=1)
    raw = FaceVideo(size=32, landmarks=FakeLandmarks([(80, 60, 20, 1.0)], jitter=0.5), detect_every=1, smoothing=False)
    spread = {}
    for name, video in (("smooth", smooth), ("raw", raw)):
        quads = np.array([faces[0].quad for faces, _, _ in run_video(video, video.backend, 60)[20:]])
        spread[name] = quads.std(axis=0).mean()
    assert spread["smooth"] < 0.5 * spread["raw"]


def test_no_face_is_an_empty_list_and_bad_arguments_are_input_errors():
    backend = FakeLandmarks([])
    video = FaceVideo(size=32, landmarks=backend)
    assert run_video(video, backend, 3)[-1][0] == []
    with pytest.raises(InputError, match="detect_every"):
        FaceVideo(landmarks=backend, detect_every=0)
    with pytest.raises(InputError, match="beta"):
        FaceVideo(landmarks=backend, beta=-1)
    with pytest.raises(InputError, match="uint8"):
        video.update(FRAME.astype(np.float32))
