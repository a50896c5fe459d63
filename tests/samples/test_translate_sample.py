"""samples/translate.py: the labelled comparison, photographs, folders and videos, --align ffhq,
the outputs/ default and one-line errors; on the tiny bundles (S = 256 in, R = 16 out), with a
fake landmark back end where the faces' positions do not matter."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2", reason="the faces and the video path need OpenCV (the test extra installs it)")

from fakes.fake_landmarks import FakeLandmarks  # noqa: E402
from samples import translate  # noqa: E402
from samples.comparison import FOOTER, LABEL_BAND, comparison_panels, psnr  # noqa: E402
from samples.video_io import write_video  # noqa: E402
from sdk import Translator  # noqa: E402
from sdk.faces import backends  # noqa: E402

PANEL = 48


@pytest.fixture
def sr_bundle(make_tiny_bundle):
    return make_tiny_bundle("iterative", task="super_resolution", factor=4)


@pytest.fixture
def fake_dlib(monkeypatch):
    """``--landmarks dlib`` answered by a fake that finds one face in the middle of any frame."""
    fake = FakeLandmarks([(80, 60, 10, 1.0)])
    monkeypatch.setitem(backends._instances, "dlib", fake)
    return fake


def photo(path, size=(160, 120), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    image = np.stack([xx * 255 // size[0], yy * 255 // size[1], rng.integers(0, 255, xx.shape)], -1)
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path


def run(*args) -> int:
    return translate.main(["--panel-size", str(PANEL), *map(str, args)])


def test_the_default_is_a_labelled_comparison_of_the_shipped_photograph_under_outputs(sr_bundle, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="the photograph ships with matplotlib (the test extra)")
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert run("--bundle", sr_bundle) == 0
    out = cwd / "outputs" / "quickstart_comparison.png"
    image = np.asarray(Image.open(out))
    # low-res | bicubic | N = 1 | N = 3 (the tiny bundle's default) | original, 4 px apart
    assert image.shape == (LABEL_BAND + PANEL + FOOTER, 5 * PANEL + 4 * 4, 3)
    assert [p.name for p in cwd.iterdir()] == ["outputs"]  # nothing else written


def test_the_panels_are_what_they_say(sr_bundle):
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(crop).resize((16, 16), Image.LANCZOS))
    with Translator(sr_bundle, threads=1) as t:
        panels = comparison_panels(t, crop, reference, iterations=2, factor=8)
        assert [p.name for p in panels] == ["input 32 px (x8)", "bicubic", "SDK N = 1", "SDK N = 2", "original"]
        np.testing.assert_array_equal(panels[3].image, t(crop, iterations=2, factor=8))
    for panel in panels[:-1]:
        assert panel.image.shape == (16, 16, 3) and panel.psnr == pytest.approx(psnr(panel.image, reference))
    assert panels[-1].psnr is None and psnr(reference, reference) == float("inf")


def test_without_matplotlib_the_default_is_a_test_card_with_a_warning(sr_bundle, tmp_path, monkeypatch, caplog):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a)
    )
    with caplog.at_level(logging.WARNING):
        assert run("--bundle", sr_bundle, "--output", tmp_path / "c.png") == 0
    assert "synthetic test card" in caplog.text and (tmp_path / "c.png").is_file()


def test_a_photo_without_compare_writes_the_models_output(sr_bundle, tmp_path):
    out = tmp_path / "r.png"
    assert run("--bundle", sr_bundle, "--input", photo(tmp_path / "p.png"), "--no-compare", "--output", out) == 0
    assert np.asarray(Image.open(out)).shape == (16, 16, 3)


def test_align_ffhq_pastes_the_face_back_into_the_photograph(sr_bundle, tmp_path, fake_dlib):
    src = photo(tmp_path / "p.png")
    assert (
        run("--bundle", sr_bundle, "--input", src, "--align", "ffhq", "--no-compare", "--output", tmp_path / "o.png")
        == 0
    )
    before, after = np.asarray(Image.open(src)), np.asarray(Image.open(tmp_path / "o.png"))
    assert after.shape == before.shape and (after != before).any() and (after[:5] == before[:5]).all()
    assert run("--bundle", sr_bundle, "--input", src, "--align", "ffhq", "--output", tmp_path / "c.png") == 0
    # the comparison of the aligned face gains the pasted-back photograph (4:3) as a sixth panel
    assert np.asarray(Image.open(tmp_path / "c.png")).shape[1] == 5 * PANEL + 64 + 5 * 4


def test_a_manifest_that_expects_ffhq_input_is_aligned_by_default(make_tiny_bundle, tmp_path, fake_dlib):
    bundle = make_tiny_bundle(task="super_resolution", edit=lambda m: m["input"].update(alignment="ffhq"))
    assert run("--bundle", bundle, "--input", photo(tmp_path / "p.png"), "--output", tmp_path / "c.png") == 0
    assert fake_dlib.detect_calls


def test_a_folder_keeps_its_layout_and_reports_unreadable_files(sr_bundle, tmp_path, caplog):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    photo(tmp_path / "in" / "a.jpg")
    photo(tmp_path / "in" / "sub" / "b.png", seed=1)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert run("--bundle", sr_bundle, "--input", tmp_path / "in", "--output", tmp_path / "out") == 2
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a.png", "sub/b.png"]
    assert "broken.png" in caplog.text and "1 of 3 images could not be read" in caplog.text


def test_images_without_a_face_are_written_unchanged_and_counted(sr_bundle, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(backends._instances, "dlib", FakeLandmarks([]))
    (tmp_path / "in").mkdir()
    src = photo(tmp_path / "in" / "a.png")
    with caplog.at_level(logging.WARNING):
        assert (
            run("--bundle", sr_bundle, "--input", tmp_path / "in", "--align", "ffhq", "--output", tmp_path / "o") == 0
        )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "a.png")), np.asarray(Image.open(src)))
    assert "1 of 1 images had no face (written unchanged)" in caplog.text


def test_a_video_is_translated_frame_by_frame(sr_bundle, tmp_path, fake_dlib):
    frames = [np.asarray(Image.open(photo(tmp_path / f"{i}.png", seed=i))) for i in range(4)]
    write_video(cv2, tmp_path / "clip.mp4", frames, fps=10.0)
    for align, shape in (("none", (16, 16, 3)), ("ffhq", (120, 160, 3))):
        out = tmp_path / f"{align}.mp4"
        assert run("--bundle", sr_bundle, "--input", tmp_path / "clip.mp4", "--align", align, "--output", out) == 0
        cap = cv2.VideoCapture(str(out))
        shapes = []
        while (frame := cap.read())[0]:
            shapes.append(frame[1].shape)
        assert shapes == [shape] * 4
    assert fake_dlib.detect_calls == [0]  # the video's faces are tracked between detections


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "missing.png"], "no such file or folder"),
        (["--input", "{photo}", "--output", "{photo}"], "would write into the input"),
        (["--input", "{dir}", "--output", "{dir}/results"], "would write into the input"),
        (["--input", "{photo}", "--output", "{dir}/x.unknown"], "cannot write"),
        (["--input", "{dir}/empty.png"], "empty.png"),
    ],
)
def test_bad_paths_exit_2_with_one_line(sr_bundle, tmp_path, caplog, args, message):
    (tmp_path / "empty.png").write_bytes(b"")
    src = photo(tmp_path / "p.png")
    args = [a.format(photo=src, dir=tmp_path) for a in args]
    with caplog.at_level(logging.ERROR):
        assert run("--bundle", sr_bundle, *args) == 2
    assert message in caplog.text and len(caplog.records[-1].getMessage().splitlines()) == 1
    assert src.read_bytes() == photo(tmp_path / "q.png").read_bytes()  # the input is intact


def test_factor_on_an_inversion_bundle_is_refused(tiny_bundles, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert run("--bundle", tiny_bundles["iterative"], "--input", photo(tmp_path / "p.png"), "--factor", 4) == 2
    assert "--factor applies to super-resolution bundles" in caplog.text


def test_help_explains_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit) as e:
        translate.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--align" in text and "outputs/" in text and "folder" in text and "video" in text
