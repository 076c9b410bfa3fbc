"""``filter-pool dedup``: group duplicates at one level and publish the table
``RUN/scores/<name>/`` (default ``dedup_<level>``), one row per pool row:

* ``<name>_group``: the representative's sample_id (part number << 32 | row in part);
* ``<name>_group_size``, ``<name>_keep`` (True for representatives and unique samples),
  ``<name>_reason`` ("unique", "representative", "same bytes as <uid>", ...);
* ``<name>_distance`` (perceptual: Hamming distance to the representative) or
  ``<name>_similarity`` and ``<name>_cluster`` (semantic);
* ``status`` (ok, or why the row has no hash / embedding; then keep is null) and ``error``.

Levels: ``exact`` (same sha256 of the image bytes, or same decoded pixels; optionally the same
caption too; union-find over both keys), ``phash`` (pHash or dHash within a Hamming distance,
found by hash bands), ``semantic`` (SemDeDup over saved image embeddings). The representative
rule is ``curate.dedup.groups.rule``; it is written into ``_table.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.dedup import groups as gr
from curate.dedup.hashes import hamming
from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.io import statuses as st
from curate.io.lock import run_output, writes
from curate.io.pool_table import read_pool_part
from curate.io.workspace import SCORER_NAME, RunPaths, check_name
from curate.tables.derived import finished_table, read_table_record, write_derived_table

logger = logging.getLogger(__name__)

STAGE = "dedup"
LEVELS = ("exact", "phash", "semantic")
HASHES = ("phash", "dhash")
NO_SHA256 = "no_sha256"  # metadata-only pool row without a sha256


def default_table(level: str) -> str:
    """The table a level writes unless ``--name`` says otherwise: ``dedup_<level>``."""
    return f"dedup_{level}"


@dataclass(frozen=True)
class DedupConfig:
    """One dedup run: the level, its settings and the table name."""

    run: Path
    level: str
    name: str | None = None
    prefer: str | None = None
    with_caption: bool = False
    max_distance: int = 4
    hash: str = "phash"
    embeddings: str = "clip_l14"
    clusters: int = 100
    eps: float = 0.05
    niter: int = 20
    seed: int = 0
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        if self.level not in LEVELS:
            raise UserError(f"--level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        check_name(self.table, "table", SCORER_NAME)
        if not 0 <= self.max_distance <= 31:
            raise UserError(f"--max-distance must be in [0, 31], got {self.max_distance}")
        if self.hash not in HASHES:
            raise UserError(f"--hash must be one of {', '.join(HASHES)}, got {self.hash!r}")
        check_name(self.embeddings, "embeddings", SCORER_NAME)
        if self.clusters < 1:
            raise UserError(f"--clusters must be at least 1, got {self.clusters}")
        if not 0 < self.eps < 1:
            raise UserError(f"--eps must be in (0, 1), got {self.eps}")
        if self.niter < 1:
            raise UserError(f"--niter must be at least 1, got {self.niter}")

    @property
    def table(self) -> str:
        return self.name or default_table(self.level)

    def settings(self) -> dict[str, Any]:
        """What the table depends on (worker counts do not change it)."""
        settings: dict[str, Any] = {"level": self.level, "prefer": self.prefer}
        if self.level == "exact":
            settings["with_caption"] = self.with_caption
        elif self.level == "phash":
            settings.update(hash=self.hash, max_distance=self.max_distance)
        else:
            settings.update(embeddings=self.embeddings, clusters=self.clusters, eps=self.eps,
                            niter=self.niter, seed=self.seed)
        return settings


@dataclass
class DedupSummary:
    """What a dedup run found: groups, duplicates removed, speed; the eps table (semantic)."""

    name: str
    level: str
    samples: int
    hashed: int
    groups: int
    duplicates: int
    seconds: float
    by_status: dict[str, int] = field(default_factory=dict)
    eps_table: list[dict[str, Any]] = field(default_factory=list)
    rule: str = ""
    reused: bool = False

    @property
    def kept(self) -> int:
        return self.hashed - self.duplicates

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "samples": self.samples,
                "hashed": self.hashed, "groups": self.groups, "duplicates": self.duplicates,
                "kept": self.kept, "seconds": round(self.seconds, 3),
                "samples_per_second": round(self.samples_per_second, 1),
                "by_status": dict(sorted(self.by_status.items())), "eps_table": self.eps_table,
                "rule": self.rule, "reused": self.reused}

    @classmethod
    def from_record(cls, payload: dict[str, Any]) -> DedupSummary:
        keys = ("name", "level", "samples", "hashed", "groups", "duplicates", "seconds",
                "by_status", "eps_table", "rule")
        return cls(**{k: payload[k] for k in keys}, reused=True)

    def text(self) -> str:
        lines = [
            f"dedup '{self.name}' ({self.level}){' reused' if self.reused else ''}: "
            f"{self.samples} samples, {self.hashed} comparable",
            f"  {self.groups} groups of duplicates, {self.duplicates} duplicates removed, "
            f"{self.kept} kept ({self.samples_per_second:.1f} samples/s)",
        ]
        lines += [f"    {status}: {count}" for status, count in sorted(self.by_status.items())
                  if status != st.OK]
        if self.eps_table:
            lines.append("  eps     removed")
            lines += [f"  {row['eps']:<7} {row['removed']}" for row in self.eps_table]
        lines.append(f"  representative: {self.rule}")
        return "\n".join(lines)


@dataclass
class _Pool:
    """The run's pool rows, all parts concatenated in part order."""

    parts: list[tuple[str, int]]  # (part stem, rows)
    uids: np.ndarray
    sample_ids: np.ndarray
    status: list[str]
    sha256: list[str | None]
    text: list[str | None]


def _read_pool(paths: RunPaths) -> _Pool:
    parts, uids, ids, status, sha, text = [], [], [], [], [], []
    for file in paths.pool_parts():
        table = read_pool_part(file, ["uid", "status", "sha256", "text"])
        number = int(file.stem.split("-", 1)[1])
        parts.append((file.stem, table.num_rows))
        uids += table.column("uid").to_pylist()
        ids.append((np.int64(number) << np.int64(32)) + np.arange(table.num_rows, dtype=np.int64))
        status += table.column("status").to_pylist()
        sha += table.column("sha256").to_pylist()
        text += table.column("text").to_pylist()
    return _Pool(parts, np.array(uids, dtype=str), np.concatenate(ids), status, sha, text)


def _prefer_scores(run: Path, prefer: str | None, pool: _Pool) -> np.ndarray:
    """The ``prefer`` column of ``samples`` per pool row (NaN where missing)."""
    scores = np.full(len(pool.uids), np.nan)
    if prefer is None:
        return scores
    from curate.filters import score_column
    from curate.filters.sqltext import ident
    from curate.tables import connect

    con = connect(run)
    column = score_column(con, prefer, "dedup --prefer")
    rows = con.execute(f"SELECT sample_id, CAST({ident(column)} AS DOUBLE) FROM samples "
                       f"WHERE {ident(column)} IS NOT NULL").fetchall()
    if rows:
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        where = np.searchsorted(pool.sample_ids, ids)
        scores[where] = np.array([r[1] for r in rows], dtype=np.float64)
    return scores


@dataclass
class _Level:
    """What a level found: usable rows, set roots, per-row status/error and extra columns."""

    usable: np.ndarray
    roots: np.ndarray
    status: list[str]
    error: list[str | None]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    eps_table: list[dict[str, Any]] = field(default_factory=list)
    reason: Any = None  # fn(row, representative) -> reason for a duplicate


def _hash_tables(config: DedupConfig, pool: _Pool) -> pa.Table:
    from curate.dedup.image_hashes import compute_hashes, read_hashes

    with run_output(config.run, "features-image-hashes", "image hashes"):
        summary = compute_hashes(config.run, config.executor, progress=config.progress)
    if summary.task_failures:
        shard, error = sorted(summary.task_failures.items())[0]
        raise UserError(f"hashing shard {shard} failed: {error}")
    return pa.concat_tables([read_hashes(config.run, part) for part, _ in pool.parts])


def _has_tars(paths: RunPaths) -> bool:
    return all(shard.get("tar") for shard in paths.read_run()["shards"])


def _exact(config: DedupConfig, pool: _Pool, paths: RunPaths) -> _Level:
    n = len(pool.uids)
    uf = gr.UnionFind(n)
    captions = np.array(["\x00" if t is None else t for t in pool.text], dtype=object)
    if _has_tars(paths):
        hashes = _hash_tables(config, pool)
        status = hashes.column("status").to_pylist()
        error = hashes.column("error").to_pylist()
        usable = np.array([s == st.OK for s in status])
        sha = np.array([b.hex() if b else "" for b in hashes.column("sha256").to_pylist()],
                       dtype=object)
        pixels = np.array([str(v) for v in hashes.column("pixels").to_pylist()], dtype=object)
    else:
        status = [st.OK if s == "success" and h else st.NOT_DOWNLOADED if s != "success"
                  else NO_SHA256 for s, h in zip(pool.status, pool.sha256, strict=True)]
        error = [None if s == st.OK else "no sha256 in the pool table" for s in status]
        usable = np.array([s == st.OK for s in status])
        sha = np.array([(h or "").lower() for h in pool.sha256], dtype=object)
        pixels = None
    rows = np.flatnonzero(usable)
    suffix = ("\t" + captions[rows]) if config.with_caption else ""
    gr.union_equal_keys(uf, rows, np.asarray(sha[rows] + suffix))
    if pixels is not None:
        gr.union_equal_keys(uf, rows, np.asarray("px" + pixels[rows] + suffix))

    def reason(row: int, rep: int) -> str:
        same = "bytes" if sha[row] == sha[rep] else "pixels"
        return f"same {same} as {pool.uids[rep]}"

    return _Level(usable, uf.roots(), status, error, reason=reason)


def _perceptual(config: DedupConfig, pool: _Pool, paths: RunPaths) -> _Level:
    from curate.dedup.bands import near_pairs

    if not _has_tars(paths):
        raise UserError(f"run {paths.root} has no images (ingested from metadata); "
                        "--level phash needs img2dataset webdataset shards (use --level exact "
                        "or semantic)")
    hashes = _hash_tables(config, pool)
    status = hashes.column("status").to_pylist()
    usable = np.array([s == st.OK for s in status])
    values = np.array(hashes.column(config.hash).fill_null(0).to_numpy(), dtype=np.uint64)
    rows = np.flatnonzero(usable)
    uf = gr.UnionFind(len(usable))
    unique, inverse = np.unique(values[rows], return_inverse=True)
    first = np.full(len(unique), -1, dtype=np.int64)
    first[inverse[::-1]] = rows[::-1]  # a row for each distinct hash
    gr.union_equal_keys(uf, rows, values[rows])
    left, right = near_pairs(unique, config.max_distance)
    uf.union_pairs(first[left], first[right])
    level = _Level(usable, uf.roots(), status, hashes.column("error").to_pylist(),
                   reason=lambda row, rep: f"near copy of {pool.uids[rep]}")
    level.extra["distance"] = values  # turned into distances once representatives are known
    return level


def _semantic(config: DedupConfig, pool: _Pool, rank: np.ndarray) -> _Level:
    from curate.dedup.semantic import semdedup
    from curate.io.embeddings import open_embeddings

    embeddings = open_embeddings(config.run, config.embeddings)
    result = semdedup(embeddings, rank, config.clusters, config.niter, config.seed)
    uf = gr.UnionFind(len(result.usable))
    duplicate = result.similarity > 1 - config.eps
    uf.union_pairs(np.flatnonzero(duplicate), result.nearest[duplicate])
    status = [st.OK if ok else st.NOT_DOWNLOADED if s != "success" else st.MISSING_EMBEDDING
              for ok, s in zip(result.usable, pool.status, strict=True)]
    error = [None if s == st.OK else f"no usable '{config.embeddings}' image embedding"
             for s in status]

    def reason(row: int, rep: int) -> str:
        near = result.nearest[row]
        return f"similar to {pool.uids[near]} (cosine {result.similarity[row]:.4f})"

    return _Level(result.usable, uf.roots(), status, error,
                  extra={"similarity": result.similarity, "cluster": result.cluster},
                  eps_table=result.eps_table(), reason=reason)


def _columns(config: DedupConfig, pool: _Pool, level: _Level, grouping: gr.Grouping
             ) -> dict[str, pa.Array]:
    name = config.table
    usable = level.usable
    rep = grouping.representative
    reasons: list[str | None] = []
    for row in range(len(usable)):
        if not usable[row]:
            reasons.append(None)
        elif grouping.size[row] == 1:
            reasons.append("unique")
        elif grouping.keep[row]:
            reasons.append("representative")
        else:
            reasons.append(level.reason(row, int(rep[row])))
    missing = ~usable
    columns = {
        f"{name}_group": pa.array(np.where(usable, pool.sample_ids[np.maximum(rep, 0)], 0),
                                  pa.int64(), mask=missing),
        f"{name}_group_size": pa.array(grouping.size.astype(np.int32), pa.int32(), mask=missing),
        f"{name}_keep": pa.array(grouping.keep, pa.bool_(), mask=missing),
        f"{name}_reason": pa.array(reasons, pa.string()),
    }
    if "distance" in level.extra:
        values = level.extra["distance"]
        distance = hamming(values, values[np.maximum(rep, 0)])
        columns[f"{name}_distance"] = pa.array(distance.astype(np.int32), pa.int32(),
                                               mask=missing)
    if "similarity" in level.extra:
        similarity = level.extra["similarity"]
        columns[f"{name}_similarity"] = pa.array(similarity, pa.float32(),
                                                 mask=missing | np.isnan(similarity))
        columns[f"{name}_cluster"] = pa.array(level.extra["cluster"], pa.int64(), mask=missing)
    return columns


@writes(lambda c: run_output(c.run, f"dedup-{c.table}", f"dedup table '{c.table}'"))
def dedup_run(config: DedupConfig) -> DedupSummary:
    """Group the run's duplicates at ``config.level`` and publish the table (reused when made
    with the same settings; other settings are refused unless ``overwrite``)."""
    started = time.perf_counter()
    paths = RunPaths(config.run)
    paths.read_run()
    settings = config.settings()
    if finished_table(config.run, config.table, STAGE, settings, config.overwrite):
        record = read_table_record(config.run, config.table) or {}
        return DedupSummary.from_record(record["summary"])
    pool = _read_pool(paths)
    rank = gr.ranks(_prefer_scores(config.run, config.prefer, pool), pool.uids, pool.sample_ids)
    if config.level == "exact":
        level = _exact(config, pool, paths)
    elif config.level == "phash":
        level = _perceptual(config, pool, paths)
    else:
        level = _semantic(config, pool, rank)
    grouping = gr.grouping(level.roots, rank, level.usable)
    columns = _columns(config, pool, level, grouping)
    by_status: dict[str, int] = {}
    for status in level.status:
        by_status[status] = by_status.get(status, 0) + 1
    rule = gr.rule(config.prefer)
    summary = DedupSummary(
        name=config.table, level=config.level, samples=len(pool.uids),
        hashed=int(level.usable.sum()), groups=grouping.groups,
        duplicates=grouping.duplicates, seconds=time.perf_counter() - started,
        by_status=by_status, eps_table=level.eps_table, rule=rule)
    parts, offset = [], 0
    for part, rows in pool.parts:
        piece = slice(offset, offset + rows)
        table = {"uid": pa.array(pool.uids[piece].tolist(), pa.string()),
                 **{k: v.slice(offset, rows) for k, v in columns.items()},
                 "status": pa.array(level.status[piece], pa.string()),
                 "error": pa.array(level.error[piece], pa.string())}
        parts.append((part, pa.table(table)))
        offset += rows
    write_derived_table(config.run, config.table, STAGE, settings, parts,
                        {**summary.to_dict(), "seconds": round(summary.seconds, 3)})
    logger.info("dedup %s: %d groups, %d duplicates", config.table, summary.groups,
                summary.duplicates)
    return summary
