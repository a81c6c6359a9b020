"""vit_jax_va.positions: the rotary embedding against timm's tables and against its defining
property; the relative position index against timm's BEiT index."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax_va.positions import relative_position_index, rotary_embedding, rotate


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(ref_feat_shape=(16, 16)),
    dict(grid_offset=1.0, grid_indexing="xy", ref_feat_shape=(7, 9)),
    dict(rotate_half=True, temperature=100.0),
], ids=["plain", "ref", "offset_xy_ref", "half_temperature"])
def test_rotary_tables_equal_timms(kwargs):
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

    grid, head_dim = (5, 7), 16
    timm_rope = RotaryEmbeddingCat(dim=head_dim, in_pixels=False, feat_shape=list(grid), **kwargs)
    sin_t, cos_t = np.split(timm_rope.get_embed().numpy(), 2, axis=-1)
    sin, cos = rotary_embedding(grid, head_dim, ref_grid=kwargs.get("ref_feat_shape"),
                                temperature=kwargs.get("temperature", 10000.0),
                                offset=kwargs.get("grid_offset", 0.0), xy=kwargs.get("grid_indexing") == "xy",
                                rotate_half=kwargs.get("rotate_half", False))
    assert sin.shape == cos.shape == (35, head_dim)
    np.testing.assert_allclose(sin, sin_t, atol=1e-6)
    np.testing.assert_allclose(cos, cos_t, atol=1e-6)


@pytest.mark.parametrize("rotate_half", [False, True])
def test_rotated_products_depend_only_on_the_offset(rotate_half):
    """RoPE's defining property: q.k after rotation depends on the two positions only through
    their (row, col) offset, and the rotation keeps lengths."""
    grid, head_dim = (4, 5), 8
    sin, cos = (jnp.asarray(t) for t in rotary_embedding(grid, head_dim, rotate_half=rotate_half))
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal(head_dim).astype(np.float32) for _ in range(2))
    n = grid[0] * grid[1]
    rq = np.asarray(rotate(jnp.broadcast_to(q, (1, n, head_dim)), sin, cos, rotate_half))[0]
    rk = np.asarray(rotate(jnp.broadcast_to(k, (1, n, head_dim)), sin, cos, rotate_half))[0]
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q), rtol=1e-5)
    row, col = np.divmod(np.arange(n), grid[1])
    by_offset: dict[tuple[int, int], list[float]] = {}
    for i in range(n):
        for j in range(n):
            by_offset.setdefault((row[i] - row[j], col[i] - col[j]), []).append(float(rq[i] @ rk[j]))
    spreads = [max(v) - min(v) for v in by_offset.values()]
    assert max(spreads) < 1e-5
    # ... and it does depend on the offset (or the check above proves nothing).
    means = [np.mean(v) for v in by_offset.values()]
    assert max(means) - min(means) > 0.1


def test_relative_position_index_equals_timms():
    from timm.layers.pos_embed_rel import gen_relative_position_index as relpos_index
    from timm.models.beit import gen_relative_position_index as beit_index

    for grid in ((4, 4), (3, 5)):
        np.testing.assert_array_equal(relative_position_index(grid), beit_index(grid).numpy())
        for class_token in (True, False):
            np.testing.assert_array_equal(relative_position_index(grid, class_token),
                                          relpos_index(grid, class_token=class_token).numpy())


def test_rotary_embedding_needs_a_head_dim_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4; got 6"):
        rotary_embedding((2, 2), 6)
