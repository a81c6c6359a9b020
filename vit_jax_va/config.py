"""`ViTConfig`: everything the forward pass and the preprocessing of a ViT need.

The settings mirror timm's `VisionTransformer` constructor so that a timm model maps onto a
config one to one (see `converters.timm`). Sizes are in pixels; token counts exclude nothing
unless said so.
"""

from __future__ import annotations

import dataclasses
from typing import Any

POOLS = ("token", "avg", "max", "avgmax", "map")
# The MLP activations: exact (erf) GELU, its tanh approximation, and CLIP's x * sigmoid(1.702 x).
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A Vision Transformer's architecture and its eval-time preprocessing.

    Attributes:
      image_size: (height, width) of the model input in pixels.
      patch_size: (height, width) of one patch in pixels; must divide `image_size`.
      in_channels: image channels (3 for RGB, 1 for greyscale).
      width: token embedding size (timm's `embed_dim`).
      depth: number of transformer blocks (layers).
      num_heads: attention heads per block; `width` must be divisible by it.
      mlp_ratio: MLP hidden size / width (hidden = int(width * mlp_ratio), as in timm).
      qkv_bias: bias on the fused query/key/value projection.
      proj_bias: bias on the attention output projection and the MLP layers.
      qk_norm: LayerNorm over the head dim on every head's queries and keys (timm `qk_norm`;
        one norm per block for all heads), before the scaled product.
      act: the MLP activation, one of `ACTIVATIONS` (timm `act_layer`); unused with `swiglu`.
      swiglu: a SwiGLU MLP, fc2(silu(fc1_g x) * fc1_x x) with `mlp_hidden` gate and value units
        (EVA-02, DINOv2 giant; timm `SwiGLU` / `SwiGLUPacked`).
      mlp_norm: a LayerNorm over the MLP's hidden units before fc2 (timm `scale_mlp` /
        `scale_mlp_norm`: EVA-02's inner norm).
      rope: EVA-02's rotary position embedding (`vit_jax_va.positions.rotary_embedding`) on every
        head's patch queries and keys, after `qk_norm`; prefix tokens are not rotated.
      rope_ref_grid: the grid the rotary coordinates are rescaled to (timm `ref_feat_shape`: the
        pre-training grid), or None for the plain patch indices.
      rope_temperature, rope_offset, rope_xy, rope_rotate_half: timm's `rope_temperature`,
        `rope_grid_offset`, `rope_grid_indexing == 'xy'` and `rope_rotate_half`.
      rel_pos_bias: BEiT's relative position bias: each block learns a bias per head for every
        (query, key) offset on the patch grid, plus three for class -> patch, patch -> class
        and class -> class (with a class token), added to the attention logits before the
        softmax. No prefix token but the class token (timm's `vit_relpos_*` have none).
      class_token: prepend a learned class token.
      distillation_token: DeiT's distillation token (token 1) and its second head.
      num_register_tokens: learned register tokens after the class token.
      pos_embed: learned absolute position embedding (timm `pos_embed='learn'`).
      no_embed_class: position embedding covers the patches only (prefix tokens get none).
      pre_norm: LayerNorm after the embedding (CLIP style); the patch conv then has no bias.
      final_norm: LayerNorm after the last block (or after pooling when `fc_norm`).
      fc_norm: apply the final LayerNorm after pooling instead of before.
      pool: 'token' (class token), 'avg', 'max' or 'avgmax' over the patch tokens, or 'map':
        attention pooling by a learned latent query (SigLIP; timm `AttentionPoolLatent`).
      pool_include_prefix: include prefix tokens in avg/max pooling.
      layer_scale: per-channel scales (`ls1`, `ls2`) on the residual branches.
      layer_norm_eps: epsilon of every LayerNorm (timm ViTs use 1e-6).
      num_classes: classifier outputs; 0 means the model returns pooled features.
      mean, std: per-channel normalisation applied by `preprocess` (pixels scaled to 0..1 first).
      interpolation: resize filter used by `preprocess`.
      crop_fraction: timm's `crop_pct`: resize to size / crop_fraction, then centre-crop.
      crop_mode: 'center' (resize shorter side, centre crop) or 'squash' (resize both sides).
      class_names: optional names of the classes, in logit order.
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: tuple[int, int] = (16, 16)
    in_channels: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    proj_bias: bool = True
    qk_norm: bool = False
    act: str = "gelu"
    swiglu: bool = False
    mlp_norm: bool = False
    rel_pos_bias: bool = False
    rope: bool = False
    rope_ref_grid: tuple[int, int] | None = None
    rope_temperature: float = 10000.0
    rope_offset: float = 0.0
    rope_xy: bool = False
    rope_rotate_half: bool = False
    class_token: bool = True
    distillation_token: bool = False
    num_register_tokens: int = 0
    pos_embed: bool = True
    no_embed_class: bool = False
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool = False
    pool: str = "token"
    pool_include_prefix: bool = False
    layer_scale: bool = False
    layer_norm_eps: float = 1e-6
    num_classes: int = 1000
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_fraction: float = 0.875
    crop_mode: str = "center"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.rope_ref_grid is not None:
            object.__setattr__(self, "rope_ref_grid", _pair(self.rope_ref_grid))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        problems = []
        for axis, (size, patch) in enumerate(zip(self.image_size, self.patch_size)):
            if patch <= 0 or size % patch:
                problems.append(
                    f"image_size[{axis}]={size} is not a multiple of patch_size[{axis}]={patch}")
        if self.width % self.num_heads:
            problems.append(f"width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.pool not in POOLS:
            problems.append(f"pool={self.pool!r} is not one of {POOLS}")
        if self.act not in ACTIVATIONS:
            problems.append(f"act={self.act!r} is not one of {ACTIVATIONS}")
        if self.rel_pos_bias and self.num_prefix_tokens != int(self.class_token):
            problems.append("rel_pos_bias=True allows no prefix token but the class token")
        if self.rope and self.head_dim % 4:
            problems.append(f"rope=True needs a head dim divisible by 4; got {self.head_dim}")
        if self.rope_ref_grid is not None and not self.rope:
            problems.append("rope_ref_grid is set without rope=True")
        if self.pool == "token" and not self.class_token:
            problems.append("pool='token' needs class_token=True")
        if self.distillation_token and not self.class_token:
            problems.append("distillation_token=True needs class_token=True")
        if self.distillation_token and self.pool != "token":
            problems.append("distillation_token=True needs pool='token'")
        if self.distillation_token and (self.num_register_tokens or self.no_embed_class):
            problems.append("distillation_token=True supports neither register tokens "
                            "nor no_embed_class (timm's DeiT does not either)")
        if self.crop_mode not in CROP_MODES:
            problems.append(f"crop_mode={self.crop_mode!r} is not one of {CROP_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            problems.append(f"mean/std have {len(self.mean)}/{len(self.std)} entries for "
                            f"in_channels={self.in_channels}")
        if not 0 < self.crop_fraction <= 1:
            problems.append(f"crop_fraction={self.crop_fraction} must be in (0, 1]")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            problems.append(f"{len(self.class_names)} class_names for num_classes={self.num_classes}")
        if problems:
            raise ValueError("invalid ViTConfig: " + "; ".join(problems))

    # Derived sizes -------------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid
        return rows * cols

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation, registers (in that order)."""
        return int(self.class_token) + int(self.distillation_token) + self.num_register_tokens

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        # The epsilon keeps a ratio read off a checkpoint (hidden / width) from rounding down.
        return int(self.width * self.mlp_ratio + 1e-6)

    @property
    def num_heads_total(self) -> int:
        """depth * num_heads: the length of the flat head index `layer * num_heads + head`."""
        return self.depth * self.num_heads

    @property
    def pos_embed_length(self) -> int:
        return self.num_patches if self.no_embed_class else self.num_tokens

    # Serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTConfig":
        """Inverse of `to_dict`; refuses keys it does not know, naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig keys: {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ViTConfig":
        return dataclasses.replace(self, **changes)

    # Presets -------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **changes: Any) -> "ViTConfig":
        """Named architectures (timm's names), e.g. `ViTConfig.preset('vit_base_patch16_224')`."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **changes})


def _vit(width: int, depth: int, heads: int, patch: int, size: int = 224) -> dict[str, Any]:
    return dict(width=width, depth=depth, num_heads=heads, patch_size=patch, image_size=size,
                crop_fraction=0.9 if size == 224 else 1.0,
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


PRESETS: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": _vit(192, 12, 3, 16),
    "vit_small_patch16_224": _vit(384, 12, 6, 16),
    "vit_small_patch32_224": _vit(384, 12, 6, 32),
    "vit_base_patch16_224": _vit(768, 12, 12, 16),
    "vit_base_patch32_224": _vit(768, 12, 12, 32),
    "vit_large_patch16_224": _vit(1024, 24, 16, 16),
    "deit_tiny_patch16_224": dict(width=192, depth=12, num_heads=3),
    "deit_small_patch16_224": dict(width=384, depth=12, num_heads=6),
    "deit_base_patch16_224": dict(width=768, depth=12, num_heads=12),
}

