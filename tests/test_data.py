"""vit_jax_va.data: IDX files (plain, gzip, corrupt), image folders and file lists, and every kind
of bad image file: converted to the model's mode, or skipped with a message naming the file."""

from __future__ import annotations

import gzip
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from vit_jax_va import ViTConfig, preprocess
from vit_jax_va.data import (FASHION_MNIST_CLASSES, DataError, ImageDataset, ImageFileError,
                             SkippedImageWarning, load_fashion_mnist, load_image_files,
                             load_image_folder, load_mnist, read_idx, read_image, to_8bit)

# 8 x 8 inputs, no resize (crop_fraction 1, same size), mean 0 / std 1: preprocess = pixels / 255.
RGB = ViTConfig(image_size=8, patch_size=4, in_channels=3, width=8, depth=1, num_heads=2,
                num_classes=2, mean=(0, 0, 0), std=(1, 1, 1), crop_fraction=1.0,
                interpolation="bilinear")
GREY = RGB.replace(in_channels=1, mean=(0,), std=(1,))


def write_idx(path, array, *, compress=False):
    """Write `array` as IDX, built here byte by byte (independently of the reader)."""
    codes = {np.dtype("u1"): 0x08, np.dtype("i2"): 0x0B, np.dtype("f4"): 0x0D}
    big = array.astype(array.dtype.newbyteorder(">"))
    data = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape) + big.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _rgb(seed=0, size=8):
    """A random RGB uint8 image `[size, size, 3]`."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# IDX ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype", ["u1", "i2", "f4"])
def test_idx_round_trip(tmp_path, compress, dtype):
    array = (np.random.default_rng(1).standard_normal((5, 4, 3)) * 100).astype(dtype)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, compress=compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (5, 4, 3)
    np.testing.assert_array_equal(back, array)


def _valid_idx_bytes():
    return bytes([0, 0, 8, 2]) + struct.pack(">2I", 3, 4) + bytes(range(12))


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x00\x08\x02" + _valid_idx_bytes()[4:], "not an IDX file"),  # wrong magic
    (b"\x00\x00\x07\x02" + _valid_idx_bytes()[4:], "not an IDX file"),  # unknown type code
    (b"\x00\x00", "too short"),
    (_valid_idx_bytes()[:9], "truncated header"),
    (_valid_idx_bytes()[:-1], "truncated"),
    (_valid_idx_bytes() + b"\x00", "trailing bytes"),
    (gzip.compress(_valid_idx_bytes())[:-6], "corrupt or truncated gzip"),
], ids=["magic", "type-code", "short", "header", "data", "trailing", "gzip"])
def test_idx_errors_name_the_file(tmp_path, raw, message):
    path = tmp_path / "broken-idx2-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + message):
        read_idx(path)


def _mnist_dir(tmp_path, n=6, compress=True, labels=None):
    images = np.random.default_rng(2).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10 if labels is None else labels
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_load_fashion_mnist_from_idx_files(tmp_path, compress):
    images, labels = _mnist_dir(tmp_path, compress=compress)
    data = load_fashion_mnist(tmp_path, "test")
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels.astype(np.int64))
    assert data.class_names == FASHION_MNIST_CLASSES and data.class_names[0] == "T-shirt/top"
    assert data.ids[:2] == ("test/0", "test/1")
    manifest = data.manifest()
    assert manifest["source"] == "fashion-mnist" and manifest["split"] == "test"
    assert manifest["files"]["images"]["name"].startswith("t10k-images-idx3-ubyte")
    assert len(manifest["files"]["labels"]["sha256"]) == 64
    # In-memory images come out exactly as preprocess makes them.
    batch = next(data.batches(GREY.replace(image_size=28, patch_size=4), batch_size=4))
    np.testing.assert_array_equal(batch.images, images[:4, :, :, None].astype(np.float32) / 255)
    np.testing.assert_array_equal(batch.labels, labels[:4])


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no fashion-mnist images file.*apt-get install"):
        load_fashion_mnist(tmp_path, "train")
    _mnist_dir(tmp_path, n=6)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), compress=True)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has 5 labels for the 6 images"):
        load_mnist(tmp_path, "test")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(6, 10, np.uint8), compress=True)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: labels span 10..10"):
        load_mnist(tmp_path, "test")


# Reading and converting single files -------------------------------------------------------

def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535], [1000, 40000, 128, 65280]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # 16-bit greyscale PNG
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
    image = read_image(path)
    assert image.mode == "L"
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert np.asarray(image)[0, 2] == 128  # PIL's convert('L') would clip this to 255


def test_transparent_images_are_composited_over_the_background():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque
    rgba[0, 1] = (200, 100, 50, 0)    # fully transparent
    rgba[1, 0] = (200, 100, 50, 128)  # half
    black = np.asarray(to_8bit(Image.fromarray(rgba, "RGBA")))
    white = np.asarray(to_8bit(Image.fromarray(rgba, "RGBA"), background=255))
    np.testing.assert_array_equal(black[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(black[0, 1], (0, 0, 0))
    np.testing.assert_array_equal(white[0, 1], (255, 255, 255))
    np.testing.assert_allclose(black[1, 0], np.array((200, 100, 50)) * 128 / 255, atol=1)


@pytest.mark.parametrize("kind", ["zero", "text", "png-truncated", "jpeg-truncated", "huge",
                                  "bomb-header", "missing"])
def test_unusable_files_raise_naming_the_file(tmp_path, kind):
    path, reason = _bad_file(tmp_path, kind)
    with pytest.raises(ImageFileError, match=re.escape(str(path)) + ": .*" + reason) as info:
        read_image(path, max_pixels=1000)
    assert info.value.path == str(path) and re.search(reason, info.value.reason)


# Folders ------------------------------------------------------------------------------------

def _bad_file(folder, kind):
    """Write a file of a bad kind into `folder`; return (path, regex of the expected reason)."""
    if kind == "zero":
        path = folder / "zero.png"
        path.write_bytes(b"")
        return path, r"empty file \(0 bytes\)"
    if kind == "text":
        path = folder / "notes.png"
        path.write_text("this is not a picture\n")
        return path, "not an image"
    if kind in ("png-truncated", "jpeg-truncated"):
        fmt = "PNG" if kind == "png-truncated" else "JPEG"
        path = folder / ("cut.png" if fmt == "PNG" else "cut.jpg")
        Image.fromarray(_rgb(5, size=30)).save(path, fmt)  # 900 pixels: under the limit
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return path, "truncated or corrupt"
    if kind == "huge":
        path = folder / "huge.png"
        Image.new("L", (40, 40)).save(path)  # 1600 pixels, over the tests' limit of 1000
        return path, "1,600 pixels is over the limit of 1,000.*decompression bomb"
    if kind == "bomb-header":
        # A valid PNG whose header claims 100000 x 100000 pixels: refused before decoding.
        path = folder / "bomb.png"
        Image.new("L", (8, 8)).save(path)
        data = bytearray(path.read_bytes())
        data[16:24] = struct.pack(">II", 100_000, 100_000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        path.write_bytes(bytes(data))
        # PIL's own guard refuses this size at open (over twice its global limit); either way
        # the file is named and nothing is decoded.
        return path, "10,?000,?000,?000 pixels.*decompression bomb"
    if kind == "missing":
        return folder / "gone.png", "cannot be read"
    raise ValueError(kind)


BAD_KINDS = ("zero", "text", "png-truncated", "jpeg-truncated", "huge", "bomb-header")


def _convertible_files(folder):
    """Write one file per convertible mode; return {file name: expected 8-bit PIL image}."""
    expected = {}
    rgb = _rgb(1)
    Image.fromarray(rgb).save(folder / "a_rgb.png")
    expected["a_rgb.png"] = Image.fromarray(rgb)
    cmyk = Image.fromarray(_rgb(2)).convert("CMYK")
    cmyk.save(folder / "b_cmyk.tif")  # TIFF keeps CMYK losslessly
    expected["b_cmyk.tif"] = cmyk.convert("RGB")
    rgba = np.concatenate([_rgb(3), np.where(np.eye(8, dtype=bool), 0, 255).astype(np.uint8)[..., None]], -1)
    Image.fromarray(rgba, "RGBA").save(folder / "c_rgba.png")
    expected["c_rgba.png"] = Image.fromarray(np.where(rgba[..., 3:] == 0, 0, rgba[..., :3]))
    deep = np.random.default_rng(4).integers(0, 65536, (8, 8)).astype(np.uint16)
    Image.fromarray(deep).save(folder / "d_grey16.png")
    expected["d_grey16.png"] = Image.fromarray(np.rint(deep * (255 / 65535)).astype(np.uint8))
    palette = Image.fromarray(_rgb(5)).quantize(16)
    palette.save(folder / "e_palette.png")
    expected["e_palette.png"] = palette.convert("RGB")
    grey = _rgb(6)[..., 0]
    alpha = np.where(np.arange(64).reshape(8, 8) % 3 == 0, 0, 255).astype(np.uint8)
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(folder / "f_grey_alpha.png")
    expected["f_grey_alpha.png"] = Image.fromarray(np.where(alpha == 0, 0, grey))
    return expected


@pytest.mark.parametrize("config", [RGB, GREY], ids=["rgb-model", "grey-model"])
def test_flat_folder_converts_or_skips_every_bad_kind(tmp_path, config):
    expected = _convertible_files(tmp_path)
    bad = {_bad_file(tmp_path, kind)[0].name: _bad_file(tmp_path, kind)[1] for kind in BAD_KINDS}
    (tmp_path / "readme.txt").write_text("ignored: not an image suffix")
    data = load_image_folder(tmp_path, max_pixels=1000)
    assert data.labels is None and data.class_names is None
    assert sorted(data.ids) == sorted([*expected, *bad])

    with pytest.warns(SkippedImageWarning) as caught:
        batches = list(data.batches(config, batch_size=2))
    # Iteration completed: every good image came out, in order, exactly as preprocess makes it.
    ids = [i for b in batches for i in b.ids]
    assert ids == sorted(expected)
    assert [len(b.ids) for b in batches] == [2, 2, 2]
    got = np.concatenate([b.images for b in batches])
    want = preprocess(config, [expected[i] for i in ids])
    np.testing.assert_array_equal(got, want)

    skipped = {s.id: s for s in data.skipped}
    assert sorted(skipped) == sorted(bad)
    for name, reason in bad.items():
        assert re.search(reason, skipped[name].reason), (name, skipped[name].reason)
        assert skipped[name].path == str(tmp_path / name)
        assert any(name in str(w.message) for w in caught), f"no warning names {name}"
    assert len(caught) == len(bad)
    manifest = data.manifest()
    assert {s["id"] for s in manifest["skipped"]} == set(bad)

    # A second pass skips the known-bad files silently and yields the same images.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedImageWarning)
        again = np.concatenate([b.images for b in data.batches(config, batch_size=4)])
    np.testing.assert_array_equal(again, got)
    assert len(data.skipped) == len(bad)


def test_class_folders_give_sorted_class_names_and_labels(tmp_path):
    for name, seeds in (("sneaker", (1, 2)), ("bag", (3,)), ("coat", (4, 5))):
        (tmp_path / name).mkdir()
        for seed in seeds:
            Image.fromarray(_rgb(seed)).save(tmp_path / name / f"img{seed}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "sneaker" / "broken.png").write_bytes(b"")
    Image.fromarray(_rgb(9)).save(tmp_path / "loose.png")
    data = load_image_folder(tmp_path)
    assert data.class_names == ("bag", "coat", "sneaker")
    assert data.ids == ("bag/img3.png", "coat/img4.png", "coat/img5.png",
                        "sneaker/broken.png", "sneaker/img1.png", "sneaker/img2.png")
    np.testing.assert_array_equal(data.labels, [0, 1, 1, 2, 2, 2])
    assert [s.id for s in data.skipped] == ["loose.png"]
    assert data.skipped[0].reason == "not inside a class folder"

    with pytest.warns(SkippedImageWarning, match=re.escape(str(tmp_path / "sneaker" / "broken.png"))):
        batches = list(data.batches(RGB, batch_size=3))
    assert [b.ids for b in batches] == [("bag/img3.png", "coat/img4.png", "coat/img5.png"),
                                        ("sneaker/img1.png", "sneaker/img2.png")]
    np.testing.assert_array_equal(batches[1].labels, [2, 2])
    np.testing.assert_array_equal(batches[1].indices, [4, 5])
    np.testing.assert_array_equal(batches[1].images, preprocess(RGB, [_rgb(1), _rgb(2)]))


def test_images_nested_in_a_class_folder_belong_to_that_class(tmp_path):
    """`a/b/c/deep.png` is an image of class `a` (id the relative path), as in torchvision's
    ImageFolder; a class folder with nested images only is a class; hidden folders are left out."""
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "x").mkdir(parents=True)
    (tmp_path / "b" / ".cache").mkdir()
    Image.fromarray(_rgb(1)).save(tmp_path / "a" / "top.png")
    Image.fromarray(_rgb(2)).save(tmp_path / "a" / "b" / "c" / "deep.png")
    Image.fromarray(_rgb(3)).save(tmp_path / "b" / "x" / "only.png")
    Image.fromarray(_rgb(4)).save(tmp_path / "b" / ".cache" / "hidden.png")
    data = load_image_folder(tmp_path)
    assert data.class_names == ("a", "b")
    assert data.ids == ("a/b/c/deep.png", "a/top.png", "b/x/only.png")
    np.testing.assert_array_equal(data.labels, [0, 0, 1])
    np.testing.assert_array_equal(np.asarray(data.image(0)), _rgb(2))


def test_file_list_and_check(tmp_path):
    Image.fromarray(_rgb(1)).save(tmp_path / "one.png")
    paths = [tmp_path / "one.png", tmp_path / "gone.png"]
    data = load_image_files(paths, labels=[1, 0], class_names=["no", "yes"])
    assert data.ids == (str(paths[0]), str(paths[1]))
    with pytest.warns(SkippedImageWarning, match="gone.png: cannot be read"):
        skipped = data.check()
    assert [s.id for s in skipped] == [str(paths[1])]
    batch, = data.batches(RGB, batch_size=8)
    assert batch.ids == (str(paths[0]),) and batch.labels.tolist() == [1]
    with pytest.raises(ImageFileError, match="gone.png"):
        data.image(1)


def test_dataset_checks_its_inputs():
    images = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(DataError, match="2 labels for 3 images"):
        ImageDataset(images, labels=[0, 1])
    with pytest.raises(DataError, match="labels span 0..5 for 2 class names"):
        ImageDataset(images, labels=[0, 1, 5], class_names=["a", "b"])
    with pytest.raises(DataError, match="not unique"):
        ImageDataset(images, ids=["a", "a", "b"])
    with pytest.raises(DataError, match="must be uint8"):
        ImageDataset(images.astype(np.float32))
    subset = ImageDataset(images, labels=[0, 1, 1], ids=["a", "b", "c"]).subset([2, 0])
    assert subset.ids == ("c", "a") and subset.labels.tolist() == [1, 0]


def test_a_folder_is_idx_data_by_its_files_magic_numbers_not_their_names(tmp_path):
    """`--data FOLDER`: photos whose names contain "idx" are photos; IDX files are found by
    their magic number (plain or gzip), whatever they are named."""
    from vit_jax_va.inputs import resolve_data
    from vit_jax_va.data import is_idx_file

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(_rgb(i)).save(photos / f"frame_idx0{i}.png")
    (photos / "notes_idx.txt").write_text("not an IDX file")
    assert resolve_data(str(photos)).ids == ("frame_idx00.png", "frame_idx01.png")
    assert not is_idx_file(photos / "frame_idx00.png") and not is_idx_file(photos / "notes_idx.txt")

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    write_idx(mnist / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(mnist / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    assert is_idx_file(mnist / "t10k-images-idx3-ubyte.gz") and is_idx_file(mnist / "t10k-labels-idx1-ubyte")
    loaded = resolve_data(str(mnist))
    assert loaded.in_memory and loaded.ids == ("test/0", "test/1", "test/2")
    np.testing.assert_array_equal(loaded.images, images)
