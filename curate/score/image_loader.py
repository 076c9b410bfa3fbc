"""Image bytes to a model-ready tensor: PIL on the CPU, or JPEG decode on the GPU.

``PilImageLoader`` is the reference path: decode with Pillow (size checked from the header
first), then open_clip's eval transform. ``TensorJpegLoader`` decodes JPEGs with
torchvision's ``decode_jpeg`` on the scorer's device (nvJPEG on CUDA) and applies the same
transform to the tensor there (bicubic antialiased resize of the shorter side, centre crop,
scale, normalise); ``decode_batch`` hands a whole batch to the decoder in one call (nvJPEG's
batched decode) and resizes the images of one size together. Anything it cannot decode
(other formats, CMYK, broken bytes) goes through the PIL path, which also gives the failure
its status. Tensor resizing is close to
Pillow's but not bit-identical, so the GPU decoder is a choice (``--decode``), on by default
only on CUDA.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Protocol

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg

from curate.io import statuses as st
from curate.io.image import decode_image

logger = logging.getLogger(__name__)

# torchvision 0.29 points to TorchCodec for image decoding; decode_jpeg still works and is
# what this module uses until TorchCodec's GPU JPEG decoder is on the pinned stack.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding", category=DeprecationWarning
)

DECODERS = ("auto", "cpu", "cuda")
_END_OF_IMAGE = b"\xff\xd9"
_TRAILING_PADDING = b"\x00\r\n "  # bytes some writers append after the marker


class ImageLoader(Protocol):
    """Encoded image bytes in, a preprocessed [3, H, W] float tensor out (or SampleError)."""

    def __call__(self, data: bytes) -> torch.Tensor: ...


class BatchImageLoader(ImageLoader, Protocol):
    """A loader that also decodes a whole batch in one call (the GPU's batched decoder)."""

    def decode_batch(self, images: list[bytes]) -> list[torch.Tensor | st.SampleError]: ...


class PilImageLoader:
    """Pillow decode (bounded by ``max_pixels``) and open_clip's eval transform."""

    def __init__(self, preprocess: T.Compose, max_pixels: int) -> None:
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __call__(self, data: bytes) -> torch.Tensor:
        image = decode_image(data, self.max_pixels)
        try:
            return self.preprocess(image)
        except Exception as exc:
            raise st.SampleError(st.CORRUPT_IMAGE, f"preprocessing failed: {exc}") from exc


@dataclass(frozen=True)
class EvalTransform:
    """The parameters of open_clip's default eval transform (shortest-side resize)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_compose(cls, preprocess: T.Compose) -> EvalTransform | None:
        """Read Resize/CenterCrop/Normalize from open_clip's Compose; None if it is another."""
        steps = {type(step).__name__: step for step in preprocess.transforms}
        resize, crop, normalize = (
            steps.get("Resize"),
            steps.get("CenterCrop"),
            steps.get("Normalize"),
        )
        if resize is None or crop is None or normalize is None:
            return None
        if resize.interpolation != T.InterpolationMode.BICUBIC or resize.max_size is not None:
            return None
        size = resize.size if isinstance(resize.size, int) else resize.size[0]
        if isinstance(resize.size, (list, tuple)) and len(resize.size) != 1:
            return None  # a squash resize to (h, w), not the shorter side
        if tuple(crop.size) != (size, size):
            return None
        return cls(size, tuple(normalize.mean), tuple(normalize.std))


class TensorJpegLoader:
    """JPEG decode and eval transform on ``device``; the PIL loader for everything else."""

    def __init__(
        self, transform: EvalTransform, device: torch.device, fallback: ImageLoader, max_pixels: int
    ) -> None:
        self.transform = transform
        self.device = device
        self.fallback = fallback
        self.max_pixels = max_pixels
        self.mean = torch.tensor(transform.mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(transform.std, device=device).view(3, 1, 1)
        # the decoder's own CUDA stream, so that its memory never comes from the model's pool
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _decodable(self, data: bytes) -> bool:
        """A complete baseline/progressive RGB or greyscale JPEG within the pixel limit.

        nvJPEG decodes a truncated JPEG without an error (the missing rows come out grey), so
        only bytes that end in the end-of-image marker go to the GPU; the rest go to Pillow,
        which decodes them fully and gives a cut file its ``corrupt_image`` status.
        """
        if not data.rstrip(_TRAILING_PADDING).endswith(_END_OF_IMAGE):
            return False
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
                return (
                    header.format == "JPEG"
                    and header.mode in ("RGB", "L")
                    and width * height <= self.max_pixels
                )
        except Exception:
            return False

    def __call__(self, data: bytes) -> torch.Tensor:
        (result,) = self.decode_batch([data])
        if isinstance(result, st.SampleError):
            raise result
        return result

    def _decode_one(self, data: bytes) -> torch.Tensor | None:
        """uint8 [3, H, W] on the device, or None when the decoder refuses the bytes."""
        self._drain()  # a call the decoder refused may have left work on the stream
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None

    def _fallback_result(self, data: bytes) -> torch.Tensor | st.SampleError:
        try:
            return self.fallback(data).to(self.device)
        except st.SampleError as failure:
            return failure

    def decode_batch(self, images: list[bytes]) -> list[torch.Tensor | st.SampleError]:
        """Every image's model input (on the device) or failure, in order.

        On CUDA the work runs on the loader's own stream. nvJPEG's hardware decoder writes its
        outputs without waiting for work already queued on the stream it is given (see
        pytorch/vision#9606, meta-pytorch/torchcodec#1634): on the model's stream it was handed
        memory that queued kernels still read, and ViT-L-14 scored 3 of 2,048 samples up to
        0.067 off on an H200. On its own stream, after that stream has drained, the decoder
        only gets memory the loader itself freed and no longer uses; the results are handed to
        the caller's stream (which waits for them) and kept from reuse until it is done.
        """
        if self.stream is None:
            return self._decode_batch(images)
        consumer = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            self._drain()
            results = self._decode_batch(images)
        consumer.wait_stream(self.stream)
        for result in results:
            if isinstance(result, torch.Tensor):
                result.record_stream(consumer)
        return results

    def _drain(self) -> None:
        """Wait for the work queued on the decoder's stream (none off CUDA)."""
        if self.stream is not None:
            self.stream.synchronize()

    def _decode_batch(self, images: list[bytes]) -> list[torch.Tensor | st.SampleError]:
        """The decodable JPEGs go to the decoder in one call; when it refuses the batch (one
        bad file fails the whole call), each is decoded on its own and what it refuses goes to
        Pillow. Decoded images of one size are resized, cropped and normalised together."""
        results: list[torch.Tensor | st.SampleError | None] = [None] * len(images)
        positions = [i for i, data in enumerate(images) if self._decodable(data)]
        for i in set(range(len(images))) - set(positions):
            results[i] = self._fallback_result(images[i])
        decoded: list[torch.Tensor | None] = []
        if positions:
            raws = [torch.frombuffer(bytearray(images[i]), dtype=torch.uint8) for i in positions]
            try:
                decoded = list(decode_jpeg(raws, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                decoded = [self._decode_one(images[i]) for i in positions]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for position, pixels in zip(positions, decoded, strict=True):
            if pixels is None:
                results[position] = self._fallback_result(images[position])
            else:
                by_size.setdefault(tuple(pixels.shape), []).append(position)
        pixels_at = dict(zip(positions, decoded, strict=True))
        for members in by_size.values():
            prepared = self.preprocess(torch.stack([pixels_at[i] for i in members]))
            for position, image in zip(members, prepared, strict=True):
                results[position] = image
        return results  # type: ignore[return-value]  (every position is filled above)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] to the normalised, centre-cropped model input."""
        size = self.transform.size
        image = TF.resize(pixels, size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        image = TF.center_crop(image, [size, size])
        image = image.float().div_(255.0)
        return (image - self.mean) / self.std


def make_image_loader(
    preprocess: T.Compose, device: torch.device, decoder: str, max_pixels: int
) -> ImageLoader | BatchImageLoader:
    """The loader for ``decoder`` (auto: the GPU's JPEG decoder on CUDA, Pillow otherwise)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    pil = PilImageLoader(preprocess, max_pixels)
    if decoder == "cuda" and device.type != "cuda":
        raise ValueError(f"decoder cuda needs a CUDA device, the model is on {device}")
    if decoder == "cpu" or device.type != "cuda":
        return pil
    transform = EvalTransform.from_compose(preprocess)
    if transform is None:
        logger.info("JPEG decode stays on the CPU: the model's transform is not a plain resize")
        return pil
    return TensorJpegLoader(transform, device, pil, max_pixels)
