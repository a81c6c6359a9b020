"""Token layout helpers: prefix tokens then the row-major patch grid."""

import numpy as np
import pytest

from vit_jax_va import layout


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_patch_block_drops_prefix_rows_and_columns(prefix):
    tokens = prefix + 6
    attention = np.arange(tokens * tokens, dtype=np.float32).reshape(tokens, tokens)
    block = np.asarray(layout.patch_block(attention, (2, 3), prefix))
    assert block.dtype == np.float32
    np.testing.assert_array_equal(block, attention[prefix:, prefix:])


def test_check_tokens_names_the_mismatch():
    with pytest.raises(ValueError, match="7 tokens.*makes 10"):
        layout.check_tokens((7, 7), (3, 3), 1)
    with pytest.raises(ValueError, match="tokens, tokens"):
        layout.check_tokens((7, 8), (2, 3), 1)


def test_offsets_are_key_minus_query_in_row_major_order():
    offsets = layout.patch_offsets((2, 3))
    # Query patch 1 is (0, 1); key patch 5 is (1, 2).
    np.testing.assert_array_equal(offsets[1, 5], [1, 1])
    np.testing.assert_array_equal(layout.patch_coordinates((2, 3))[4], [1, 1])
