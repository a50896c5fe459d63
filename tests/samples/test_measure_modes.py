"""samples/measure_modes.py on a tiny super-resolution bundle: the modes, the scores, the report.

Photographs are synthetic PNGs in tmp_path (the script takes image files as well as the
photographs scikit-image and matplotlib ship), so the test needs neither package.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="the samples need OpenCV (the test extra installs it)")

from samples import measure_modes as mm  # noqa: E402
from samples.clips import photo_clip  # noqa: E402
from samples.sr_pipeline import LowResolution, result_image  # noqa: E402
from sdk import Translator  # noqa: E402


def synthetic_photo(seed: int, size: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, 0.5 + 0.3 * np.sin(6 * xx * yy)], axis=-1)
    for _ in range(5):
        cx, cy, r = rng.random(3) * [1, 1, 0.2]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random(3)
    return (img * 255).astype(np.uint8)


@pytest.fixture
def photo_files(tmp_path):
    from PIL import Image

    paths = []
    for seed in (1, 2):
        path = tmp_path / f"photo{seed}.png"
        Image.fromarray(synthetic_photo(seed)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def sr_translator(make_tiny_bundle):
    with Translator(
        make_tiny_bundle("iterative", task="super_resolution", factor=4), backend="onnxruntime", threads=1
    ) as t:
        yield t


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert mm.psnr(a, a) == 100.0
    b = a.copy()
    b[0, 0, 0] = 255  # mse = 255^2 / 48
    assert mm.psnr(a, b) == pytest.approx(10 * np.log10(48))


def test_modes_on_a_smooth_clip(sr_translator):
    t = sr_translator
    low_res = LowResolution(t)
    keyframes = [cv2.resize(synthetic_photo(s), (256, 256), interpolation=cv2.INTER_AREA) for s in (1, 2)]
    clip = mm.make_smooth_clip(cv2, t, low_res, keyframes, 6)
    assert len(clip.truth) == 6 and clip.truth[0].shape == (16, 16, 3) and clip.crops[0].shape == (256, 256, 3)
    results = {r.mode: r for r in mm.run_modes(t, low_res, clip, cv2, [0.01], first_iterations=4, progress=False)}
    assert list(results) == [
        "bicubic",
        *[f"cold N={n}" for n in range(1, 6)],
        "warm N=1",
        "warm N=2",
        "warm N=3",
        "warm N=1 /4",
        "warm N=2 /4",
        "exit 0.01",
        "warm+exit 0.01 /4",
    ]
    assert all(len(r.psnr) == 6 for r in results.values())
    # a cold mode scored from the 5-step run is the loop run with that many steps
    x = low_res(clip.crops[3]).x[None]
    assert results["cold N=2"].psnr[3] == pytest.approx(
        mm.psnr(result_image(t, t.infer(x, iterations=2).images), clip.truth[3])
    )
    assert results["warm N=2"].iterations == [4, 2, 2, 2, 2, 2]  # the shot's first frame: --first-iterations
    assert results["warm N=2 /4"].iterations == [4, 2, 2, 2, 4, 2]  # every 4th frame from the average
    assert all(1 <= n <= mm.EXIT_CAP for n in results["exit 0.01"].iterations)


def test_shot_cuts_restart_a_warm_start(sr_translator, photo_files):
    t = sr_translator
    frames, starts = photo_clip(cv2, photo_files, 3, (256, 256))
    assert len(frames) == 6 and starts == [0, 3]
    clip = mm.make_photo_clip(cv2, t, photo_files, 3)
    results = {r.mode: r for r in mm.run_modes(t, LowResolution(t), clip, cv2, [0.01], 5, progress=False)}
    assert results["warm N=1"].iterations == [5, 1, 1, 5, 1, 1]


def test_main_writes_the_report(make_tiny_bundle, photo_files, tmp_path, capsys):
    bundle = make_tiny_bundle("iterative", task="super_resolution", factor=4)
    out = tmp_path / "results"
    assert (
        mm.main(
            [
                "--bundle",
                str(bundle),
                "--photos",
                ",".join(photo_files),
                "--frames",
                "4",
                "--frames-per-photo",
                "2",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "results.json").read_text())
    assert set(report["clips"]) == {"smooth", "photos"}
    assert report["clips"]["photos"]["frames"] == 4 and report["clips"]["smooth"]["frames"] == 4
    modes = [s["mode"] for s in report["clips"]["smooth"]["summary"]]
    assert modes[:6] == ["bicubic"] + [f"cold N={n}" for n in range(1, 6)]
    assert any(m.startswith("exit ") for m in modes) and any(m.startswith("warm+exit ") for m in modes)
    table = (out / "results.md").read_text()
    assert "| cold N=5 |" in table and "**photos**" in table and table in capsys.readouterr().out
    if (out / "modes.png").exists():
        assert (out / "modes.png").stat().st_size < 200_000
    else:
        pytest.importorskip("matplotlib")  # no plot only without matplotlib
        pytest.fail("matplotlib is installed but no plot was written")


def test_an_inversion_bundle_is_refused(tiny_bundles, tmp_path, caplog):
    assert mm.main(["--bundle", str(tiny_bundles["iterative"]), "--out", str(tmp_path)]) == 2
    assert "super-resolution bundle" in caplog.text
