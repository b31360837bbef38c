"""The nodule crop: a square around the key frame's box, the same for every frame, aspect ratio kept, zero padding
at the border; and the whole-frame ablation that squashes the frame."""

from __future__ import annotations

import numpy as np
import pytest
from kfgnet.config import ClipConfig
from kfgnet.crop import crop_square, square_around_box
from kfgnet.data import KeyFrame, VideoRecord, cut_clip, load_clip, record_keyframe


def _ellipse_video(
    t: int = 8, h: int = 458, w: int = 640, cx: float = 400, cy: float = 200, rx: float = 30, ry: float = 45
) -> np.ndarray:
    """A 640 x 458 video with a bright taller-than-wide ellipse (height / width 1.5); frame t's background is t."""
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    v = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        v[i] = i
        v[i][inside] = 255
    return v


def _blob_ratio_and_centre(img: np.ndarray) -> tuple[float, float, float]:
    ys, xs = np.nonzero(img[..., 0] > 128)
    return (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1), xs.mean(), ys.mean()


def test_square_is_centred_on_the_box_with_margin() -> None:
    x0, y0, side = square_around_box([100, 50, 160, 140], margin=0.25)  # 60 x 90 box, centre (130, 95)
    assert side == 135  # 90 * 1.5
    assert x0 + side / 2 == pytest.approx(130, abs=0.5) and y0 + side / 2 == pytest.approx(95, abs=0.5)
    with pytest.raises(ValueError, match="empty or inverted"):
        square_around_box([10, 10, 5, 20], 0.25)


def test_nodule_crop_keeps_aspect_and_centres_the_nodule() -> None:
    v = _ellipse_video()
    box = (370.0, 155.0, 431.0, 246.0)  # the ellipse's box
    clip = cut_clip(v, np.arange(8), 112, box=box, margin=0.25)
    assert clip.shape == (8, 112, 112, 3)
    ratio, cx, cy = _blob_ratio_and_centre(clip[0])
    assert ratio == pytest.approx(1.5, rel=0.06)  # taller-than-wide kept
    assert cx == pytest.approx(55.5, abs=1.5) and cy == pytest.approx(55.5, abs=1.5)
    # the nodule fills about 2/3 of the crop (margin 0.25 of the longer side on each side)
    ys, _ = np.nonzero(clip[0][..., 0] > 128)
    assert (ys.max() - ys.min() + 1) / 112 == pytest.approx(2 / 3, abs=0.04)
    # the whole-frame ablation squashes 640 x 458 to a square: the ratio changes by 640 / 458 = 1.4x
    frame = cut_clip(v, np.arange(8), 112, box=None)
    assert _blob_ratio_and_centre(frame[0])[0] == pytest.approx(1.5 * 640 / 458, rel=0.1)


def test_crop_is_fixed_over_the_clip_and_padded_at_the_border() -> None:
    v = _ellipse_video(cx=20, cy=20, rx=15, ry=15)  # nodule at the top-left corner
    square = square_around_box((5, 5, 36, 36), 0.25)
    assert square[0] < 0 and square[1] < 0
    c = crop_square(v, square)
    off = -square[0]
    assert c.shape[1] == c.shape[2] == square[2]
    assert (c[:, :off, :] == 0).all() and (c[:, :, :off] == 0).all()  # zero padding outside the frame
    for t in range(8):  # the same square in every frame: frame t's background value t sits at the same place
        assert c[t, off + 40, off + 40, 0] == t
        np.testing.assert_array_equal(c[t, off:, off:], v[t, : square[2] - off, : square[2] - off])


def test_record_keyframe_uses_the_nearest_annotated_box(tmp_path) -> None:
    r = VideoRecord(tmp_path / "v.avi", "p", 1, 10, {8: [1, 2, 30, 40], 20: [5, 5, 9, 9]})
    k = record_keyframe(r, ClipConfig())
    assert k.frame == 10 and k.box == (1.0, 2.0, 30.0, 40.0) and k.source == "annotation"
    with pytest.raises(ValueError, match="no nodule box"):
        record_keyframe(VideoRecord(tmp_path / "v.avi", "p", 1, 10), ClipConfig())
    assert record_keyframe(VideoRecord(tmp_path / "v.avi", "p", 1, 10), ClipConfig(crop="frame")).box is None


def test_load_clip_centres_on_the_given_key_frame(tmp_path) -> None:
    from kfgnet.config import MotionConfig

    v = _ellipse_video(t=40)
    r = VideoRecord(tmp_path / "v.avi", "p", 1, 5)
    clip = ClipConfig(num_frames=16, size=32)
    c, vm, padded = load_clip(
        r, KeyFrame(25, (370.0, 155.0, 431.0, 246.0), "stage1"), clip, 4, MotionConfig(), True, frames=v
    )
    assert not padded and vm.shape == (4,)
    assert c[8, 0, 0, 0] == 25  # key frame at T // 2; the corner shows frame 25's background
    with pytest.raises(ValueError, match="no nodule box"):
        load_clip(r, KeyFrame(25, None, "stage1"), clip, 4, MotionConfig(), True, frames=v)
    # the fallback (no detection) takes the whole frame
    c2, _, _ = load_clip(r, KeyFrame(19, None, "fallback_middle"), clip, 4, MotionConfig(), True, frames=v)
    assert c2.shape == (16, 32, 32, 3) and c2[8, 0, 0, 0] == 19
