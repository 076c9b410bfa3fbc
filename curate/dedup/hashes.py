"""Hashes of one image: its bytes (sha256), its decoded pixels, and perceptual pHash / dHash.

The pixel hash is blake2b (8 bytes) of the image converted to RGB and resized to 32 x 32 with
a fixed filter (bilinear): a PNG re-save of a JPEG's decoded pixels gets the JPEG's pixel hash.
pHash and dHash are ``imagehash``'s 64-bit hashes packed big-endian into a uint64, so the
Hamming distance of two hashes is the popcount of their xor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from curate.io.image import DEFAULT_MAX_PIXELS, decode_image

PIXEL_SIZE = 32  # the side the pixel hash resizes to
PIXEL_FILTER = Image.Resampling.BILINEAR
HASH_BITS = 64


@dataclass(frozen=True)
class ImageHashes:
    """The hashes of one image."""

    sha256: bytes
    pixels: int
    phash: int
    dhash: int


def bits_to_int(bits: np.ndarray) -> int:
    """64 booleans (imagehash's ``hash`` array, row-major) as an unsigned integer."""
    return int.from_bytes(np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes(), "big")


def pixel_hash(image: Image.Image) -> int:
    """blake2b-64 of the RGB image resized to PIXEL_SIZE x PIXEL_SIZE (fixed filter)."""
    small = image.convert("RGB").resize((PIXEL_SIZE, PIXEL_SIZE), PIXEL_FILTER)
    return int.from_bytes(hashlib.blake2b(small.tobytes(), digest_size=8).digest(), "big")


def hash_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHashes:
    """Every hash of an image's bytes; raises ``SampleError`` (a status) when it cannot be
    decoded."""
    image = decode_image(data, max_pixels)
    rgb = image.convert("RGB")
    return ImageHashes(
        sha256=hashlib.sha256(data).digest(),
        pixels=pixel_hash(rgb),
        phash=bits_to_int(imagehash.phash(rgb).hash),
        dhash=bits_to_int(imagehash.dhash(rgb).hash),
    )


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    as_bytes = np.ascontiguousarray(values, dtype=np.uint64).view(np.uint8)
    return np.unpackbits(as_bytes).reshape(len(values), HASH_BITS).sum(axis=1).astype(np.int32)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Hamming distances of uint64 hashes (element-wise, broadcast)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return popcount(np.atleast_1d(x))
