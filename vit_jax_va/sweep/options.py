"""The settings of a sweep (`SweepOptions`), all recorded in its manifest, and its stages."""

from __future__ import annotations

import dataclasses

import numpy as np

from vit_jax_va.masks import PRUNE_MODES

STAGES = ("analyse", "collect", "curve", "patterns", "overview")


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """Settings of a sweep; all of them are recorded in the manifest.

    modes: prune modes swept for every head (`vit_jax_va.PRUNE_MODES`).
    batch_size: images per jitted call. chunk_size: images per resumable unit of work.
    keep_attention: which images keep their full attention `[L, H, T, T]`: a count N (the
      first N images) or a tuple of image positions in the run (0-based).
    pattern_images: images (seeded choice) whose per-head pattern items train the autoencoders.
    latent_dim, clusters, projection: the pattern space (`vit_jax_va.pattern_space`).
    curve_images: images the cumulative pruning curves are measured on (every other image of
      the run, at most this many; the heads are ranked on the others: held out).
    patch_tokens: also measure what pruning each head does to the last layer's patch tokens
      (`patch_cos`, `patch_rel_l2`: what dense-prediction heads read).
    precision: JAX matmul precision of the sweep ("highest" = full float32 on GPU/TPU too).
    seed: every random choice (pattern sample, autoencoder, projections).
    """

    modes: tuple[str, ...] = PRUNE_MODES
    batch_size: int = 16
    chunk_size: int = 64
    keep_attention: int | tuple[int, ...] = 4
    pattern_images: int = 200
    latent_dim: int = 8
    clusters: int = 8
    projection: str = "tsne"
    curve_images: int = 256
    patch_tokens: bool = False
    precision: str = "highest"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in PRUNE_MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {PRUNE_MODES}; got {self.modes}")
        if "head" not in self.modes:
            raise ValueError("modes must include 'head' (the curve and the summary rank heads by it)")
        for name in ("batch_size", "chunk_size", "pattern_images", "latent_dim", "clusters",
                     "curve_images"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        keep = self.keep_attention
        if isinstance(keep, (list, tuple)):
            if any(int(i) < 0 for i in keep):
                raise ValueError(f"keep_attention positions must be >= 0, got {tuple(keep)}")
            object.__setattr__(self, "keep_attention", tuple(sorted({int(i) for i in keep})))
        elif keep < 0:
            raise ValueError(f"keep_attention must be a count >= 0 or image positions, got {keep}")

    def kept_attention(self, num_images: int) -> np.ndarray:
        """Positions `[K]` of the images whose full attention the sweep keeps."""
        if isinstance(self.keep_attention, tuple):
            return np.asarray(self.keep_attention, np.int64)
        return np.arange(min(self.keep_attention, num_images))
