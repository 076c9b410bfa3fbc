"""Export a subset as webdataset hand-off shards for dataset reinforcement (MobileCLIP / RayGen).

Output, read by apple/ml-mobileclip-dr (``src/raygen/datasetio.py``, ``TarReader``):

* ``DIR/00000000.tar``, ``00000001.tar``, ... (DataComp resharder and RayGen ``count`` naming),
  per sample ``{uid}.jpg`` (RGB JPEG), ``{uid}.txt`` (caption) and ``{uid}.json`` (metadata);
  RayGen takes the uid as the member name up to its first '.' and raises on any other
  extension, so a uid may hold no '.' and no other member kinds are written.
* ``DIR/info.json``: what was exported, plus RayGen's ``lengths`` (shard path -> count) so that
  ``gen.py --input DIR/info.json`` works;
* ``DIR/manifest.jsonl``: one ``{"shard": "00000000", "num_uids": n}`` line per shard (RayGen's own
  manifest fields);
* ``DIR/missing.parquet``: every selected sample whose bytes could not be exported, with a reason.

Source tars are streamed one at a time in run order and output shards are written one at a time,
each under a temporary name; the whole export is built in a staging directory renamed to DIR last.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import curate
from curate.errors import UserError
from curate.io.lock import beside, hold, writes
from curate.io.shards import (
    TarReadResult,
    TarSample,
    add_tar_member,
    iter_tar_samples,
    repeated_keys,
)
from curate.io.statuses import (
    MISSING_CAPTION,
    MISSING_IMAGE,
    SHARD_TRUNCATED,
    UNSUPPORTED_FORMAT,
    SampleError,
)
from curate.io.storage import (
    Location,
    UnreadableFile,
    as_location,
    base_name,
    changed_since_ingest,
    fetch_file,
    is_url,
    tar_exists,
)
from curate.io.uids import UID_PATTERN
from curate.io.workspace import (
    SUBSET_MANIFEST,
    SUBSET_RECORD,
    RunPaths,
    check_apart,
    check_replaceable,
    refuse_other_settings,
    staged_directory,
    write_json_atomic,
)
from curate.tables.views import connect

if TYPE_CHECKING:  # Pillow and tqdm load when an export runs, not at startup
    from PIL import Image

logger = logging.getLogger(__name__)

# Reasons of missing.parquet beyond the decode statuses of curate.io.statuses.
NOT_IN_TAR = "not_in_tar"  # the shard was read to its end and holds no such key
TAR_MISSING = "tar_missing"  # the shard's tar file is not on disk
UNKNOWN_SHARD = "unknown_shard"  # the manifest names a shard the run does not list
DUPLICATE_UID = "duplicate_uid"  # an earlier manifest row has the same uid
DUPLICATE_KEY = "duplicate_key"  # an earlier manifest row has the same shard and key

REQUIRED_COLUMNS = ("uid", "shard", "key")
METADATA_COLUMNS = ("url", "text", "original_width", "original_height", "sha256")
SCORE_SUFFIX = "_score"
SHARD_NAME = "{:08d}"  # DataComp resharder's and RayGen's output shard names
MEMBER_MTIME = 1_700_000_000  # fixed, so that the same input gives byte-identical tars
MISSING_SCHEMA = pa.schema(
    [("uid", pa.string()), ("shard", pa.string()), ("key", pa.string()),
     ("reason", pa.string()), ("detail", pa.string())]
)
# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not frames); C0 is baseline.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_BASELINE = 0xC0


@dataclass(frozen=True)
class ExportConfig:
    """Which subset of which run to export, where, and how."""

    run: Path
    subset: str
    out: Path
    shard_size: int = 10_000
    overwrite: bool = False
    jpeg_quality: int = 95
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "out", Path(self.out))
        if not self.subset or self.subset in (".", "..") or any(c in self.subset for c in "/\\"):
            raise UserError(f"subset must be a subset folder name, got {self.subset!r}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int):
            raise UserError(f"shard_size must be an integer, got {self.shard_size!r}")
        if self.shard_size < 1:
            raise UserError(f"shard_size must be >= 1, got {self.shard_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass
class ExportSummary:
    """Counts of one export."""

    out: Path
    selected: int = 0
    exported: int = 0
    shards: int = 0
    reencoded: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    reused: bool = False  # an existing export of the same subset and settings

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "selected": self.selected,
            "exported": self.exported,
            "shards": self.shards,
            "reencoded": self.reencoded,
            "missing": dict(sorted(self.missing.items())),
            "reused": self.reused,
        }

    def text(self) -> str:
        text = (f"exported {self.exported} of {self.selected} samples in {self.shards} "
                f"shards -> {self.out}")
        if self.missing:
            text += "\n  missing from the pool: " + ", ".join(
                f"{reason} {count}" for reason, count in self.missing.most_common())
        return text


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The first start-of-frame marker of a JPEG stream, or None when there is none."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            pos += 2
        elif marker in _SOF_MARKERS:
            return marker
        elif marker == 0xDA:  # scan data before any frame header
            return None
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparent images are matted on white (as img2dataset does)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        matted = Image.new("RGB", rgba.size, (255, 255, 255))
        matted.paste(rgba, mask=rgba.getchannel("A"))
        return matted
    return image.convert("RGB")


def to_rgb_jpeg(data: bytes, quality: int = 95) -> tuple[bytes, bool]:
    """Image bytes as an RGB baseline JPEG and whether they were re-encoded.

    RGB baseline JPEGs pass through byte for byte; anything else is decoded and re-encoded.
    Raises SampleError (with a status) for bytes that are not a usable image.
    """
    from curate.io.image import decode_image

    image = decode_image(data)
    if image.format == "JPEG" and image.mode == "RGB" and _jpeg_frame_marker(data) == _BASELINE:
        return data, False
    try:
        buffer = io.BytesIO()
        _to_rgb(image).save(buffer, format="JPEG", quality=quality)
    except (OSError, ValueError) as exc:  # modes Pillow cannot map to RGB or write as JPEG
        detail = f"cannot re-encode {image.mode} image: {exc}"
        raise SampleError(UNSUPPORTED_FORMAT, detail) from exc
    return buffer.getvalue(), True


class _ShardWriter:
    """Writes output shards one at a time: a temporary name while open, renamed when full."""

    def __init__(self, directory: Path, shard_size: int) -> None:
        self.directory = directory
        self.shard_size = shard_size
        self.written: list[tuple[str, int]] = []  # (shard name, samples)
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def add(self, uid: str, members: list[tuple[str, bytes]]) -> None:
        if self._tar is None:
            name = SHARD_NAME.format(len(self.written))
            self._tmp = self.directory / f".{name}.tar.tmp"
            # Open across many add() calls; closed by close() or abort().
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for extension, data in members:
            add_tar_member(self._tar, f"{uid}.{extension}", data, mtime=MEMBER_MTIME)
        self._count += 1
        if self._count >= self.shard_size:
            self.close()

    def close(self) -> None:
        """Finish the open shard, if any, and rename it into place."""
        if self._tar is None or self._tmp is None:
            return
        self._tar.close()
        name = SHARD_NAME.format(len(self.written))
        os.replace(self._tmp, self.directory / f"{name}.tar")
        self.written.append((name, self._count))
        self._tar, self._tmp, self._count = None, None, 0

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def _read_manifest(path: Path) -> pa.Table:
    """The manifest's needed columns; uid, shard and key present and non-null, uids dot-free."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; the subset has no manifest (a subset "
                        "selected with --uids-only has none: select it again without it)")
    try:
        schema = pq.read_schema(path)
        wanted = [
            c for c in schema.names
            if c in REQUIRED_COLUMNS or c in METADATA_COLUMNS or c.endswith(SCORE_SUFFIX)
        ]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: unreadable parquet ({exc})") from exc
    absent = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if absent:
        raise UserError(f"{path}: missing column(s) {', '.join(absent)}")
    for name in REQUIRED_COLUMNS:
        column = table.column(name)
        if column.null_count:
            raise UserError(f"{path}: column {name} has {column.null_count} null value(s)")
        if column.type != pa.string():
            table = table.set_column(
                table.schema.get_field_index(name), name, pc.cast(column, pa.string())
            )
    uids = table.column("uid")  # they name tar members: 32 lowercase hex, nothing else
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(uids, UID_PATTERN.pattern), False))
    if pc.any(bad).as_py():
        first = uids.filter(bad)[0].as_py()
        raise UserError(f"{path}: uid {first!r} is not a uid (32 lowercase hex characters), "
                        "so it cannot name tar members")
    return table


def _with_pool_metadata(run: Path, table: pa.Table) -> pa.Table:
    """The manifest with the METADATA_COLUMNS it lacks (select writes no sizes or sha256)
    taken from the run's pool table, matched on (shard, key); null where the pool has none."""
    lacking = [c for c in METADATA_COLUMNS if c not in table.column_names]
    if not lacking or table.num_rows == 0:
        return table
    con = connect(run)
    in_pool = {row[0] for row in con.execute("DESCRIBE pool").fetchall()}
    lacking = [c for c in lacking if c in in_pool]
    if not lacking:
        return table
    con.register("wanted", pa.table({
        "_row": pa.array(np.arange(table.num_rows, dtype=np.int64)),
        "shard": table.column("shard"),
        "key": table.column("key"),
    }))
    values = ", ".join(f'any_value(p."{c}") AS "{c}"' for c in lacking)
    found = con.sql(
        f"SELECT w._row, {values} FROM wanted w LEFT JOIN pool p "
        "ON CAST(p.shard AS VARCHAR) = w.shard AND CAST(p.key AS VARCHAR) = w.key "
        "GROUP BY w._row ORDER BY w._row"
    ).to_arrow_table()
    for name in lacking:
        table = table.append_column(name, found.column(name))
    return table


def _missing_row(row: dict[str, Any], reason: str, detail: str | None = None) -> dict[str, Any]:
    return {"uid": row["uid"], "shard": row["shard"], "key": row["key"], "reason": reason,
            "detail": detail}


def _group_by_shard(table: pa.Table) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Row indices per shard name, and the indices of rows repeating an earlier row's uid."""
    encoded = table.column("shard").combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(encoded.dictionary) + 1))
    groups = {
        name: order[bounds[i] : bounds[i + 1]]
        for i, name in enumerate(encoded.dictionary.to_pylist())
    }
    uid_codes = table.column("uid").combine_chunks().dictionary_encode().indices
    _, first = np.unique(uid_codes.to_numpy(zero_copy_only=False), return_index=True)
    duplicates = np.setdiff1d(np.arange(table.num_rows), first)
    return groups, duplicates


def _sample_members(
    row: dict[str, Any], sample: TarSample, score_columns: list[str], quality: int
) -> tuple[list[tuple[str, bytes]], bool]:
    """The jpg, txt and json members of one selected sample; SampleError when unusable."""
    if sample.problem is not None:  # an unsafe member, a duplicate key: nothing of it is used
        raise sample.problem
    image = sample.image()
    if image is None:
        raise SampleError(MISSING_IMAGE, f"no image member ({', '.join(sorted(sample.members))})")
    caption = row.get("text")
    if caption is None:
        caption = sample.caption()
    if caption is None:
        raise SampleError(MISSING_CAPTION, "no caption in the manifest or the tar")
    jpeg, reencoded = to_rgb_jpeg(image[1], quality)
    scores = {}
    for name in score_columns:
        value = row.get(name)
        scores[name] = None if value is None or math.isnan(value) else float(value)
    # Every field lands in RayGen's sample dict (json.load + update): no "caption", "text",
    # "image", "syn_text*" or "*emb*" keys, and "uid" equal to the member name.
    meta = {
        "uid": row["uid"],
        "url": row.get("url"),
        "sha256": row.get("sha256"),
        "key": row["key"],
        "shard": row["shard"],
        "scores": scores,
        "original_width": row.get("original_width"),
        "original_height": row.get("original_height"),
    }
    members = [
        ("jpg", jpeg),
        ("txt", caption.encode("utf-8")),
        ("json", json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")),
    ]
    return members, reencoded


@contextmanager
def _readable_tar(tar: Location, options: dict[str, Any] | None,
                  staging: Path) -> Iterator[tuple[Location, str | None]]:
    """The tar to read twice (the duplicate-key pass, then the samples): a local path as it
    is; a URL copied once into the staging folder and deleted after, so that the store serves
    it once. Yields (what to read, why the copy failed or None)."""
    if not is_url(tar):
        yield tar, None
        return
    copy = staging / f".fetch-{base_name(tar)}"
    try:
        try:
            fetch_file(tar, options, copy)
        except UnreadableFile as exc:  # a full disk is not the store's fault: it raises
            yield tar, str(exc)
            return
        yield copy, None
    finally:
        copy.unlink(missing_ok=True)


def _prepare_out(config: ExportConfig, run_record: dict[str, Any]) -> ExportSummary | None:
    """Refuse a DIR that is, holds or lies in the run or the pool's shards, an existing file,
    and (with overwrite) a DIR that is not an export; without overwrite an existing export of
    the same subset and settings is returned (reused), any other is refused."""
    shard_dirs = {Path(s["tar"]).parent for s in run_record["shards"]
                  if s.get("tar") and not is_url(s["tar"])}
    check_apart(config.out, [config.run, *sorted(shard_dirs)])
    if config.out.exists() and not config.out.is_dir():
        raise UserError(f"output {config.out} exists and is not a directory")
    if config.out.is_dir() and any(config.out.iterdir()) and not config.overwrite:
        return _finished(config)
    if config.overwrite:
        check_replaceable(config.out, ("info.json",), "export")
    return None


def _request(config: ExportConfig) -> dict[str, Any]:
    """What an export is made of (kept in info.json; a rerun must match it)."""
    selection = RunPaths(config.run).subset_dir(config.subset) / SUBSET_RECORD
    return {
        "subset": config.subset,
        "run": str(config.run.resolve()),
        "shard_size": config.shard_size,
        "jpeg_quality": config.jpeg_quality,
        "selection_sha256": (hashlib.sha256(selection.read_bytes()).hexdigest()
                             if selection.is_file() else None),
    }


def _finished(config: ExportConfig) -> ExportSummary:
    """The existing export of the same subset and settings (reused), else a UserError naming
    what differs."""
    info_file = config.out / "info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if "num_samples" not in info:
        raise UserError(f"output {config.out} already exists; use --overwrite to replace it")
    current = _request(config)
    refuse_other_settings(f"export {config.out}", {k: info.get(k) for k in current}, current,
                          "use --overwrite to replace it")
    logger.info("export %s: made from the same subset with the same settings, reused",
                config.out)
    return ExportSummary(out=config.out, selected=info["num_selected"],
                         exported=info["num_samples"], shards=info["num_shards"],
                         reencoded=info.get("reencoded", 0), missing=Counter(info["missing"]),
                         reused=True)


def _info(
    config: ExportConfig, summary: ExportSummary, shards: list[tuple[str, int]]
) -> dict[str, Any]:
    out = config.out.resolve()
    selection = RunPaths(config.run).subset_dir(config.subset) / SUBSET_RECORD
    info: dict[str, Any] = {
        "subset": config.subset,
        "run": str(config.run.resolve()),
        "num_samples": summary.exported,
        "num_shards": len(shards),
        "shard_size": config.shard_size,
        "num_selected": summary.selected,
        "reencoded": summary.reencoded,
        "missing": dict(sorted(summary.missing.items())),
        "jpeg_quality": config.jpeg_quality,
        "created": datetime.now(timezone.utc).isoformat(),
        "filter_pool_version": curate.__version__,
        # RayGen (scripts/gen.py --input DIR/info.json) opens the keys of "lengths" as shard paths.
        "lengths": {str(out / f"{name}.tar"): str(count) for name, count in shards},
        "totalLength": str(summary.exported),
        "wds_pattern": (
            f"{out}/{{{shards[0][0]}..{shards[-1][0]}}}.tar" if shards else None
        ),
    }
    if selection.is_file():
        info["selection_sha256"] = hashlib.sha256(selection.read_bytes()).hexdigest()
    return info


@contextlib.contextmanager
def _export_locks(config: ExportConfig) -> Iterator[None]:
    """The run shared, the output folder exclusively; a DIR that is its run (one lock file for
    both) and a folder that is not a run are refused first."""
    RunPaths(config.run).read_run()  # not a run: say so first
    check_apart(config.out, [config.run])  # before the locks: the same folder would be both
    with hold(beside(config.run), f"run {config.run}", shared=True), \
            hold(beside(config.out), f"export {config.out}"):
        yield


@writes(_export_locks)
def export_subset(config: ExportConfig) -> ExportSummary:
    """Write ``RUN/subsets/NAME`` as webdataset shards into ``config.out`` (see module docs)."""
    run_record = RunPaths(config.run).read_run()
    subset_dir = RunPaths(config.run).subset_dir(config.subset)
    if not subset_dir.is_dir():
        raise UserError(f"subset {config.subset!r} not found: {subset_dir} does not exist")
    table = _read_manifest(subset_dir / SUBSET_MANIFEST)
    finished = _prepare_out(config, run_record)
    if finished is not None:
        return finished
    table = _with_pool_metadata(config.run, table)
    score_columns = [c for c in table.column_names if c.endswith(SCORE_SUFFIX)]
    tars = {s["name"]: as_location(s["tar"]) if s.get("tar") else None
            for s in run_record["shards"]}
    options = run_record["source"].get("storage_options")  # a pool on a URL
    if not any(tars.values()):
        raise UserError(
            f"run {config.run} lists no image tars (metadata-only ingest); ingest a downloaded "
            f"pool to export, or reshard with {subset_dir / 'uids.npy'} (DataComp resharder)"
        )
    if changed := changed_since_ingest(run_record["shards"], options):
        raise UserError(changed)
    groups, duplicates = _group_by_shard(table)

    summary = ExportSummary(out=config.out, selected=table.num_rows)
    missing: list[dict[str, Any]] = []
    from tqdm import tqdm

    bar = tqdm(total=table.num_rows, unit="sample", desc="export", disable=not config.progress)

    def report(row: dict[str, Any], reason: str, detail: str | None = None) -> None:
        missing.append(_missing_row(row, reason, detail))
        summary.missing[reason] += 1
        logger.debug("missing %s (shard %s, key %s): %s %s", row["uid"], row["shard"],
                     row["key"], reason, detail or "")
        bar.update(1)

    skip = set(duplicates.tolist())
    for index in duplicates.tolist():
        report(table.slice(index, 1).to_pylist()[0], DUPLICATE_UID)
    for name in sorted(set(groups) - set(tars)):
        rows = [i for i in groups[name].tolist() if i not in skip]
        for row in table.take(pa.array(rows, pa.int64())).to_pylist():
            report(row, UNKNOWN_SHARD, f"run {config.run} lists no shard {name!r}")

    with staged_directory(config.out) as staging:
        writer = _ShardWriter(staging, config.shard_size)
        try:
            for shard, tar in tars.items():
                indices = [i for i in groups.get(shard, np.empty(0, np.int64)).tolist()
                           if i not in skip]
                if not indices:
                    continue
                before = len(missing)
                wanted: dict[str, dict[str, Any]] = {}
                for row in table.take(pa.array(indices, pa.int64())).to_pylist():
                    if row["key"] in wanted:
                        report(row, DUPLICATE_KEY)
                    else:
                        wanted[row["key"]] = row
                if tar is None or not tar_exists(tar, options):
                    for row in wanted.values():
                        detail = f"{tar} does not exist" if tar else "run.json lists no tar"
                        report(row, TAR_MISSING, detail)
                    wanted = {}
                readable = _readable_tar(tar, options, staging) if tar and wanted \
                    else nullcontext((tar, None))
                with readable as (source, fetch_error):
                    if fetch_error:  # the store could not serve the tar: no sample read
                        for row in wanted.values():
                            report(row, SHARD_TRUNCATED, fetch_error)
                        wanted = {}
                    repeated = repeated_keys(source, options) if tar and wanted else set()
                    for key in repeated & set(wanted):
                        report(wanted.pop(key), DUPLICATE_KEY, f"key {key!r} occurs twice in {tar}")
                    result = TarReadResult()
                    samples = iter_tar_samples(source, result, options=options) if tar and wanted \
                        else ()
                    for sample in samples:
                        row = wanted.pop(sample.key, None)
                        if row is None:
                            continue
                        try:
                            members, reencoded = _sample_members(
                                row, sample, score_columns, config.jpeg_quality
                            )
                        except SampleError as exc:
                            report(row, exc.status, exc.reason)
                            continue
                        writer.add(row["uid"], members)
                        summary.exported += 1
                        summary.reencoded += reencoded
                        bar.update(1)
                        if not wanted:
                            break
                    error = result.error and result.error.replace(str(source), str(tar))
                    for row in wanted.values():  # the error names the tar, not a local copy
                        report(row, SHARD_TRUNCATED if error else NOT_IN_TAR, error)
                if len(missing) > before:
                    reasons = Counter(m["reason"] for m in missing[before:])
                    logger.warning("shard %s: %d selected sample(s) missing (%s)", shard,
                                   len(missing) - before,
                                   ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        summary.shards = len(writer.written)
        pq.write_table(pa.Table.from_pylist(missing, schema=MISSING_SCHEMA),
                       staging / "missing.parquet")
        lines = [{"shard": name, "num_uids": count} for name, count in writer.written]
        (staging / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        write_json_atomic(staging / "info.json", _info(config, summary, writer.written))
    if summary.missing:
        logger.warning("%d of %d selected samples missing from the pool; listed in %s",
                       sum(summary.missing.values()), summary.selected,
                       config.out / "missing.parquet")
    logger.info("exported %d samples in %d shards to %s", summary.exported, summary.shards,
                config.out)
    return summary
