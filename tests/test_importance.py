"""`ablate_heads`, `taylor_importance`, `head_confidence_per_image` and the accumulator, each
against an independent computation: one full masked forward per head through `model(...)`, finite
differences, the attention returned by the model, and means over all images at once."""

import collections

import jax
import numpy as np
import pytest
from _importance_models import (CONFIGS, naive_confidence, naive_logits, naive_metrics,
                                random_images, random_model)

from vit_jax_va import PRUNE_MODES
from vit_jax_va.head_scores import (head_confidence_per_image, normalize_by_layer,
                                    taylor_importance)
from vit_jax_va.importance import ablate_heads
from vit_jax_va.importance_stats import ImportanceAccumulator, head_importance

TOL = dict(rtol=1e-5, atol=1e-5)


def _check_against_naive(result, naive, reference, modes):
    expected_base = naive_metrics(naive["unpruned"], reference, naive["unpruned"])
    for key in ("prob", "correct", "loss", "top5_classes", "top5_probs"):
        np.testing.assert_allclose(getattr(result, f"baseline_{key}"), expected_base[key],
                                   **TOL, err_msg=f"baseline_{key}")
    np.testing.assert_allclose(result.baseline_logits, naive["unpruned"], **TOL)
    for i, mode in enumerate(modes):
        logits = naive["unpruned"][None, None] if mode == "none" else naive[mode]
        expected = naive_metrics(logits, reference, naive["unpruned"])
        for key, value in expected.items():
            got = getattr(result, key)[i]
            np.testing.assert_allclose(got, np.broadcast_to(value, got.shape), **TOL,
                                       err_msg=f"{mode} {key}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ablation_equals_one_forward_per_head(name):
    config = CONFIGS[name]
    model = random_model(config, seed=1)
    images = random_images(config, 5, seed=2)
    # 5 images in chunks of 4: a padded second chunk; 10 variants (5 modes x 2..4 heads)
    # in chunks that divide them.
    result = ablate_heads(model, images, modes=PRUNE_MODES, batch_size=4,
                          variant_chunk=config.num_heads)
    swept = tuple(m for m in PRUNE_MODES if m != "none")
    naive = naive_logits(model, images, swept)
    reference = naive["unpruned"].argmax(-1)
    np.testing.assert_array_equal(result.reference, reference)
    assert result.prob.shape == (len(PRUNE_MODES), config.depth, config.num_heads, 5)
    assert result.top5_classes.shape == (*result.prob.shape, 5)
    _check_against_naive(result, naive, reference, PRUNE_MODES)
    np.testing.assert_allclose(result.head_confidence,
                               naive_confidence(naive["attention"], config.num_prefix_tokens),
                               rtol=1e-6, atol=1e-7)
    # Pruning must actually move the prediction, or the comparison above proves little.
    assert np.abs(result.prob[PRUNE_MODES.index("head")] - result.baseline_prob).max() > 1e-2


def test_ablation_with_labels_uses_them_as_reference():
    config = CONFIGS["token"]
    model = random_model(config, seed=3)
    images = random_images(config, 4, seed=4)
    naive = naive_logits(model, images, ("head", "patch"))
    # Labels deliberately different from the predictions.
    labels = (naive["unpruned"].argmax(-1) + 1) % config.num_classes
    result = ablate_heads(model, images, labels=labels, modes=("patch", "head"), batch_size=4)
    np.testing.assert_array_equal(result.reference, labels)
    assert not result.baseline_correct.any()
    _check_against_naive(result, naive, labels, ("patch", "head"))


def test_ablation_rejects_bad_arguments():
    config = CONFIGS["token"]
    model = random_model(config)
    images = random_images(config, 2)
    with pytest.raises(ValueError, match="modes"):
        ablate_heads(model, images, modes=("heads",))
    with pytest.raises(ValueError, match="labels"):
        ablate_heads(model, images, labels=np.array([0, config.num_classes]))


def test_sweep_compiles_once_per_shape():
    config = CONFIGS["distilled"]
    model = random_model(config, seed=5)
    compiles = collections.Counter()

    def count(event, duration, **kwargs):
        compiles[event] += 1

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        ablate_heads(model, random_images(config, 6, seed=1), modes=("head", "cls"),
                     batch_size=4)
        first = compiles["/jax/core/compile/backend_compile_duration"]
        # A different number of images, other values: same chunk shape, so no new program.
        ablate_heads(model, random_images(config, 3, seed=2), modes=("head", "cls"),
                     batch_size=4)
        second = compiles["/jax/core/compile/backend_compile_duration"] - first
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    # Two chunks of 4 images went through one compiled program; the padding and the slicing
    # of the results happen in numpy.
    assert first == 1
    assert second == 0


def test_taylor_importance_equals_finite_differences():
    config = CONFIGS["token"]
    model = random_model(config, seed=6)
    images = random_images(config, 3, seed=7)
    # batch_size=2 everywhere: one compilation, and a padded chunk.
    per_image = taylor_importance(model, images, per_image=True, batch_size=2)
    assert per_image.shape == (config.depth, config.num_heads, 3)
    reference = np.asarray(jax.jit(model)(images)).argmax(-1)

    loss = jax.jit(lambda head_mask: -jax.nn.log_softmax(model(images, head_mask=head_mask))[
        np.arange(3), reference])
    eps = 1e-2
    expected = np.zeros_like(per_image)
    for layer in range(config.depth):
        for head in range(config.num_heads):
            step = np.zeros((config.depth, config.num_heads), np.float32)
            step[layer, head] = eps
            central = (np.asarray(loss(1 + step), np.float64)
                       - np.asarray(loss(1 - step), np.float64)) / (2 * eps)
            expected[layer, head] = np.abs(central)
    np.testing.assert_allclose(per_image, expected, rtol=2e-2, atol=1e-4)
    assert expected.max() > 1e-2
    np.testing.assert_allclose(taylor_importance(model, images, batch_size=2),
                               expected.mean(-1), rtol=2e-2, atol=1e-4)
    normalized = taylor_importance(model, images, normalize=True, batch_size=2)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(normalized, normalize_by_layer(expected.mean(-1)),
                               rtol=2e-2, atol=1e-4)


def test_head_confidence_from_returned_attention():
    config = CONFIGS["registers"]
    model = random_model(config, seed=8)
    images = random_images(config, 3, seed=9)
    attention = jax.jit(lambda x: model(x, return_attention=True).attention)(images)
    expected = naive_confidence(np.asarray(attention), config.num_prefix_tokens)
    got = head_confidence_per_image(model, images, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got.min() > 0 and got.max() <= 1 and got.std() > 1e-3


def _mean64(values):
    """Mean over the image axis in float64 (a float32 mean would round differently)."""
    return np.asarray(values, np.float64).mean(-1)


def test_accumulator_equals_means_over_all_images(tmp_path):
    config = CONFIGS["token"]
    model = random_model(config, seed=10)
    images = random_images(config, 7, seed=11)
    labels = np.array([0, 3, 3, 1, 0, 3, 6])
    modes = ("head", "cls", "none")
    whole = ablate_heads(model, images, labels=labels, modes=modes, batch_size=4)
    assert whole.take(slice(5, None)).prob.shape[-1] == 2
    np.testing.assert_array_equal(whole.take(3).top5_classes[..., 0, :],
                                  whole.top5_classes[..., 3, :])

    accumulator = ImportanceAccumulator(modes, config.depth, config.num_heads,
                                        config.num_classes)
    # Batches of the same results, so that only the accumulation is under test (a sweep over
    # other chunks of images rounds differently in the last float32 bit).
    for batch in (slice(0, 2), slice(2, 5)):
        accumulator.update(whole.take(batch), labels[batch])
    # Resume from disk, as a sweep does after an interruption.
    accumulator.save(tmp_path / "acc.npz")
    accumulator = ImportanceAccumulator.load(tmp_path / "acc.npz")
    accumulator.update(whole.take(slice(5, None)))
    summary = accumulator.result()

    assert summary.count == 7 and summary.modes == modes
    np.testing.assert_array_equal(summary.class_count, np.bincount(labels, minlength=7))
    np.testing.assert_allclose(summary.prob, _mean64(whole.prob), rtol=1e-12)
    np.testing.assert_allclose(summary.accuracy, _mean64(whole.correct), rtol=1e-12)
    np.testing.assert_allclose(summary.loss, _mean64(whole.loss), rtol=1e-12)
    np.testing.assert_allclose(summary.kl, _mean64(whole.kl), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(summary.head_confidence, _mean64(whole.head_confidence),
                               rtol=1e-12)
    assert summary.baseline_accuracy == pytest.approx(_mean64(whole.baseline_correct))
    np.testing.assert_allclose(summary.accuracy_drop,
                               _mean64(whole.baseline_correct) - _mean64(whole.correct),
                               rtol=1e-12, atol=1e-15)
    for cls in range(config.num_classes):
        chosen = labels == cls
        if not chosen.any():
            assert np.isnan(summary.class_prob[..., cls]).all()
            continue
        np.testing.assert_allclose(summary.class_prob[..., cls],
                                   _mean64(whole.prob[..., chosen]), rtol=1e-12)
        np.testing.assert_allclose(summary.class_accuracy_drop[..., cls],
                                   _mean64(whole.baseline_correct[chosen])
                                   - _mean64(whole.correct[..., chosen]),
                                   rtol=1e-12, atol=1e-15)
        assert summary.class_baseline_loss[cls] == pytest.approx(
            _mean64(whole.baseline_loss[chosen]))
    # "none" prunes nothing: no drop at all, for every head.
    none = modes.index("none")
    np.testing.assert_array_equal(summary.accuracy_drop[none], 0.0)
    np.testing.assert_array_equal(head_importance(summary, "kl", "none"), 0.0)
    with pytest.raises(ValueError, match="modes"):
        ImportanceAccumulator(("cls",), config.depth, config.num_heads,
                              config.num_classes).update(whole)
    np.testing.assert_allclose(head_importance(summary, "prob", "cls"),
                               _mean64(whole.baseline_prob) - _mean64(whole.prob[1]), rtol=1e-12)
