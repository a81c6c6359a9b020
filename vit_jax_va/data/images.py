"""Reading one untrusted image file into an 8-bit PIL image, and what a sweep records of it.

`read_image` names the file and the reason (`ImageFileError`) for a file that cannot be used;
`to_8bit` converts any mode to 8-bit greyscale or RGB; `pixel_digest` hashes decoded pixels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")
# 40 megapixels: larger than any camera photo a ViT sweep needs, small enough that one decoded
# image (160 MB as RGBA) cannot exhaust memory. PIL's own guard (89 MP warning, 179 MP error)
# is global state; this limit is per data set.
MAX_PIXELS = 40_000_000

class DataError(ValueError):
    """A data file or folder cannot be used; the message names it."""


class ImageFileError(DataError):
    """One image file cannot be used: `path` and `reason` (the message is "path: reason")."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class UnsupportedModeError(ValueError):
    """A PIL image mode with no defined conversion to 8 bits."""


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
               background: int = 0) -> Image.Image:
    """Open an image file and return it as an 8-bit 'L' or 'RGB' PIL image (see `to_8bit`).

    Raises `ImageFileError` naming the file and the reason when it cannot be used: missing, empty,
    not an image, more than `max_pixels` pixels (checked from the header, before decoding, so a
    decompression bomb is never decoded), truncated or corrupt.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageFileError(path, f"cannot be read ({err.strerror or err})") from None
    if size == 0:
        raise ImageFileError(path, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # We check the pixel count ourselves; PIL's global bomb guard would only warn here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                pixels = image.width * image.height
                if pixels > max_pixels:
                    raise ImageFileError(path, f"{image.width} x {image.height} = {pixels:,} pixels "
                                         f"is over the limit of {max_pixels:,} (possible decompression "
                                         f"bomb; raise max_pixels if the file is trusted)")
                image.load()
                return to_8bit(image, background=background)
        except Image.DecompressionBombError as err:
            raise ImageFileError(path, f"over PIL's pixel limit (possible decompression bomb): "
                                       f"{err}") from None
        except UnidentifiedImageError:
            raise ImageFileError(path, "not an image (PIL cannot identify the format)") from None
        except ImageFileError:
            raise
        except UnsupportedModeError as err:
            raise ImageFileError(path, str(err)) from None
        except (OSError, SyntaxError, ValueError, zlib.error, EOFError) as err:
            raise ImageFileError(path, f"truncated or corrupt image ({err})") from None


def pixel_digest(image: Image.Image | np.ndarray) -> str:
    """What an image is, as a sweep records it: the SHA-256 (hex) of its decoded pixels (an
    8-bit PIL image as `read_image` returns it, or a uint8 array `[h, w(, c)]`) with their shape.

    The pixels, not the file: they are what the model sees, and they are hashed in the reads a
    sweep makes anyway (the up-front check and each chunk), so recording them costs no extra
    read and a file swapped between two reads is caught. A file re-encoded without loss keeps its
    digest; one that a new decoder reads differently does not, and its results would differ."""
    pixels = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha256(f"{pixels.dtype.str}{list(pixels.shape)}".encode() + pixels.tobytes()).hexdigest()


def to_8bit(image: Image.Image, *, background: int = 0) -> Image.Image:
    """Any PIL image -> 8-bit 'L' (greyscale sources) or 'RGB' (colour sources).

    - 16- and 32-bit integer greyscale ('I;16*', 'I'): the 16-bit range 0..65535 is scaled to
      0..255 (`round(v * 255 / 65535)`); PIL's own `convert('L')` would clip everything over 255.
    - Transparent images ('RGBA', 'LA', 'PA', palette with transparency): composited over a
      uniform `background` grey level (0 = black, Fashion-MNIST's background; 255 = white).
    - 'P' (palette), 'CMYK', 'YCbCr', '1', ...: PIL's conversion to RGB or L.
    - 'F' (float) has no defined 0..255 range and raises `UnsupportedModeError`.
    """
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled)
    if mode == "F":
        raise UnsupportedModeError("floating-point pixels (mode 'F') have no defined 0..255 range")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        return image.convert("L")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        grey = image.mode in ("LA", "La")
        base = Image.new("RGBA", image.size, (background,) * 3 + (255,))
        return Image.alpha_composite(base, image.convert("RGBA")).convert("L" if grey else "RGB")
    return image.convert("RGB")
