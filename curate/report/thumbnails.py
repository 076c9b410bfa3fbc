"""Small JPEG thumbnails of pool samples, read from the run's shard tars, as data URIs."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

from curate.io.image import decode_image
from curate.io.shards import TarReadResult, iter_tar_samples
from curate.io.statuses import SampleError
from curate.io.storage import as_location, is_url

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 160


def thumbnail_uri(data: bytes, side: int = THUMBNAIL_SIDE) -> str | None:
    """A JPEG thumbnail data URI of image bytes; None when they do not decode."""
    try:
        image = decode_image(data)
    except SampleError:
        return None
    image = image.convert("RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def read_thumbnails(
    tar_of_shard: dict[str, str], wanted: set[tuple[str, str]],
    options: dict[str, Any] | None = None,
) -> dict[tuple[str, str], str | None]:
    """Thumbnails for (shard, key) pairs; one pass over each shard tar that holds any (a tar
    on a URL is streamed with the pool's storage ``options``)."""
    found: dict[tuple[str, str], str | None] = {}
    for shard in sorted({shard for shard, _ in wanted}):
        tar = tar_of_shard.get(shard)
        if not tar or not (is_url(tar) or Path(tar).is_file()):
            logger.warning("report: no tar for shard %s; its images are left out", shard)
            continue
        keys = {key for s, key in wanted if s == shard}
        result = TarReadResult()
        for sample in iter_tar_samples(as_location(tar), result, options=options):
            if sample.key in keys:
                member = sample.image() if sample.problem is None else None
                found[(shard, sample.key)] = thumbnail_uri(member[1]) if member else None
                if len(keys) == sum(1 for s, _ in found if s == shard):
                    break
        if result.error:
            logger.warning("report: shard %s: %s; images after it are left out", shard,
                           result.error)
    return found
