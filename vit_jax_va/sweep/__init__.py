"""The batch sweep: importance, strength and patterns for every image, into a results store.

Stages (each resumable; see `vit_jax_va.store` for what they write):

1. analyse   per chunk of images: every head pruned alone in every mode (`ablate_heads`),
             Taylor importance, the strength statistics of every head, pattern items of the
             sampled images, full attention of the kept images. One `.npz` per chunk.
2. collect   chunks -> the store's arrays, streamed (memory does not grow with the run).
3. curve     cumulative pruning curves in the order of the mean probability drop, measured on
             every other image and ranked on the rest (held out).
4. patterns  autoencoders for the patch and CLS pattern items, 2-D maps, clusters.
5. overview  a 2-D layout of the images' pre-logit features (the image overview).

A killed sweep (even `kill -9`) started again with the same arguments continues from the last
finished chunk or stage and ends with the same results as an uninterrupted run.

Modules: `options` (`SweepOptions`, the stages' names), `images` (which images of a data set
can be read; thumbnails), `stages` (what each stage computes, as functions of arrays),
`identity` (what a run is, and how a resumed run differs), `progress` (progress callbacks),
`runner` (`Sweep`: the manifest, the chunks, several hosts).
"""

from vit_jax_va.sweep.images import THUMBNAIL_PIXELS, thumbnail, thumbnail_shape, usable_images
from vit_jax_va.sweep.options import STAGES, SweepOptions
from vit_jax_va.sweep.runner import Sweep
from vit_jax_va.sweep.stages import image_layout

__all__ = ["STAGES", "THUMBNAIL_PIXELS", "Sweep", "SweepOptions", "image_layout", "thumbnail",
           "thumbnail_shape", "usable_images"]
