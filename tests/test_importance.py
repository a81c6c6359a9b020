"""`ablate_heads`, `taylor_importance` and `head_confidence_per_image`, each against an
independent computation: one full masked forward per head through `model(...)`, finite
differences, and the attention returned by the model."""

import collections

import jax
import numpy as np
import pytest
import dataclasses

from _importance_models import (CONFIGS, naive_confidence, naive_features, naive_logits,
                                naive_metrics, naive_patch_metrics, random_images, random_model)

from vit_jax_va import PRUNE_MODES
from vit_jax_va.head_scores import (head_confidence_per_image, normalise_by_layer,
                                    taylor_importance)
from vit_jax_va.importance import HeadAblation, ablate_heads
from vit_jax_va.pruning_curve import pruning_curve

TOL = dict(rtol=1e-5, atol=1e-5)


def _check_against_naive(result, naive, reference, modes):
    expected_base = naive_metrics(naive["unpruned"], reference, naive["unpruned"])
    for key in ("prob", "correct", "loss", "top5_classes", "top5_probs"):
        np.testing.assert_allclose(getattr(result, f"baseline_{key}"), expected_base[key],
                                   **TOL, err_msg=f"baseline_{key}")
    np.testing.assert_allclose(result.baseline_logits, naive["unpruned"], **TOL)
    for i, mode in enumerate(modes):
        logits = naive["unpruned"][None, None] if mode == "none" else naive[mode]
        features = naive["unpruned_features"][None, None] if mode == "none" else naive[f"{mode}_features"]
        expected = {**naive_metrics(logits, reference, naive["unpruned"]),
                    **naive_features(features, naive["unpruned_features"])}
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
    # Pruning must actually move the prediction and the features, or the comparison above
    # proves little.
    assert np.abs(result.prob[PRUNE_MODES.index("head")] - result.baseline_prob).max() > 1e-2
    assert result.feature_rel_l2[PRUNE_MODES.index("head")].max() > 1e-2


def _check_representation(result, naive, modes, patches: bool):
    """The feature (and patch-token) metrics of `result` against the naive forward passes."""
    for i, mode in enumerate(modes):
        name = "unpruned" if mode == "none" else mode
        expected = naive_features(naive[f"{name}_features"], naive["unpruned_features"])
        if patches:
            expected.update(naive_patch_metrics(naive[f"{name}_patches"], naive["unpruned_patches"]))
        for key, value in expected.items():
            got = getattr(result, key)[i]
            np.testing.assert_allclose(got, np.broadcast_to(value, got.shape), **TOL, err_msg=f"{mode} {key}")


@pytest.mark.parametrize("name", ["token", "avg", "registers", "map_gelu_tanh"])
def test_backbone_ablation_measures_the_representation_alone(name):
    # A model without a classifier (DINOv2, CLIP, MAE towers): the feature metrics, per head and
    # mode, and as an option the patch tokens', equal one masked forward per head; every field
    # of the prediction is absent, and labels are ignored.
    config = dataclasses.replace(CONFIGS[name], num_classes=0)
    model = random_model(config, seed=4)
    images = random_images(config, 5, seed=5)
    modes = ("head", "none", "patch", "cls")
    result = ablate_heads(model, images, labels=np.arange(5), modes=modes, batch_size=4,
                          patch_tokens=True)
    naive = naive_logits(model, images, ("head", "patch", "cls"))
    _check_representation(result, naive, modes, patches=True)
    assert not result.has_classifier
    missing = [k for k, f in HeadAblation.shapes().items() if getattr(result, k) is None]
    assert set(missing) == set(HeadAblation.shapes()) - set(HeadAblation.shapes(classifier=False))
    assert "prob" in missing
    assert result.patch_cos.shape == (len(modes), config.depth, config.num_heads, 5)
    # Pruning moves the representation, or the comparison proves little.
    assert result.patch_rel_l2[0].max() > 1e-2 and result.feature_rel_l2[0].max() > 1e-2
    # `take` keeps the present fields and leaves the absent ones absent.
    part = result.take([4, 1])
    np.testing.assert_array_equal(part.patch_cos, result.patch_cos[..., [4, 1]])
    assert part.prob is None


@pytest.mark.parametrize("name", ["token", "distilled", "rel_pos_bias"])
def test_patch_token_metrics_with_a_classifier(name):
    # With class-token pooling the patch tokens need the last layer's every row, which the
    # sweep otherwise skips: the class metrics must stay the same.
    config = CONFIGS[name]
    model = random_model(config, seed=6)
    images = random_images(config, 3, seed=7)
    result = ablate_heads(model, images, modes=("head", "cross"), batch_size=4, patch_tokens=True)
    naive = naive_logits(model, images, ("head", "cross"))
    _check_against_naive(result, naive, naive["unpruned"].argmax(-1), ("head", "cross"))
    _check_representation(result, naive, ("head", "cross"), patches=True)
    assert ablate_heads(model, images, modes=("head",), batch_size=4).patch_cos is None


def test_pruning_curve_of_a_backbone_measures_the_features():
    # Without a classifier the cumulative curve measures how far the pooled features move:
    # each step against a forward with that step's head mask.
    config = dataclasses.replace(CONFIGS["avg"], num_classes=0)
    model = random_model(config, seed=8)
    images = random_images(config, 3, seed=9)
    scores = np.random.default_rng(0).random((config.depth, config.num_heads))
    curve = pruning_curve(model, images, scores, num_pruned=[0, 3, 12], batch_size=2)
    assert curve.prob is None and curve.accuracy is None
    unpruned = np.asarray(model(images))
    for step, count in enumerate([0, 3, 12]):
        mask = np.ones(config.depth * config.num_heads, np.float32)
        mask[curve.order[:count]] = 0
        pruned = np.asarray(model(images, head_mask=mask.reshape(config.depth, config.num_heads)))
        expected = naive_features(pruned, unpruned)["feature_cos"]
        np.testing.assert_allclose(curve.feature_cos[step], expected, rtol=1e-5, atol=1e-5)
    assert curve.feature_cos[0].max() < 1e-5 < curve.feature_cos[-1].min()


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
    normalised = taylor_importance(model, images, normalise=True, batch_size=2)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(normalised, normalise_by_layer(expected.mean(-1)),
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


def test_take_keeps_the_chosen_images_of_every_array():
    config = CONFIGS["token"]
    model = random_model(config, seed=10)
    images = random_images(config, 7, seed=11)
    labels = np.array([0, 3, 3, 1, 0, 3, 6])
    modes = ("head", "cls", "none")
    whole = ablate_heads(model, images, labels=labels, modes=modes, batch_size=4)
    assert whole.take(slice(5, None)).prob.shape[-1] == 2
    np.testing.assert_array_equal(whole.take(3).top5_classes[..., 0, :],
                                  whole.top5_classes[..., 3, :])
    np.testing.assert_array_equal(whole.take(labels == 3).prob, whole.prob[..., labels == 3])
    np.testing.assert_array_equal(whole.take([6, 0]).reference, whole.reference[[6, 0]])
    np.testing.assert_array_equal(whole.take(1).head_confidence, whole.head_confidence[..., 1:2])
