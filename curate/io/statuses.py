"""Per-sample statuses of a score table; every sample gets exactly one."""

OK = "ok"
NOT_DOWNLOADED = "not_downloaded"  # img2dataset status other than success
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
CORRUPT_IMAGE = "corrupt_image"
UNSUPPORTED_FORMAT = "unsupported_format"
TOO_LARGE = "too_large"  # refused by size before decoding (decompression bomb guard)
SHARD_TRUNCATED = "shard_truncated"  # the tar ended before this sample
MISSING_SCORE = "missing_score"  # an ingested score column (DataComp) had no value
DUPLICATE_KEY = "duplicate_key"  # the key occurs twice in the shard: no copy is scored
BAD_MEMBER = "bad_member"  # a link, device or path-like / non-UTF-8 member name in the tar
MISSING_EMBEDDING = "missing_embedding"  # a row's saved embedding is NaN or zero: no decision

ALL = (
    OK,
    NOT_DOWNLOADED,
    MISSING_IMAGE,
    MISSING_CAPTION,
    CORRUPT_IMAGE,
    UNSUPPORTED_FORMAT,
    TOO_LARGE,
    SHARD_TRUNCATED,
    MISSING_SCORE,
    DUPLICATE_KEY,
    BAD_MEMBER,
    MISSING_EMBEDDING,
)


class SampleError(Exception):
    """A sample that cannot be scored: a status from this module and a reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
