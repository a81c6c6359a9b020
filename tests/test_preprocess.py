"""vit_jax_va.preprocess against timm's own eval transform on the same PIL images."""

import numpy as np
import pytest
from PIL import Image

import converters
from vit_jax_va import ViTConfig, preprocess


def _photo(height, width, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: resampling filters matter on such content.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 / width), (y * 255 / height), ((x + y) * 127 / (height + width))], -1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


CONFIGS = {
    "crop0.9_bicubic": ViTConfig(image_size=32, patch_size=8, width=48, num_heads=3,
                                 crop_fraction=0.9, interpolation="bicubic",
                                 mean=(0.5,) * 3, std=(0.5,) * 3),
    "crop1_bilinear": ViTConfig(image_size=32, patch_size=8, width=48, num_heads=3,
                                crop_fraction=1.0, interpolation="bilinear"),
    "squash": ViTConfig(image_size=32, patch_size=8, width=48, num_heads=3,
                        crop_fraction=0.875, crop_mode="squash"),
    "rect_target": ViTConfig(image_size=(32, 48), patch_size=8, width=48, num_heads=3,
                             crop_fraction=0.95),
}


@pytest.mark.parametrize("size", [(300, 200), (100, 500), (32, 32), (20, 25)])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_timm_eval_transform(name, size):
    import timm.data

    config = CONFIGS[name]
    timm_model = converters.create_timm_model(config)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=timm_model))
    image = _photo(*size)
    expected = transform(image).numpy().transpose(1, 2, 0)
    ours = preprocess(config, image)
    assert ours.shape == (1, *config.image_size, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[0], expected, atol=1e-6)


def test_inputs_greyscale_batches_and_paths(tmp_path):
    rgb = CONFIGS["crop1_bilinear"]
    grey = rgb.replace(in_channels=1, mean=(0.5,), std=(0.25,))
    image = _photo(40, 50, seed=1)
    path = tmp_path / "img.png"
    image.save(path)
    from_path, from_pil, from_array = (preprocess(rgb, x) for x in (path, image, np.asarray(image)))
    np.testing.assert_array_equal(from_path, from_pil)
    np.testing.assert_array_equal(from_array, from_pil)
    batch = preprocess(rgb, np.stack([np.asarray(image)] * 3))
    assert batch.shape == (3, 32, 32, 3)
    # A 1-channel model sees PIL's luminance, normalised with its own mean/std.
    luminance = preprocess(rgb.replace(mean=(0.5,) * 3, std=(0.25,) * 3), image.convert("L"))
    np.testing.assert_allclose(preprocess(grey, image)[..., 0], luminance[..., 0], atol=1e-6)


def test_bad_inputs_are_named(tmp_path):
    config = CONFIGS["crop1_bilinear"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        preprocess(config, broken)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(config, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="no images"):
        preprocess(config, [])


def test_a_file_is_decoded_as_the_sweep_decodes_it(tmp_path):
    """`preprocess(config, path)` feeds the model what a sweep over that file does (through
    `ImageDataset`): a 16-bit greyscale PNG scaled to 8 bits, not clipped to white, and an RGBA
    PNG composited over black, not its alpha dropped; a PIL image and a uint8 array the same."""
    from vit_jax_va.data import load_image_files

    config = CONFIGS["crop1_bilinear"]
    rng = np.random.default_rng(5)
    deep = tmp_path / "grey16.png"
    Image.fromarray(rng.integers(0, 65536, (40, 40)).astype(np.uint16)).save(deep)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    transparent = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(transparent)
    swept = load_image_files([deep, transparent])
    for index, path in enumerate((deep, transparent)):
        seen_by_sweep = preprocess(config, swept.image(index))
        np.testing.assert_array_equal(preprocess(config, path), seen_by_sweep, err_msg=path.name)
        with Image.open(path) as opened:
            np.testing.assert_array_equal(preprocess(config, opened), seen_by_sweep, err_msg=path.name)
    # RGBA over black is each colour scaled by its alpha (an independent composite).
    composite = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0)).astype(np.uint8)
    assert np.abs(preprocess(config, rgba) - preprocess(config, composite)).max() <= 2 / 255 / min(config.std)
    assert np.abs(preprocess(config, transparent) - preprocess(config, composite)).max() <= 2 / 255 / min(config.std)
