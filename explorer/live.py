"""Live computation for the one selected image, when the store does not hold what a view needs.

The sweep keeps the full attention `[L, H, T, T]` of a few images only, and may have swept a
subset of the prune modes. For the selected image the explorer then runs the model itself,
through the same library functions the sweep uses (`ViT.__call__` with `return_attention`,
`vit_jax_va.importance.ablate_heads`), on the image the sweep read. Results are memoised per
(run, image) with `pn.cache`; the model and the image reader are opened once per process.

The model is found from the run's manifest (`model.source`: "demo" or a checkpoint directory)
and must be the model the sweep used, its config and its weights (`vit_jax_va.model_identity`),
or live numbers would not match the stored ones. Images are re-read from the data set the
manifest describes; when it is gone, the stored thumbnails are used if they are the model's full
input size (the demo's are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import panel as pn

from vit_jax_va import store


class LiveUnavailable(RuntimeError):
    """The model or the image of a run cannot be loaded for live computation (says why)."""


def _manifest(run_path: str) -> dict:
    return store.read_manifest(run_path)


# Process-wide caches (`pn.cache`, shared by every session, bounded): a model and its compiled
# forward pass per run, the reader of a run's images, and the results per (run, image).

@pn.cache(max_items=4)
def load_model(run_path: str):
    """The run's model (`vit_jax_va.ViT`), checked against the config and weights in the manifest."""
    import vit_jax_va

    from vit_jax_va.inputs import MissingExtraError, resolve_model

    model_info = _manifest(run_path)["model"]
    origin = str(model_info.get("source", ""))  # "demo" or a checkpoint directory
    # A sweep run with --image-size ran the model at the size its config records.
    size = tuple((model_info.get("config") or {}).get("image_size") or ()) or None
    if origin != "demo" and not (origin and Path(origin).is_dir()):
        raise LiveUnavailable(f"the run's model {origin!r} is neither 'demo' nor a "
                              "vit_jax_va checkpoint directory")
    try:
        model = resolve_model(origin, image_size=size)
    except ImportError as err:
        raise LiveUnavailable(f"the run's model {origin!r} cannot be loaded ({err})") from None
    except MissingExtraError as err:
        raise LiveUnavailable(str(err)) from None
    changes = vit_jax_va.identity_differences(model_info, model)
    if changes:
        raise LiveUnavailable(f"the model at {origin!r} is not the run's model ({'; '.join(changes)})")
    return model


@pn.cache(max_items=4)
def _image_reader(run_path: str):
    """A callable index -> raw image (PIL image or uint8 array) for the run's images."""
    data = _manifest(run_path)["data"]
    ids = store.load_npy(Path(run_path) / "images" / "ids.npy").astype(str)
    kind = data.get("source")
    reader = None
    try:
        if kind in ("mnist", "fashion-mnist") and data.get("directory"):
            from vit_jax_va import data as vdata

            dataset = vdata.load_mnist(data["directory"], data.get("split", "test"),
                                       class_names=data.get("class_names") or vdata.MNIST_CLASSES,
                                       name=kind)
            where = {id_: i for i, id_ in enumerate(dataset.ids)}
            reader = lambda index: dataset.image(where[ids[index]])  # noqa: E731
        elif kind == "image-folder" and data.get("directory"):
            from vit_jax_va.data import read_image

            root = Path(data["directory"])
            reader = lambda index: read_image(root / ids[index])  # noqa: E731
        elif kind == "image-files":
            from vit_jax_va.data import read_image

            reader = lambda index: read_image(ids[index])  # noqa: E731
    except (OSError, ValueError, ImportError):
        reader = None
    return reader if reader is not None else _thumbnail_reader(run_path, kind)


def _thumbnail_reader(run_path: str, kind):
    run = store.open_run(run_path)
    thumbnails = run.array("images", "thumbnails")
    c = run.config
    if tuple(thumbnails.shape[1:3]) != tuple(c.image_size) or thumbnails.shape[3] != c.in_channels:
        def unavailable(index):
            raise LiveUnavailable(f"the run's images ({kind}) cannot be read again and its "
                                  f"thumbnails are smaller than the model input")
        return unavailable
    return lambda index: np.asarray(thumbnails[index])[..., 0] if c.in_channels == 1 else np.asarray(thumbnails[index])


def model_input(run_path: str, image: int) -> np.ndarray:
    """The preprocessed image `[1, height, width, channels]` the sweep fed the model."""
    from vit_jax_va import preprocess

    model = load_model(run_path)
    try:
        raw = _image_reader(run_path)(int(image))
    except (OSError, ValueError, KeyError) as err:
        raise LiveUnavailable(f"image {image} cannot be read: {err}") from None
    return preprocess(model.config, [raw])


@pn.cache(max_items=4)
def _forward(run_path: str):
    """The run's model as one jitted function images -> attention (compiled once per run and
    process; the eager NNX call dispatches op by op, which is slow for a ViT-B on CPU)."""
    import jax
    from flax import nnx

    graphdef, weights = nnx.split(load_model(run_path))
    # The sweep's matmul precision, so that live numbers match stored ones on GPU/TPU too.
    precision = _manifest(run_path).get("options", {}).get("precision", "highest")

    @jax.jit
    def forward(images):
        with jax.default_matmul_precision(precision):
            return nnx.merge(graphdef, weights)(images, return_attention=True).attention

    return forward


@pn.cache(max_items=64)
def attention(run_path: str, image: int) -> np.ndarray:
    """Attention `[L, H, T, T]` of one image, computed by the model."""
    return np.asarray(_forward(run_path)(model_input(run_path, image))[0])


@pn.cache(max_items=64)
def ablation(run_path: str, image: int, mode: str):
    """Every head of one image pruned alone in one prune mode (`vit_jax_va.importance`):
    a `HeadAblation` with per-head arrays `[1, L, H, 1]`. The reference class is the one the
    sweep used, so live values compare with stored ones (a backbone has none), and the patch
    tokens are measured when the sweep measured them."""
    from vit_jax_va.importance import ablate_heads

    import jax

    model = load_model(run_path)
    path = Path(run_path) / "importance" / "reference.npy"
    reference = (np.asarray([store.load_npy(path, mmap=True)[int(image)]]) if path.is_file() else None)
    options = _manifest(run_path).get("options", {})
    with jax.default_matmul_precision(options.get("precision", "highest")):
        return ablate_heads(model, model_input(run_path, image), reference, modes=(mode,), batch_size=1,
                            patch_tokens=bool(options.get("patch_tokens", False)))
