"""samples/webcam_sr.py: headless runs on a generated clip, its options, and its parts.

The clip is written with OpenCV into tmp_path and the tiny bundles (S = 256 input, R = 16
output) stand in for the demo model, so the sample is exercised at sizes other than the demo's.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="the webcam sample needs OpenCV (the test extra installs it)")

from samples import webcam_sr  # noqa: E402
from samples.face_crop import LOST_AFTER, Box, FaceTracker, centre_box, crop_square  # noqa: E402
from samples.sr_pipeline import LowResolution, composite_size  # noqa: E402
from samples.video_io import FrameGrabber, SampleError, Source, require_window_support, write_video  # noqa: E402
from sdk import Translator  # noqa: E402
from sdk.imaging import resize_bilinear, to_model_range  # noqa: E402

FRAMES, WIDTH, HEIGHT, PANEL = 12, 160, 120, 64


def face_like_clip(n: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """A skin-coloured ellipse with eyes and a mouth drifting over a gradient: RGB uint8 frames."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(n):
        img = np.stack([xx / width, yy / height, np.full_like(xx, 0.4)], axis=-1) * 200
        cx, cy = width / 2 + 15 * np.sin(i / 3), height / 2 + 5 * np.cos(i / 4)
        img[((xx - cx) / 28) ** 2 + ((yy - cy) / 36) ** 2 < 1] = (220, 180, 150)
        for dx in (-10, 10):
            img[(xx - cx - dx) ** 2 + (yy - cy + 8) ** 2 < 12] = (40, 30, 30)
        img[(np.abs(xx - cx) < 9) & (np.abs(yy - cy - 14) < 2)] = (150, 60, 60)
        frames.append(img.astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    assert write_video(cv2, path, face_like_clip(), fps=10.0) == FRAMES
    return path


@pytest.fixture
def sr_bundle(make_tiny_bundle):
    return make_tiny_bundle("iterative", task="super_resolution", factor=4)


def read_video(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def run_sample(*args) -> int:
    return webcam_sr.main(["--headless", "--panel-size", str(PANEL), "--threads", "1", *map(str, args)])


def summary_value(out: str, label: str) -> float:
    return float(re.search(rf"{re.escape(label)}: ([0-9.]+)", out).group(1))


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("face", [True, False], ids=["face", "no-face"])
def test_headless_output_has_every_input_frame_at_the_composite_size(clip, sr_bundle, tmp_path, capsys, face):
    out = tmp_path / "out.mp4"
    assert run_sample("--source", clip, "--bundle", sr_bundle, "--output", out, *([] if face else ["--no-face"])) == 0
    frames = read_video(out)
    assert len(frames) == FRAMES
    width, height = composite_size(PANEL)
    assert {f.shape for f in frames} == {(height, width, 3)}
    text = capsys.readouterr().out
    assert summary_value(text, "frames") == FRAMES
    assert summary_value(text, "FPS (mean after warm-up)") > 0
    for stage in ("capture", "detect", "preprocess", "sdk", "compose", "overlay", "output"):
        assert f"{stage} " in text


@pytest.fixture
def infer_calls(monkeypatch):
    """Every Translator.infer call of a run: (iterations asked, init given, early_exit, iterations run)."""
    calls = []
    infer = Translator.infer

    def spy(self, x, iterations=None, return_steps=False, init=None, early_exit=None):
        result = infer(self, x, iterations=iterations, return_steps=return_steps, init=init, early_exit=early_exit)
        calls.append((iterations, init is not None, early_exit, result.iterations))
        return result

    monkeypatch.setattr(Translator, "infer", spy)
    return calls


def test_warm_start_and_early_exit_reach_the_loop(clip, sr_bundle, capsys, infer_calls):
    assert (
        run_sample(
            "--source",
            clip,
            "--bundle",
            sr_bundle,
            "--no-face",
            "--warm-start",
            "--early-exit",
            "0.05",
            "--iterations",
            4,
        )
        == 0
    )
    frames = infer_calls[1:]  # [0] is the warm-up
    assert len(frames) == FRAMES
    assert all(n == 4 and exit_at == 0.05 for n, _, exit_at, _ in frames)
    # from the average on the first frame and every 4th (--warm-refresh 4), else warm
    assert [warm for _, warm, _, _ in frames] == [i % 4 != 0 for i in range(FRAMES)]
    ran = [r for *_, r in frames]
    assert all(1 <= r <= 4 for r in ran)
    assert summary_value(capsys.readouterr().out, "iterations per frame (mean)") == pytest.approx(
        np.mean(ran), abs=0.01
    )


def test_warm_frames_run_their_own_iterations(clip, sr_bundle, infer_calls):
    assert (
        run_sample(
            "--source",
            clip,
            "--bundle",
            sr_bundle,
            "--no-face",
            "--warm-start",
            1,
            "--warm-refresh",
            0,
            "--iterations",
            3,
            "--max-frames",
            5,
        )
        == 0
    )
    assert [(n, warm) for n, warm, _, _ in infer_calls[1:]] == [(3, False)] + [(1, True)] * 4


def test_headless_without_output_prints_statistics(clip, tiny_bundles, capsys):
    assert run_sample("--source", clip, "--bundle", tiny_bundles["iterative"], "--max-frames", 5) == 0
    assert summary_value(capsys.readouterr().out, "frames") == 5


@pytest.mark.parametrize(
    "source, message", [("missing.mp4", "no such video file"), ("97", "camera 97 cannot be opened")]
)
def test_a_source_that_cannot_open_fails_clearly(tiny_bundles, tmp_path, caplog, source, message):
    source = str(tmp_path / source) if source.endswith(".mp4") else source
    with caplog.at_level(logging.ERROR):
        assert run_sample("--source", source, "--bundle", tiny_bundles["iterative"]) == 2
    assert message in caplog.text


def test_factor_on_an_inversion_bundle_is_refused(clip, tiny_bundles, caplog):
    with caplog.at_level(logging.ERROR):
        assert run_sample("--source", clip, "--bundle", tiny_bundles["iterative"], "--factor", 4) == 2
    assert "--factor applies to super-resolution bundles" in caplog.text


def test_warm_start_on_a_one_pass_bundle_fails_clearly(clip, tiny_bundles, caplog):
    with caplog.at_level(logging.ERROR):
        assert run_sample("--source", clip, "--bundle", tiny_bundles["single"], "--warm-start") == 2
    assert "a warm start needs an iterative bundle" in caplog.text


@pytest.mark.parametrize(
    "bad", [["--early-exit", "0"], ["--warm-start", "0"], ["--warm-refresh", "-1"], ["--iterations", "0"]]
)
def test_bad_arguments_exit_with_usage(bad):
    with pytest.raises(SystemExit) as e:
        webcam_sr.parse_args(bad)
    assert e.value.code == 2


@pytest.mark.skipif(
    "NONE" not in re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation()).group(1),
    reason="an OpenCV build with windows: nothing to refuse",
)
def test_a_headless_opencv_says_how_to_get_a_window(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":0")
    with pytest.raises(SampleError, match="opencv-python"):
        require_window_support(cv2)


# --------------------------------------------------------------------------- parts


def test_simulated_low_resolution_is_what_the_model_sees(sr_bundle):
    with Translator(sr_bundle, backend="onnxruntime", threads=1) as t:
        crop = face_like_clip(1, 256, 256)[0]
        inp = LowResolution(t, 4)(crop)
        assert inp.low_res.shape == (64, 64, 3) and inp.low_res.dtype == np.uint8
        # the task's pre-processing is this image resized back to the input size
        back = np.clip(np.round(resize_bilinear(inp.low_res.transpose(2, 0, 1).astype(np.float32), (256, 256))), 0, 255)
        np.testing.assert_allclose(inp.x, to_model_range(back / 255.0, -1.0, 1.0), atol=1e-6)
        real = LowResolution(t, 1)
        assert real.crop_size is None and real(crop[:40, :40]).low_res.shape == (40, 40, 3)
        with pytest.raises(SampleError, match="does not divide"):
            LowResolution(t, 3)


def test_crop_square_replicates_edges_and_resizes():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :100] = 255
    box = centre_box(200, 100)
    assert box == Box(100.0, 50.0, 100.0)
    assert crop_square(cv2, frame, box).shape == (100, 100, 3)
    corner = crop_square(cv2, frame, Box(0.0, 0.0, 40.0), 16)
    assert corner.shape == (16, 16, 3) and corner.min() == 255  # outside the frame: the edge pixels


def test_face_box_is_smoothed_kept_and_snapped(monkeypatch):
    tracker = FaceTracker(cv2, smoothing=0.5)
    detections = iter([Box(50, 50, 40), Box(54, 50, 40), None, Box(150, 50, 40)])
    monkeypatch.setattr(tracker, "detect", lambda rgb: next(detections))
    frame = np.zeros((100, 200, 3), np.uint8)
    assert tracker.update(frame) == Box(50, 50, 40) and not tracker.jumped
    assert tracker.update(frame) == Box(52, 50, 40)  # half way: the moving average
    assert tracker.update(frame) == Box(52, 50, 40) and not tracker.found  # no face: the last box
    assert tracker.update(frame) == Box(150, 50, 40) and tracker.jumped  # far away: a new face, no smoothing
    monkeypatch.setattr(tracker, "detect", lambda rgb: None)
    for _ in range(LOST_AFTER - 1):
        assert tracker.update(frame) == Box(150, 50, 40) and not tracker.jumped
    assert tracker.update(frame) == centre_box(200, 100) and tracker.jumped  # gone: back to the centre


class FakeCamera:
    """A camera that produces numbered frames as fast as asked."""

    def __init__(self, n: int):
        self.n, self.i = n, 0

    def read(self):
        if self.i >= self.n:
            return False, None
        self.i += 1
        time.sleep(0.002)
        return True, np.full((4, 4, 3), self.i, np.uint8)

    def release(self):
        pass


def test_camera_frames_are_dropped_not_queued_while_the_model_is_busy():
    grabber = FrameGrabber(cv2, Source(FakeCamera(50), "fake", True, 30.0, 0, (4, 4)))
    grabber.start()
    seen = []
    while (frame := grabber.get()) is not None:
        seen.append(frame.index)
        time.sleep(0.02)  # a slow model
    grabber.stop()
    assert grabber.dropped > 0 and len(seen) + grabber.dropped == 50
    assert seen == sorted(seen)


def test_file_frames_are_never_dropped():
    grabber = FrameGrabber(cv2, Source(FakeCamera(20), "fake.mp4", False, 30.0, 20, (4, 4)))
    grabber.start()
    seen = []
    while (frame := grabber.get()) is not None:
        seen.append(frame.index)
        time.sleep(0.005)
    grabber.stop()
    assert seen == list(range(20)) and grabber.dropped == 0


# --------------------------------------------------------------------------- --align ffhq on a real face


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory):
    """Grace Hopper's photograph (matplotlib's sample data) under a panning, zooming camera."""
    from samples.clips import photo_clip

    pytest.importorskip("matplotlib", reason="the photograph ships with matplotlib (the test extra)")
    frames, _ = photo_clip(cv2, ["grace_hopper"], FRAMES, (WIDTH * 2, HEIGHT * 2))
    path = tmp_path_factory.mktemp("face_clip") / "face.mp4"
    assert write_video(cv2, path, frames, fps=10.0) == FRAMES
    return path


def landmark_backend(name: str):
    """The back end, or a skip naming the extra that installs it."""
    from sdk.errors import BackendError
    from sdk.faces import get_backend

    try:
        return get_backend(name)
    except BackendError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("landmarks", ["mediapipe", "dlib"])
def test_align_ffhq_pastes_the_face_back_beside_the_input(face_clip, sr_bundle, tmp_path, capsys, landmarks):
    landmark_backend(landmarks)
    out = tmp_path / "out.mp4"
    args = ["--source", face_clip, "--bundle", sr_bundle, "--output", out, "--align", "ffhq", "--landmarks", landmarks]
    assert run_sample(*args) == 0
    frames = read_video(out)
    assert len(frames) == FRAMES
    aspect = WIDTH / HEIGHT  # two panels of the source's aspect, PANEL high, over the 40 px bar
    assert {f.shape for f in frames} == {(PANEL + 40, 2 * round(PANEL * aspect / 2) * 2, 3)}
    text = capsys.readouterr().out
    assert summary_value(text, "frames with a face") >= 0.8 * FRAMES
    for stage in ("detect", "align", "sdk", "paste"):
        assert f"{stage} " in text
    left, right = frames[-1][:PANEL, : frames[-1].shape[1] // 2], frames[-1][:PANEL, frames[-1].shape[1] // 2 :]
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 1  # the pasted face differs from the input


def test_align_ffhq_refuses_no_face():
    with pytest.raises(SystemExit) as e:
        webcam_sr.parse_args(["--align", "ffhq", "--no-face"])
    assert e.value.code == 2
    assert webcam_sr.parse_args(["--align", "ffhq"]).detect_every == 5
    assert webcam_sr.parse_args([]).detect_every == 1


def test_the_overlay_says_what_the_factor_means(sr_bundle):
    with Translator(sr_bundle, backend="onnxruntime", threads=1) as t:
        assert LowResolution(t, 4).describe() == "x4: downsampled 4x"
        assert LowResolution(t, 1).describe() == "x1: as captured, not downsampled"  # not "real low-res"


def test_clips_write_under_outputs_by_default(tmp_path, monkeypatch, capsys):
    from samples import clips

    pytest.importorskip("matplotlib", reason="the photograph ships with matplotlib (the test extra)")
    monkeypatch.chdir(tmp_path)
    assert clips.main(["--photos", "grace_hopper", "--frames-per-photo", "2", "--size", "64x48"]) == 0
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["outputs/clip.mp4"]
    assert len(read_video(tmp_path / "outputs" / "clip.mp4")) == 2
