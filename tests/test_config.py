"""vit_jax_va.config: derived sizes, validation and JSON round trip."""

import pytest

from vit_jax_va import ViTConfig


def test_vit_b16_sizes():
    config = ViTConfig.preset("vit_base_patch16_224")
    assert (config.grid, config.num_patches, config.num_tokens, config.head_dim,
            config.mlp_hidden, config.num_heads_total) == ((14, 14), 196, 197, 64, 3072, 144)


def test_prefix_tokens_and_pos_embed_length():
    config = ViTConfig(image_size=(32, 48), patch_size=8, width=48, num_heads=3,
                       num_register_tokens=4, no_embed_class=True)
    assert (config.grid, config.num_prefix_tokens, config.num_tokens, config.pos_embed_length) == (
        (4, 6), 5, 29, 24)


def test_dict_round_trip():
    config = ViTConfig(image_size=(28, 28), patch_size=2, in_channels=1, mean=(0.3,), std=(0.2,),
                       num_classes=2, class_names=("shirt", "shoe"))
    assert ViTConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=30, patch_size=16), "image_size\\[0\\]=30 is not a multiple of patch_size"),
    (dict(width=100, num_heads=12), "width=100 is not divisible by num_heads=12"),
    (dict(class_token=False), "pool='token' needs class_token=True"),
    (dict(pool="gap"), "pool='gap'"),
    (dict(act="silu"), "act='silu'"),
    (dict(in_channels=1), "mean/std have 3/3 entries for in_channels=1"),
    (dict(distillation_token=True, num_register_tokens=2), "distillation_token"),
])
def test_invalid_configs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**kwargs)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="rope_theta"):
        ViTConfig.from_dict({**ViTConfig().to_dict(), "rope_theta": 100.0})
