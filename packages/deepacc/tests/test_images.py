"""Reading images as stored: 16-bit TIFF/PNG refused unless --rescale-16bit (then divided by their own maximum and
logged), translucent alpha refused, opaque alpha dropped, and the up-front scan listing every bad image at once."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from deepacc.data import DataError, Sample
from deepacc.images import read_image, read_image_and_depth, rescale_summary, scan_images
from PIL import Image

#: 16-bit grey ramp whose maximum (40950) is far from 65535: the documented rule divides by the image's own maximum.
A16 = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 10


def _expected(a: np.ndarray) -> np.ndarray:
    """The documented rule: ``floor(a / max(a) * 255)``."""
    return np.floor(a.astype(np.float64) / a.max() * 255.0).astype(np.uint8)


def _save16(path: Path, a: np.ndarray = A16) -> Path:
    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_refused_naming_the_file_and_the_fix(tmp_path: Path, suffix: str) -> None:
    p = _save16(tmp_path / f"meta{suffix}")
    with pytest.raises(DataError) as err:
        read_image(p)
    msg = str(err.value)
    assert str(p) in msg and "16-bit (uint16)" in msg and "convert" in msg and "--rescale-16bit" in msg


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_with_flag_is_rescaled_by_its_own_maximum(tmp_path: Path, suffix: str) -> None:
    p = _save16(tmp_path / f"meta{suffix}")
    img, stored = read_image_and_depth(p, rescale_16bit=True)
    assert stored == "uint16" and img.shape == (64, 64, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], _expected(A16))
    assert img.max() == 255  # 40950 -> 255 (a fixed / 257 would give 159)


def test_48bit_rgb_tiff_is_not_read_as_8bit(tmp_path: Path) -> None:
    # PIL decodes a 16-bit-per-channel RGB TIFF as 8-bit RGB without a word: the reader must notice
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 3000, (20, 24, 3)).astype(np.uint16)
    rgb[..., 0] += 30000  # red brightest: the channel order shows in the result
    p = tmp_path / "rgb16.tif"
    assert cv2.imwrite(str(p), rgb[..., ::-1])  # OpenCV writes BGR
    with pytest.raises(DataError, match=r"rgb16\.tif.*16-bit \(uint16\)"):
        read_image(p)
    np.testing.assert_array_equal(read_image(p, rescale_16bit=True), _expected(rgb))


def test_float_images_refused_even_with_the_flag(tmp_path: Path) -> None:
    p = tmp_path / "f.tif"
    Image.fromarray(np.ones((8, 9), np.float32)).save(p)
    for flag in (False, True):
        with pytest.raises(DataError, match=r"f\.tif is 32-bit \(float32\) floating point; convert"):
            read_image(p, rescale_16bit=flag)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_translucent_alpha_refused_opaque_alpha_dropped(tmp_path: Path, suffix: str) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    rgba = np.dstack([rgb, np.full((8, 9), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / f"opaque{suffix}")
    np.testing.assert_array_equal(read_image(tmp_path / f"opaque{suffix}"), rgb)  # alpha dropped, RGB order kept
    rgba[3, 4, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / f"glass{suffix}")
    for flag in (False, True):
        with pytest.raises(
            DataError, match=rf"glass\{suffix} has a translucent alpha.*1 of 72.*save images .* without alpha"
        ):
            read_image(tmp_path / f"glass{suffix}", rescale_16bit=flag)


def test_grey_with_alpha(tmp_path: Path) -> None:
    la = np.dstack([np.full((8, 9), 77, np.uint8), np.full((8, 9), 255, np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 77).all()
    la[0, 0, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la2.png")
    with pytest.raises(DataError, match="translucent alpha"):
        read_image(tmp_path / "la2.png")


def _sample(path: Path) -> Sample:
    return Sample(path, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 64, 64)


def test_scan_reports_every_bad_image_at_once_and_logs_the_rescaled(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray((A16 // 257).astype(np.uint8)).save(good)
    png16, tif16 = _save16(tmp_path / "a16.png"), _save16(tmp_path / "b16.tif")
    glass = tmp_path / "glass.png"
    Image.fromarray(np.dstack([np.zeros((64, 64, 3), np.uint8), np.full((64, 64), 200, np.uint8)]), "RGBA").save(glass)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:60])
    samples = [_sample(p) for p in (good, png16, tif16, glass, broken)]
    with pytest.raises(DataError) as err:
        scan_images(samples)
    msg = str(err.value)
    assert msg.startswith("4 of 5 images cannot be used")
    assert f"{png16}: is 16-bit (uint16), not 8-bit" in msg and f"{tif16}: is 16-bit (uint16), not 8-bit" in msg
    assert f"{glass}: has a translucent alpha" in msg and f"{broken}: unreadable" in msg and str(good) not in msg
    assert "--rescale-16bit" in msg and "without alpha" in msg and "replace or remove the other images" in msg
    # with the flag the 16-bit images pass; the others are still listed together
    with pytest.raises(DataError) as err:
        scan_images(samples, rescale_16bit=True)
    assert str(err.value).startswith("2 of 5 images cannot be used") and str(png16) not in str(err.value)
    lines: list[str] = []
    rescaled = scan_images([samples[0], samples[1], samples[2]], rescale_16bit=True, log=lines.append)
    assert rescaled == [(png16, "uint16"), (tif16, "uint16")]
    assert lines == [f"--rescale-16bit: rescaled 2 of 3 images (uint16) to 0-255, each by its own maximum: {png16}, "
                     f"{tif16}"]  # fmt: skip
    lines.clear()
    assert scan_images([samples[0]], rescale_16bit=True, log=lines.append) == [] and lines == []  # 8-bit: no log


def test_rescale_summary_is_one_line_for_many_images() -> None:
    many = [(Path(f"img{i}.tif"), "uint16") for i in range(40)]
    line = rescale_summary(many, 50)
    assert "\n" not in line and "rescaled 40 of 50 images" in line and "img4.tif" in line
    assert "img5.tif" not in line and line.endswith("(+35 more)")


def test_real_8bit_data_loads_without_the_flag() -> None:
    from medshared.testing import shared_data_dir

    root = shared_data_dir()
    if root is None or not (root / "chromosome" / "cells").is_dir():
        pytest.skip("../shared/data/chromosome/cells absent")
    paths = sorted((root / "chromosome" / "cells").rglob("*.bmp"))[:200]
    assert paths
    for p in [*paths, root / "chromosome" / "A.tif"]:
        img, stored = read_image_and_depth(p)
        assert stored == "uint8" and img.dtype == np.uint8 and img.ndim == 3


def test_read_crop_reads_grey_as_stored_and_refuses_colour(tmp_path):
    from deepacc.samples import DataError
    from deepacc.synthetic import read_crop
    from PIL import Image

    grey = (np.arange(35, dtype=np.uint8).reshape(5, 7) * 7).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "1_01a.bmp")
    assert np.array_equal(read_crop(tmp_path / "1_01a.bmp"), grey)
    Image.fromarray(np.repeat(grey[..., None], 3, 2)).save(tmp_path / "1_01b.bmp")  # grey saved as RGB: accepted
    assert np.array_equal(read_crop(tmp_path / "1_01b.bmp"), grey)
    colour = np.repeat(grey[..., None], 3, 2)
    colour[2, 3, 0] += 1
    Image.fromarray(colour).save(tmp_path / "1_01c.bmp")
    with pytest.raises(DataError, match="1_01c.bmp is a colour image"):
        read_crop(tmp_path / "1_01c.bmp")
    rgba = np.dstack([np.repeat(grey[..., None], 3, 2), np.full((5, 7), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "1_01d.png")
    assert np.array_equal(read_crop(tmp_path / "1_01d.png"), grey)  # opaque alpha dropped
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "1_01e.png")
    with pytest.raises(DataError, match="1_01e.png has a translucent alpha"):
        read_crop(tmp_path / "1_01e.png")
    Image.fromarray(np.full((4, 4), 3000, np.uint16)).save(tmp_path / "1_01f.png")
    with pytest.raises(DataError, match="1_01f.png has image mode"):
        read_crop(tmp_path / "1_01f.png")
