"""Progress of a sharded stage: a tqdm bar on a terminal, a few log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time

# Shown by default where logging is configured (the CLI): a log file gets a line per shard
# at most every LINE_SECONDS, never a stream of carriage returns. -q-style silence: --no-progress.
logger = logging.getLogger("curate.progress")
logger.setLevel(logging.INFO)
LINE_SECONDS = 10.0


class Progress:
    """Counts items (samples) and finished shards for one stage run."""

    def __init__(self, desc: str, total: int | None, shards: int, enabled: bool = True,
                 unit: str = "sample") -> None:
        self.desc, self.total, self.shards, self.unit = desc, total, shards, unit
        self.count = 0
        self.shards_done = 0
        self.started = self.last_line = time.monotonic()
        self.lines = enabled and not sys.stderr.isatty()
        from tqdm.auto import tqdm  # ~0.1 s (asyncio): only when a bar is shown

        self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True,
                        disable=not enabled or self.lines)

    def update(self, count: int) -> None:
        """``count`` more items done (negative when a failed attempt is undone)."""
        self.count += count
        self.bar.update(count)

    def shard_done(self) -> None:
        self.shards_done += 1
        now = time.monotonic()
        if self.lines and (now - self.last_line >= LINE_SECONDS or self.shards_done == self.shards):
            self.last_line = now
            of = f"/{self.total}" if self.total else ""
            logger.info("%s: %d/%d shards, %d%s %ss, %.1f s", self.desc, self.shards_done,
                        self.shards, self.count, of, self.unit, now - self.started)

    def close(self) -> None:
        self.bar.close()
