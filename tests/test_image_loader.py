"""Image loaders: Pillow reference path, tensor JPEG decode (GPU path, run here on CPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from curate.io.image import DEFAULT_MAX_PIXELS
from curate.io.statuses import SampleError
from curate.models import ModelSpec, load_model
from curate.score.image_loader import (
    EvalTransform,
    PilImageLoader,
    TensorJpegLoader,
    make_image_loader,
)


@pytest.fixture(scope="module")
def preprocess():
    return load_model(ModelSpec("fp-small-vit", random_init=True)).preprocess


def _encoded(size: tuple[int, int], mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A smooth random picture (photo-like, so resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, quality=90)
    return out.getvalue()


def _tensor_loader(preprocess) -> TensorJpegLoader:
    transform = EvalTransform.from_compose(preprocess)
    assert transform is not None
    pil = PilImageLoader(preprocess, DEFAULT_MAX_PIXELS)
    return TensorJpegLoader(transform, torch.device("cpu"), pil, DEFAULT_MAX_PIXELS)


def test_eval_transform_is_read_from_open_clip(preprocess) -> None:
    transform = EvalTransform.from_compose(preprocess)
    assert transform is not None and transform.size == 64
    assert transform.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


@pytest.mark.parametrize(
    ("size", "mode"),
    [((512, 384), "RGB"), ((300, 700), "RGB"), ((64, 64), "RGB"), ((90, 200), "L")],
)
def test_tensor_jpeg_decode_is_close_to_pillow(preprocess, size, mode) -> None:
    data = _encoded(size, mode)
    reference = PilImageLoader(preprocess, DEFAULT_MAX_PIXELS)(data)
    tensor = _tensor_loader(preprocess)(data)
    assert tensor.shape == reference.shape == (3, 64, 64)
    difference = (tensor - reference).abs()
    # same libjpeg decode; bicubic resampling differs from Pillow's by a few levels at most
    assert difference.mean() < 0.01 and difference.max() < 0.15


def test_what_the_tensor_path_cannot_decode_goes_through_pillow(preprocess) -> None:
    loader, pil = _tensor_loader(preprocess), PilImageLoader(preprocess, DEFAULT_MAX_PIXELS)
    for data in (_encoded((80, 60), fmt="PNG"), _encoded((80, 60), mode="CMYK")):
        assert torch.equal(loader(data), pil(data))
    jpeg = _encoded((120, 90))
    with pytest.raises(SampleError) as failure:
        loader(jpeg[: len(jpeg) // 2])
    assert failure.value.status == "corrupt_image"
    small_pil = PilImageLoader(preprocess, 100)
    small_limit = TensorJpegLoader(loader.transform, torch.device("cpu"), small_pil, 100)
    with pytest.raises(SampleError) as failure:
        small_limit(jpeg)
    assert failure.value.status == "too_large"


def test_only_complete_jpegs_reach_the_tensor_decoder(preprocess) -> None:
    """nvJPEG decodes a cut file without an error, so a cut file must never reach it."""
    transform = EvalTransform.from_compose(preprocess)
    pil = PilImageLoader(preprocess, DEFAULT_MAX_PIXELS)
    sent_to_pillow: list[int] = []

    def fallback(data: bytes) -> torch.Tensor:
        sent_to_pillow.append(len(data))
        return pil(data)

    loader = TensorJpegLoader(transform, torch.device("cpu"), fallback, DEFAULT_MAX_PIXELS)
    jpeg = _encoded((120, 90))
    loader(jpeg)
    loader(jpeg + b"\x00\x00\r\n")  # padding after the end-of-image marker is harmless
    assert sent_to_pillow == []
    for cut in (len(jpeg) - 2, len(jpeg) * 3 // 4):
        with pytest.raises(SampleError) as failure:
            loader(jpeg[:cut])
        assert failure.value.status == "corrupt_image"
    assert sent_to_pillow == [len(jpeg) - 2, len(jpeg) * 3 // 4]


def test_a_batch_decodes_like_one_image_at_a_time(preprocess) -> None:
    """decode_batch: each JPEG as decoding it alone gives, the rest as Pillow does (failures
    with Pillow's status), in order."""
    from torchvision.io import ImageReadMode, decode_jpeg

    loader, pil = _tensor_loader(preprocess), PilImageLoader(preprocess, DEFAULT_MAX_PIXELS)
    jpeg = _encoded((120, 90), seed=3)
    batch = [
        _encoded((512, 384), seed=1),
        _encoded((80, 60), fmt="PNG"),
        _encoded((512, 384), seed=2),  # same size as the first: resized together
        jpeg[: len(jpeg) // 2],
        _encoded((90, 200), mode="L"),
        _encoded((80, 60), mode="CMYK"),
        b"not an image",
    ]
    results = loader.decode_batch(batch)
    failed = [isinstance(result, SampleError) for result in results]
    assert failed == [False, False, False, True, False, False, True]
    for index in (0, 2, 4):  # complete RGB or greyscale JPEGs: the tensor decoder
        raw = torch.frombuffer(bytearray(batch[index]), dtype=torch.uint8)
        alone = loader.preprocess(decode_jpeg(raw, mode=ImageReadMode.RGB))
        assert torch.equal(results[index], alone)
    for index in (1, 5):  # PNG, CMYK: Pillow
        assert torch.equal(results[index], pil(batch[index]))
    for index in (3, 6):
        with pytest.raises(SampleError) as failure:
            pil(batch[index])
        assert results[index].status == failure.value.status


def test_a_batch_the_decoder_refuses_falls_back_image_by_image(preprocess, monkeypatch) -> None:
    """One file the decoder refuses fails its batched call: each image is then decoded alone."""
    import curate.score.image_loader as image_loader

    good, bad = _encoded((64, 48), seed=4), _encoded((64, 48), seed=5)
    real_decode = image_loader.decode_jpeg

    def refuses_bad(data, **kwargs):
        inputs = data if isinstance(data, list) else [data]
        if any(bytes(raw.numpy()) == bad for raw in inputs):
            raise RuntimeError("decoder refused the data")
        return real_decode(data, **kwargs)

    monkeypatch.setattr(image_loader, "decode_jpeg", refuses_bad)
    loader = _tensor_loader(preprocess)
    pil = PilImageLoader(preprocess, DEFAULT_MAX_PIXELS)
    first, second = loader.decode_batch([good, bad])
    assert torch.equal(first, loader(good))
    assert torch.equal(second, pil(bad))  # Pillow decoded what the tensor decoder refused


def test_loader_choice(preprocess) -> None:
    cpu = torch.device("cpu")
    assert isinstance(make_image_loader(preprocess, cpu, "auto", 10), PilImageLoader)
    assert isinstance(make_image_loader(preprocess, cpu, "cpu", 10), PilImageLoader)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_image_loader(preprocess, cpu, "cuda", 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_jpeg_decode_matches_the_cpu_tensor_path(preprocess) -> None:
    data = _encoded((512, 384))
    cuda = make_image_loader(preprocess, torch.device("cuda"), "auto", DEFAULT_MAX_PIXELS)
    assert isinstance(cuda, TensorJpegLoader)
    on_gpu = cuda(data)
    assert on_gpu.is_cuda
    assert (on_gpu.cpu() - _tensor_loader(preprocess)(data)).abs().max() < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decoder_gives_a_cut_jpeg_its_status(preprocess) -> None:
    jpeg = _encoded((512, 384))
    cuda = make_image_loader(preprocess, torch.device("cuda"), "cuda", DEFAULT_MAX_PIXELS)
    with pytest.raises(SampleError) as failure:
        cuda(jpeg[: len(jpeg) * 3 // 4])
    assert failure.value.status == "corrupt_image"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_decode_matches_one_image_at_a_time(preprocess) -> None:
    """nvJPEG's batched decode gives each image what decoding it alone gives, failures too."""
    cuda = make_image_loader(preprocess, torch.device("cuda"), "cuda", DEFAULT_MAX_PIXELS)
    jpeg = _encoded((512, 384), seed=7)
    batch = [jpeg, _encoded((300, 700), seed=8), jpeg[: len(jpeg) * 3 // 4], _encoded((512, 384)),
             _encoded((80, 60), fmt="PNG")]
    results = cuda.decode_batch(batch)
    assert isinstance(results[2], SampleError) and results[2].status == "corrupt_image"
    assert results[4].is_cuda  # Pillow's result too, so that the batch stacks on the GPU
    for index in (0, 1, 3):
        assert results[index].is_cuda
        assert (results[index] - cuda(batch[index])).abs().max() < 1e-5
        cpu = _tensor_loader(preprocess)(batch[index])
        assert (results[index].cpu() - cpu).abs().max() < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp32_on_cuda_scores_as_the_cpu_does(tmp_path) -> None:
    """fp32 on the GPU is IEEE fp32 (no TF32 convolutions): within 1e-5 of the CPU."""
    from curate.score.scorer import Scorer

    torch.manual_seed(0)
    loaded = load_model(ModelSpec("ViT-B-32", random_init=True))
    torch.save(loaded.model.state_dict(), tmp_path / "b32.pt")
    images = torch.rand(8, 3, 224, 224)
    tokens = loaded.tokenizer([f"a photo of {n} shapes on a plain background" for n in range(8)])
    cpu = Scorer(loaded, "fp32").encode(images, tokens).scores
    on_gpu = load_model(ModelSpec("ViT-B-32", pretrained=str(tmp_path / "b32.pt")), device="cuda")
    assert np.abs(Scorer(on_gpu, "fp32").encode(images, tokens).scores - cpu).max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decode_never_writes_into_memory_queued_work_still_reads(preprocess) -> None:
    """nvJPEG's hardware decoder does not wait for work queued on its stream; on the model's
    stream it overwrote blocks that queued kernels still read (pytorch/vision#9606)."""
    cuda = make_image_loader(preprocess, torch.device("cuda"), "cuda", DEFAULT_MAX_PIXELS)
    images = [_encoded((512, 384), seed=s) for s in range(16)]
    # blocks of a decoded image's size (3 x 384 x 512 bytes) and of a large tensor's
    sources = [torch.ones(size, device="cuda", dtype=torch.int64) for size in (73_728, 1 << 22)]
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):
        for _ in range(8):  # queue work, so that the sums below are still waiting
            busy = torch.tanh(busy @ busy / 64.0)
        copies = [source.clone() for source in sources]
        totals = [copy.sum() for copy in copies]
        del copies  # their blocks are free again while the queued sums have yet to read them
        cuda.decode_batch(images)
        assert [total.item() for total in totals] == [73_728, 1 << 22]
