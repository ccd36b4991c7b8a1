"""Slide reading on the real Aperio SVS and on generated pyramidal TIFFs (with and without
microns per pixel, truncated), and the refusal of a PNG renamed `.svs`."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from histopath import slide_writer, slides

SVS = "wsi/cmu_small_region.svs"


def _gradient(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> tuple[pathlib.Path, np.ndarray]:
    image = _gradient(1300, 1100)
    path = tmp_path_factory.mktemp("slides") / "gradient.tif"
    slide_writer.write_pyramid(path, 1300, 1100, slide_writer.array_region(image), mpp=0.5, compression="lossless")
    return path, image


def test_real_svs_levels_and_microns(shared_data):
    with slides.open_slide(shared_data / SVS) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == (0.499, 0.499) and slide.mpp_source == "file"
        assert slide.vendor == "aperio" and slide.slide_id == "cmu_small_region"
        region = slide.read_region(1000, 1200, 0, 64, 32)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        assert region.std() > 5  # tissue, not blank
        thumb = slide.thumbnail(300)
        assert thumb.shape == (300, round(2220 * 300 / 2967), 3)


def test_generated_pyramid_levels_pixels_and_thumbnail(pyramid):
    path, image = pyramid
    with slides.open_slide(path) as slide:
        assert [(lv.width, lv.height) for lv in slide.levels] == [(1300, 1100), (650, 550)]
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0]
        assert slide.mpp == pytest.approx((0.5, 0.5)) and slide.level_mpp(1) == pytest.approx(1.0)
        np.testing.assert_array_equal(slide.read_region(700, 300, 0, 40, 20), image[300:320, 700:740])
        assert slide.best_level(1.5) == 0 and slide.best_level(2.0) == 1 and slide.best_level(8) == 1
        expected_level1 = image[:1100, :1300].reshape(550, 2, 650, 2, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(slide.read_region(200, 100, 1, 8, 8), expected_level1[50:58, 100:108], atol=0.6)
        thumb = slide.thumbnail(130)
        assert thumb.shape == (110, 130, 3)


def test_thumbnail_reads_in_bands(pyramid, monkeypatch):
    path, image = pyramid
    monkeypatch.setattr(slides, "THUMBNAIL_BAND_PIXELS", 650 * 7)  # 7 rows of level 1 per band
    calls = []
    with slides.open_slide(path) as slide:
        original = slide.read_region
        monkeypatch.setattr(slide, "read_region", lambda *a: calls.append(a) or original(*a))
        banded = slide.thumbnail(325)
    assert len(calls) == -(-550 // 7) and all(c[2] == 1 and c[4] <= 7 for c in calls)
    whole = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(
        slide_writer.array_region(image)(2, 0, 0, 650, 550)).resize((325, 275), 4))
    assert banded.shape == (275, 325, 3)
    assert np.abs(banded.astype(int) - whole.astype(int)).mean() < 3


def test_slide_without_mpp_is_refused_unless_given(tmp_path):
    path = tmp_path / "no-scale.tif"
    slide_writer.write_pyramid(path, 600, 500, slide_writer.array_region(_gradient(600, 500)), mpp=None)
    with pytest.raises(slides.SlideError, match=r"no-scale\.tif: the file does not say its microns per pixel.*--mpp"):
        slides.open_slide(path)
    with slides.open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.mpp_source == "caller"


def test_caller_mpp_contradicting_the_file_is_refused(pyramid):
    with pytest.raises(slides.SlideError, match="says 0.5 microns per pixel, the caller 2"):
        slides.open_slide(pyramid[0], mpp=2.0)


def test_truncated_files_are_refused_by_name(shared_data, pyramid, tmp_path):
    for source in (shared_data / SVS, pyramid[0]):
        data = source.read_bytes()
        cut = tmp_path / f"cut-{source.name}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(slides.SlideError) as caught:
            slides.open_slide(cut)
        assert str(cut) in str(caught.value)
        assert "truncated" in str(caught.value)


def test_png_renamed_svs_and_missing_file(shared_data, tmp_path):
    png = next((shared_data / "idc" / "8916" / "0").glob("*.png"))
    fake = tmp_path / "slide.svs"
    shutil.copy(png, fake)
    with pytest.raises(slides.SlideError, match=r"slide\.svs: it is a PNG image, not a whole-slide image"):
        slides.open_slide(fake)
    with pytest.raises(slides.SlideError, match="missing.svs: no such file"):
        slides.open_slide(tmp_path / "missing.svs")
    empty = tmp_path / "empty.ndpi"
    empty.write_bytes(b"")
    with pytest.raises(slides.SlideError, match="empty.ndpi: the file is empty"):
        slides.open_slide(empty)


def test_uri_is_read_through_tiffslide(pyramid):
    import fsspec

    path, image = pyramid
    with fsspec.open("memory://slides/gradient.tif", "wb") as stream:
        stream.write(path.read_bytes())
    with slides.open_slide("memory://slides/gradient.tif") as slide:
        assert slide.backend == "tiffslide" and slide.mpp == pytest.approx((0.5, 0.5))
        assert slide.dimensions == (1300, 1100)
        np.testing.assert_array_equal(slide.read_region(10, 20, 0, 30, 10), image[20:30, 10:40])
    with pytest.raises(slides.SlideError, match="memory://slides/none.svs"):
        slides.open_slide("memory://slides/none.svs")


def test_uri_without_fsspec_is_read_through_tensorflow(shared_data):
    import tensorflow as tf

    uri = "ram://slides/cmu_small_region.svs"
    with tf.io.gfile.GFile(uri, "wb") as stream:  # TensorFlow's in-memory file system, as gs:// is reached
        stream.write((shared_data / SVS).read_bytes())
    with slides.open_slide(uri) as slide, slides.open_slide(shared_data / SVS) as local:
        assert slide.backend == "tiffslide" and slide.mpp == (0.499, 0.499) and slide.dimensions == (2220, 2967)
        np.testing.assert_array_equal(slide.read_region(900, 1500, 0, 32, 16), local.read_region(900, 1500, 0, 32, 16))
    with pytest.raises(slides.SlideError, match="ram://slides/none.svs: no such file"):
        slides.open_slide("ram://slides/none.svs")


def test_uri_of_an_openslide_only_format_is_copied_locally_in_chunks(pyramid, monkeypatch):
    import tensorflow as tf

    # OpenSlide finds the format from the content: a tiled TIFF named .dcm stands in for a
    # one-file DICOM slide, to exercise the copy (tiffslide is never asked for a .dcm URI).
    path, image = pyramid
    uri = "ram://copied/gradient.dcm"
    with tf.io.gfile.GFile(uri, "wb") as stream:
        stream.write(path.read_bytes())
    reads = []
    original = slides._uri_stream

    def counting_stream(where):
        stream = original(where)
        read = stream.read
        stream.read = lambda size=-1: reads.append(size) or read(size)
        return stream

    monkeypatch.setattr(slides, "COPY_CHUNK_BYTES", 64 * 1024)
    monkeypatch.setattr(slides, "_uri_stream", counting_stream)
    with slides.open_slide(uri) as slide:
        copy = slide._stream.name
        assert slide.backend == "openslide" and slide.path == uri and slide.mpp == pytest.approx((0.5, 0.5))
        assert pathlib.Path(copy).read_bytes() == path.read_bytes()
        np.testing.assert_array_equal(slide.read_region(10, 20, 0, 30, 10), image[20:30, 10:40])
    assert not pathlib.Path(copy).exists()  # the copy goes with the slide
    assert set(reads) == {64 * 1024} and len(reads) == -(-path.stat().st_size // (64 * 1024)) + 1  # + the empty read
    with pytest.raises(slides.SlideError, match="ram://copied/none.dcm: no such file"):
        slides.open_slide("ram://copied/none.dcm")
    with pytest.raises(slides.SlideError, match="ram://copied/s.mrxs: a multi-file slide format"):
        slides.open_slide("ram://copied/s.mrxs")


def test_looks_like_slide(pyramid, tmp_path):
    from PIL import Image

    flat = tmp_path / "photo.tif"
    Image.new("RGB", (20, 10)).save(flat)
    assert slides.looks_like_slide(str(pyramid[0])) and slides.looks_like_slide("a/b.SVS")
    assert not slides.looks_like_slide(str(flat)) and not slides.looks_like_slide("x.png")
