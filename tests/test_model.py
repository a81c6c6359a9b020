"""vit_jax_va.model: shapes, mask semantics and input checks (parity with timm is in test_timm)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vit_jax_va
from jax_cases import random_images, random_vit
from vit_jax_va import ViTConfig

CONFIG = ViTConfig(image_size=(16, 24), patch_size=4, width=32, depth=3, num_heads=4,
                   num_classes=5, num_register_tokens=2, layer_scale=True, mean=(0.5,) * 3,
                   std=(0.5,) * 3)


@pytest.fixture(scope="module")
def model():
    return random_vit(CONFIG)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(random_images(CONFIG))


def test_shapes_and_attention_rows_sum_to_one(model, images):
    out = model(images, return_attention=True)
    tokens = 3 + 4 * 6
    assert CONFIG.num_tokens == tokens
    assert out.logits.shape == (2, 5)
    assert out.pre_logits.shape == (2, 32)
    assert out.attention.shape == (2, 3, 4, tokens, tokens)
    np.testing.assert_allclose(np.asarray(out.attention.sum(-1)), 1.0, atol=1e-5)
    # Without attention to return, the last block computes the class token's row only; the
    # dot then rounds in another order, so equal to float32 rounding, not bit for bit.
    np.testing.assert_allclose(np.asarray(model(images)), np.asarray(out.logits), rtol=1e-5, atol=1e-6)


def test_mask_of_ones_is_identical_to_no_mask(model, images):
    plain = model(images, return_attention=True)
    ones = model(images, head_mask=jnp.ones((3, 4)), region_mask=jnp.ones((3, 4, 27, 27)),
                 return_attention=True)
    np.testing.assert_array_equal(np.asarray(ones.logits), np.asarray(plain.logits))
    np.testing.assert_array_equal(np.asarray(ones.attention), np.asarray(plain.attention))


def test_zero_region_equals_zero_head_mask(model, images):
    by_head = model(images, head_mask=vit_jax_va.single_head_mask(CONFIG, 1, 2))
    by_region = model(images, region_mask=vit_jax_va.single_head_region_mask(CONFIG, 1, 2, "head"))
    np.testing.assert_allclose(np.asarray(by_head), np.asarray(by_region), atol=1e-6)
    assert not np.allclose(np.asarray(by_head), np.asarray(model(images)), atol=1e-4)


def test_head_mask_is_differentiable_and_jits(model, images):
    graphdef, state = nnx.split(model)

    def loss(mask):
        return jax.nn.logsumexp(nnx.merge(graphdef, state)(images, head_mask=mask)).sum()

    grad = jax.jit(jax.grad(loss))(jnp.ones((3, 4)))
    assert grad.shape == (3, 4) and np.all(np.isfinite(np.asarray(grad)))
    assert np.count_nonzero(np.asarray(grad)) == 12
    step = 1e-3
    bumped = jnp.ones((3, 4)).at[0, 1].add(step)
    numeric = (loss(bumped) - loss(jnp.ones((3, 4)))) / step
    np.testing.assert_allclose(float(grad[0, 1]), float(numeric), rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(head_mask=jnp.ones((4, 3))), r"head_mask must have shape \[layers, heads\] = \[3, 4\]; got \(4, 3\)"),
    (dict(region_mask=jnp.ones((3, 4, 26, 26))), r"region_mask must broadcast to .*got \(3, 4, 26, 26\)"),
])
def test_bad_mask_shapes_are_named(model, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(images, **kwargs)


def test_bad_image_shape_is_named(model):
    with pytest.raises(ValueError, match=r"images must be \[batch, 16, 24, 3\].*got shape \(2, 3, 16, 24\)"):
        model(jnp.zeros((2, 3, 16, 24)))
