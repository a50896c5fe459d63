"""paste_back: the inverse warp of the translated face through a feathered elliptical mask. The
faces come from face_from_landmarks on landmarks found once (no detector per test)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import face_photos as fp
from sdk.errors import InputError
from sdk.faces import Face, Landmarks, face_from_landmarks, paste_back
from sdk.faces.paste import crop_mask

# iBUG-68 anchors (eye centres, mouth corners) of the photographs, as dlib finds them (rounded):
# fixed here so that these tests need no landmark back end
ANCHORS = {
    ("grace_hopper", "original"): [[223.7, 192.3], [305.3, 189.2], [233.0, 281.0], [300.0, 277.0]],
    ("grace_hopper", "rotated-25"): [[372.7, 268.5], [451.5, 301.0], [347.0, 349.0], [418.0, 377.0]],
    ("astronaut_face", "original"): [[123.3, 101.5], [166.5, 103.7], [121.0, 139.0], [165.0, 141.0]],
}


def face_of(name, variant, size=256, image=None) -> tuple[np.ndarray, Face]:
    image = fp.photo(name, variant) if image is None else image
    anchors = np.array(ANCHORS[name, variant])
    return image, face_from_landmarks(image, Landmarks(anchors, anchors, 1.0, "test"), size)


def frame_mask(face: Face, shape, feather=0.25) -> np.ndarray:
    """The blending mask in frame pixels (the crop's mask warped by face.matrix)."""
    return cv2.warpAffine(crop_mask(face.size, feather), face.matrix[:2], (shape[1], shape[0]), flags=cv2.INTER_LINEAR)


@pytest.mark.parametrize("case", sorted(ANCHORS), ids=lambda c: "-".join(c))
def test_identity_changes_nothing_outside_the_feathered_edge(case):
    image, face = face_of(*case)
    out = paste_back(image, face, face.image)
    assert out.shape == image.shape and out.dtype == np.uint8 and out is not image
    mask = frame_mask(face, image.shape)
    diff = np.abs(out.astype(int) - image).max(axis=2)
    assert (mask == 0).mean() > 0.3 and (mask >= 0.999).sum() > 1000
    assert diff[mask <= 0.0].max() <= 2
    # inside, pasting the crop back puts every pixel where it came from: on a smooth frame (the
    # photograph blurred, so the 2 x bilinear resampling loses little) the difference stays small,
    # but for pSp's own blur of the frame's edges where the quad leaves it (its pad step)
    smooth = cv2.GaussianBlur(image, (0, 0), 2.0)
    _, face_smooth = face_of(*case, image=smooth)
    again = np.abs(paste_back(smooth, face_smooth, face_smooth.image).astype(int) - smooth).max(axis=2)
    edge = int(0.1 * np.hypot(*(face.quad[3] - face.quad[0])))
    assert again[edge:-edge, edge:-edge].max() <= 10 and again[mask > 0].mean() <= 1.5


def test_a_misplaced_paste_is_caught_by_the_same_measure():
    """The measure above fails for a crop pasted one pixel off (so it can fail)."""
    image, face = face_of(
        "grace_hopper", "original", image=cv2.GaussianBlur(fp.photo("grace_hopper", "original"), (0, 0), 2.0)
    )
    shifted = Face(
        face.image,
        face.matrix + [[0, 0, 1.0], [0, 0, 0.5], [0, 0, 0]],
        face.landmarks,
        face.score,
        face.quad,
        face.source,
    )
    diff = np.abs(paste_back(image, shifted, face.image).astype(int) - image).max(axis=2)
    assert diff[frame_mask(face, image.shape) > 0].mean() > 1.5


def test_a_1024_px_output_pastes_like_the_crop():
    image, face = face_of("grace_hopper", "original")
    large = cv2.resize(face.image, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    out_large = paste_back(image, face, large).astype(int)
    out_crop = paste_back(image, face, face.image).astype(int)
    mask = frame_mask(face, image.shape)
    assert np.abs(out_large - out_crop).max(axis=2)[mask > 0].mean() <= 2.5
    assert np.array_equal(out_large[mask == 0], image[mask == 0])


def test_the_mask_has_no_seam():
    """A white face on a black frame: the alpha the frame receives rises smoothly from 0 at the
    mask's edge to 1 inside (no step between neighbouring pixels above what the feather allows)."""
    image, face = face_of("grace_hopper", "original")
    black = np.zeros_like(image)
    out = paste_back(black, face, np.full_like(face.image, 255)).astype(int)[..., 0]
    centre = np.rint(face.quad.mean(axis=0)).astype(int)
    assert out[centre[1], centre[0]] == 255 and out[0, 0] == 0
    steps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    band_px = 0.25 * face.size / 2 * np.hypot(*face.matrix[:2, 0])  # the feather's width in frame pixels
    assert steps <= 1.5 * 255 / band_px + 2  # smoothstep's steepest slope is 1.5 / width


def test_a_face_partly_outside_the_frame():
    image, face = face_of("astronaut_face", "original")
    cut = np.ascontiguousarray(image[60:, 150:])
    moved = Face(
        face.image,
        np.array([[1, 0, -150], [0, 1, -60], [0, 0, 1.0]]) @ face.matrix,
        face.landmarks,
        1.0,
        face.quad,
        face.source,
    )
    out = paste_back(cut, moved, np.full_like(face.image, 255))
    assert out.shape == cut.shape and out[0, 0].max() == 255  # the face's centre region reaches the corner
    gone = Face(
        face.image,
        np.array([[1, 0, 5000], [0, 1, 0], [0, 0, 1.0]]) @ face.matrix,
        face.landmarks,
        1.0,
        face.quad,
        face.source,
    )
    np.testing.assert_array_equal(paste_back(image, gone, face.image), image)


def test_bad_arguments_are_input_errors():
    image, face = face_of("astronaut_face", "original")
    with pytest.raises(InputError, match="square"):
        paste_back(image, face, face.image[:, :200])
    with pytest.raises(InputError, match="uint8"):
        paste_back(image, face, face.image.astype(np.float32))
    with pytest.raises(InputError, match="frame must be HxWx3"):
        paste_back(image[..., 0], face, face.image)
    with pytest.raises(InputError, match="sdk.faces.Face"):
        paste_back(image, "face", face.image)
    for feather in (0.0, 2.0, float("nan"), "wide"):
        with pytest.raises(InputError, match="feather"):
            paste_back(image, face, face.image, feather=feather)


@pytest.mark.parametrize("shift, scale", [(5000.0, 1.0), (-700.0, 1.0), (0.0, 1e5)])
def test_landmarks_off_the_frame_are_an_input_error(shift, scale):
    image = fp.photo("astronaut_face", "original")
    anchors = (np.array(ANCHORS["astronaut_face", "original"]) - 150) * scale + 150 + shift
    with pytest.raises(InputError, match="does not overlap"):
        face_from_landmarks(image, Landmarks(anchors, anchors, 1.0, "test"))
