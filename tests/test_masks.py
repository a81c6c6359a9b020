"""vit_jax_va.masks: the six partial-pruning modes zero exactly the regions METHOD.md names."""

import jax.numpy as jnp
import numpy as np
import pytest
from jax_cases import random_images, random_vit

import vit_jax_va
from vit_jax_va import PRUNE_MODES, ViTConfig, prune_region


def _expected(mode, tokens, prefix):
    """The region written out cell by cell from METHOD.md's wording."""
    region = np.zeros((tokens, tokens), bool)
    for q in range(tokens):
        for k in range(tokens):
            q_cls, k_cls = q < prefix, k < prefix
            region[q, k] = {
                "none": False,
                "head": True,
                "cls": q_cls or k_cls,                    # CLS row and CLS column
                "patch": not q_cls and not k_cls,          # patch -> patch block
                "cross": (q_cls or k_cls) and not (q_cls and k_cls),  # row + column, no CLS->CLS
                "cls_cls": q_cls and k_cls,                # the CLS -> CLS cell
            }[mode]
    return region


@pytest.mark.parametrize("prefix", [0, 1, 3])
@pytest.mark.parametrize("mode", PRUNE_MODES)
def test_regions(mode, prefix):
    np.testing.assert_array_equal(prune_region(mode, 7, prefix), _expected(mode, 7, prefix))


def test_region_sizes_for_vit_b():
    sizes = {m: int(prune_region(m, 197, 1).sum()) for m in PRUNE_MODES}
    assert sizes == {"none": 0, "head": 197 * 197, "cls": 197 + 196, "patch": 196 * 196,
                     "cross": 2 * 196, "cls_cls": 1}


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="'rows'"):
        prune_region("rows", 5, 1)


@pytest.mark.parametrize("mode", PRUNE_MODES)
def test_model_zeroes_the_region_of_one_head_only(mode):
    config = ViTConfig(image_size=8, patch_size=4, width=16, depth=2, num_heads=2, num_classes=3,
                       num_register_tokens=1)
    model = random_vit(config, seed=1)
    images = jnp.asarray(random_images(config))
    plain = np.asarray(model(images, return_attention=True).attention)
    masked = np.asarray(model(images, region_mask=vit_jax_va.single_head_region_mask(config, 0, 1, mode),
                              return_attention=True).attention)
    region = prune_region(mode, config.num_tokens, config.num_prefix_tokens)
    assert np.all(masked[:, 0, 1][:, region] == 0)
    np.testing.assert_array_equal(masked[:, 0, 1][:, ~region], plain[:, 0, 1][:, ~region])
    np.testing.assert_array_equal(masked[:, 0, 0], plain[:, 0, 0])  # the other head of the layer


def test_single_head_helpers_check_the_index():
    config = ViTConfig(image_size=8, patch_size=4, width=16, depth=2, num_heads=2)
    with pytest.raises(IndexError, match="layer=2, head=0"):
        vit_jax_va.single_head_mask(config, 2, 0)
