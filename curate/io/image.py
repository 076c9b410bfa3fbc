"""Safe image decoding: size is checked from the header before any pixel is decoded."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from curate.io.limits import DEFAULT_MAX_PIXELS
from curate.io.statuses import CORRUPT_IMAGE, TOO_LARGE, UNSUPPORTED_FORMAT, SampleError

__all__ = ["DEFAULT_MAX_PIXELS", "decode_image"]

# The limit is enforced below by size; Pillow's own warning would only duplicate it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully; raise SampleError with a status for anything unusable."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise SampleError(TOO_LARGE, f"refused before decoding: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise SampleError(UNSUPPORTED_FORMAT, f"not a readable image ({len(data)} bytes)") from exc
    except Exception as exc:  # a known format whose header is cut or malformed
        raise SampleError(CORRUPT_IMAGE, f"header unreadable: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise SampleError(
            TOO_LARGE, f"{width}x{height} exceeds {max_pixels} pixels; refused before decoding"
        )
    try:
        image.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        raise SampleError(CORRUPT_IMAGE, f"{image.format} decode failed: {exc}") from exc
    return image
