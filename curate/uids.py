"""The one uid codec of filter-pool.

A uid is 32 lowercase hex characters (DataComp's format). Samples without one get
``sha256(url + "\\t" + caption)[:32]``. DataComp subset files store each uid as the pair
``(int(uid[:16], 16), int(uid[16:32], 16))`` in a sorted ``np.dtype("u8,u8")`` array.
"""

from __future__ import annotations

import hashlib
import re

UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def uid_from_url_caption(url: str | None, caption: str | None) -> str:
    """Derive a uid for a sample that has none: sha256(url + TAB + caption), first 32 hex."""
    text = f"{url or ''}\t{caption or ''}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def is_valid_uid(uid: object) -> bool:
    """True for a string of exactly 32 lowercase hex characters."""
    return isinstance(uid, str) and UID_PATTERN.match(uid) is not None


def normalize_uid(uid: str) -> str:
    """Lower-case a uid and check its shape; raise ValueError naming the bad value."""
    value = uid.strip().lower()
    if not UID_PATTERN.match(value):
        raise ValueError(f"not a uid (32 hex characters expected): {uid!r}")
    return value
