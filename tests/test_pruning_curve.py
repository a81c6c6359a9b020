"""`pruning_curve` against one `model(images, head_mask=...)` call per step."""

import jax
import numpy as np
import pytest
from _importance_models import CONFIGS, random_images, random_model

from vit_jax_va.pruning_curve import cumulative_head_masks, pruning_curve


def test_cumulative_head_masks_prune_in_order():
    masks = cumulative_head_masks(np.array([4, 0, 5, 1, 3, 2]), np.array([0, 1, 3, 6]), 2, 3)
    assert masks.shape == (4, 2, 3)
    np.testing.assert_array_equal(masks[0], 1.0)
    np.testing.assert_array_equal(masks[1].reshape(-1), [1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(masks[2].reshape(-1), [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(masks[3], 0.0)


@pytest.mark.parametrize("most_important_first", [True, False])
def test_pruning_curve_equals_one_forward_per_step(most_important_first):
    config = CONFIGS["avg"]
    model = random_model(config, seed=12)
    images = random_images(config, 5, seed=13)
    scores = np.random.default_rng(14).random((config.depth, config.num_heads))
    labels = np.array([0, 1, 2, 3, 4])
    curve = pruning_curve(model, images, scores, labels=labels,
                          most_important_first=most_important_first, batch_size=3,
                          step_chunk=13)
    heads = config.depth * config.num_heads
    np.testing.assert_array_equal(curve.num_pruned, np.arange(heads + 1))
    flat = scores.reshape(-1)
    # The first head pruned has the highest (or lowest) score.
    assert flat[curve.order[0]] == (flat.max() if most_important_first else flat.min())
    assert np.all(np.diff(flat[curve.order]) <= 0 if most_important_first
                  else np.diff(flat[curve.order]) >= 0)

    forward = jax.jit(lambda head_mask: model(images, head_mask=head_mask))
    pruned = np.zeros(heads, np.float32)
    for step in range(heads + 1):
        head_mask = 1 - pruned.reshape(config.depth, config.num_heads)
        logits = np.asarray(forward(head_mask), np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_allclose(curve.prob[step], probs[np.arange(5), labels],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(curve.correct[step], probs.argmax(-1) == labels)
        if step < heads:
            pruned[curve.order[step]] = 1
    np.testing.assert_allclose(curve.accuracy, curve.correct.mean(-1))
    # Pruning every head must change something, or the comparison above is vacuous.
    assert np.abs(curve.prob[-1] - curve.prob[0]).max() > 1e-2


def test_pruning_curve_without_labels_starts_at_full_accuracy():
    config = CONFIGS["token"]
    model = random_model(config, seed=15)
    scores = np.arange(config.depth * config.num_heads, dtype=float).reshape(config.depth, -1)
    curve = pruning_curve(model, random_images(config, 4, seed=16), scores,
                          num_pruned=[0, 2, 5], batch_size=4)
    assert curve.accuracy[0] == 1.0
    assert curve.prob.shape == (3, 4)
    with pytest.raises(ValueError, match="num_pruned"):
        pruning_curve(model, random_images(config, 1), scores, num_pruned=[0, 13])
