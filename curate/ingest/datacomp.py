"""DataComp metadata: each ``*.parquet`` (and its same-named ``.npz``) into the run's tables.

A metadata file holds ``uid, url, text, original_width, original_height,
clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256``; the ``.npz``
beside it holds ``b32_img, b32_txt, l14_img, l14_txt`` (float16, rows aligned with the
parquet). File number ``NNNNN`` (its position in sorted order) gives:

* ``RUN/pool/part-NNNNN.parquet``: POOL_SCHEMA plus ``face_bboxes`` (and unknown columns),
  or, for a referencing run (metadata on disk, the default), only the columns ingest derives:
  the rest are read from the metadata file by row position (``curate.io.pool_table``);
* ``RUN/scores/clip_{b32,l14}/part-NNNNN.parquet`` with ``_done/part-NNNNN.json``, as
  ``filter-pool score`` writes them, so the score stage treats them as finished (a
  referencing run's score parts leave out the uid: they are row-aligned with the pool);
* ``RUN/embeddings/clip_{b32,l14}/part-NNNNN.{image,text}.npy`` (float16) when the npz exists.

Parquet is streamed by record batch and npz members are copied in row chunks, so memory stays
bounded whatever the file size. Every output is written atomically, completion records last.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io.pool_table import FACE_BBOXES_TYPE, Column
from curate.io.schema import (
    POOL_SCHEMA,
    TEXT_CHARS,
    clash_renames,
    score_column,
    score_schema,
    text_chars,
    uid_halves,
    with_renames,
)
from curate.io.shards import PoolError
from curate.io.statuses import MISSING_SCORE, OK
from curate.io.storage import (
    Location,
    StorageError,
    arrow_source,
    base_name,
    list_pool,
    open_pool_file,
)
from curate.io.uids import UID_PATTERN
from curate.io.workspace import (
    DONE_DIR,
    SCORER_FILE,
    RunPaths,
    atomic_path,
    part_name,
    remove_stale_temporaries,
    write_json_atomic,
)
from curate.runner.stats import ShardStats

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("uid", "url", "text")
FACE_BBOXES = "face_bboxes"
BATCH_ROWS = 65_536
CHUNK_BYTES = 32 * 2**20
EMBEDDING_DTYPE = np.dtype("<f2")
# dictionary-encode only the low-cardinality columns: trying it on uids and texts costs time
POOL_DICTIONARY_COLUMNS = ["shard", "status", "error_message"]


@dataclass(frozen=True)
class DataCompScorer:
    """One precomputed DataComp score and its npz embedding members."""

    name: str
    column: str
    prefix: str
    model: str

    def record(self) -> dict[str, str]:
        """The ``_scorer.json`` payload."""
        return {
            "name": self.name,
            "model": f"datacomp:{self.column}",
            "source": f"DataComp metadata ({self.model})",
        }

    def members(self) -> dict[str, str]:
        """Embedding kind (``image``/``text``) to npz member name."""
        return {"image": f"{self.prefix}_img", "text": f"{self.prefix}_txt"}


SCORERS = (
    DataCompScorer("clip_b32", "clip_b32_similarity_score", "b32", "OpenAI CLIP ViT-B/32"),
    DataCompScorer("clip_l14", "clip_l14_similarity_score", "l14", "OpenAI CLIP ViT-L/14"),
)
SCORE_COLUMNS = tuple(s.column for s in SCORERS)


# Pool columns ingest makes itself, whatever the metadata holds (a metadata column of that name
# is carried under another name), and the metadata columns that are not carried as extra pool
# columns: those read into their pool column of the same name, the face boxes and the scores.
DERIVED_COLUMNS = ("uid_high", "uid_low", "key", "shard", "status", "error_message", TEXT_CHARS)
NOT_CARRIED = frozenset({"uid", FACE_BBOXES, *SCORE_COLUMNS}
                        | (set(POOL_SCHEMA.names) - set(DERIVED_COLUMNS)))


@dataclass(frozen=True)
class MetadataFile:
    """One metadata parquet, its position in sorted order and its npz (if any); paths, or
    URLs (str) read with ``options``."""

    index: int
    name: str
    parquet: Location
    npz: Location | None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False,
                                                   hash=False)
    fingerprints: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False,
                                                     hash=False)


@dataclass(frozen=True)
class _Member:
    """An npz member to copy: where it goes and its stored layout."""

    scorer: str
    kind: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


@dataclass
class FileResult:
    """What ingesting one metadata file produced (or found already done)."""

    rows: int
    by_status: Counter[str]
    skipped: bool = False


def _has_uid_column(parquet: Location, options: Mapping[str, Any] | None) -> bool:
    try:
        with ExitStack() as stack:
            return "uid" in pq.read_schema(arrow_source(parquet, options, stack)).names
    except (pa.ArrowInvalid, OSError):
        return False


def _listing(folder: Location, options: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        return list_pool(folder, options)
    except StorageError:
        return {}


def is_datacomp_metadata(folder: Location, options: Mapping[str, Any] | None = None) -> bool:
    """True for a folder (or prefix) with no ``*.tar`` whose ``*.parquet`` files carry a
    ``uid`` column."""
    entries = _listing(folder, options)
    if not entries or any(name.endswith(".tar") for name in entries):
        return False
    parquets = sorted(name for name in entries if name.endswith(".parquet"))
    return any(_has_uid_column(entries[name].location, options) for name in parquets)


def find_metadata_files(folder: Location, options: Mapping[str, Any] | None = None
                        ) -> list[MetadataFile]:
    """The folder's metadata parquets in sorted order, each with its npz when present."""
    entries = _listing(folder, options)
    files = []
    parquets = sorted(name for name in entries if name.endswith(".parquet"))
    for index, name in enumerate(parquets):
        stem = name[: -len(".parquet")]
        npz = entries.get(f"{stem}.npz")
        npz = npz if npz is not None and npz.is_file else None
        fingerprints = {"parquet": entries[name].fingerprint(),
                        **({"npz": npz.fingerprint()} if npz else {})}
        files.append(MetadataFile(index, stem, entries[name].location,
                                  npz.location if npz else None, dict(options or {}),
                                  fingerprints))
    return files


def prepare_run(paths: RunPaths) -> None:
    """Remove leftovers of interrupted writes and record the DataComp scorers."""
    directories = [paths.pool_dir]
    for scorer in SCORERS:
        directories += [paths.scores_dir(scorer.name), paths.scores_dir(scorer.name) / DONE_DIR,
                        paths.embeddings_dir(scorer.name)]
    for directory in directories:
        remove_stale_temporaries(directory)
    for scorer in SCORERS:
        write_json_atomic(paths.scores_dir(scorer.name) / SCORER_FILE, scorer.record())


# --- npz members --------------------------------------------------------------------------


def _read_npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f"unsupported .npy format version {version}")


def _npz_members(file: MetadataFile, rows: int) -> list[_Member]:
    """The known embedding members of the file's npz, checked against the parquet's rows."""
    if file.npz is None:
        return []
    members = []
    try:
        with open_pool_file(file.npz, file.options) as handle, \
                zipfile.ZipFile(handle) as archive:
            stored = set(archive.namelist())
            for scorer in SCORERS:
                for kind, name in scorer.members().items():
                    if f"{name}.npy" not in stored:
                        logger.warning("%s: no member %s; no %s embeddings", file.npz, name, kind)
                        continue
                    with archive.open(f"{name}.npy") as handle:
                        shape, fortran, dtype = _read_npy_header(handle)
                    members.append(_Member(scorer.name, kind, name, shape, dtype, fortran))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise PoolError(f"{file.npz}: unreadable npz ({exc})") from exc
    for member in members:
        if member.dtype.kind != "f":
            raise PoolError(f"{file.npz}: {member.name} holds {member.dtype}, not floats")
        if len(member.shape) != 2:
            raise PoolError(f"{file.npz}: {member.name} has shape {member.shape}, not [rows, dim]")
        if member.shape[0] != rows:
            raise PoolError(
                f"{file.npz}: {member.name} has {member.shape[0]} rows but {file.parquet} "
                f"has {rows}"
            )
    return members


def _copy_member(npz: Location, member: _Member, target: Path,
                 options: Mapping[str, Any] | None = None) -> None:
    """Stream one npz member into a float16 ``.npy``, a chunk of rows at a time."""
    rows, dim = member.shape
    with open_pool_file(npz, options) as handle, zipfile.ZipFile(handle) as archive, \
            archive.open(f"{member.name}.npy") as source, \
            atomic_path(target) as tmp, open(tmp, "wb") as out:
        _read_npy_header(source)
        if member.fortran_order:  # rare: read the member whole (one member, one file)
            with archive.open(f"{member.name}.npy") as whole:
                array = np.lib.format.read_array(whole, allow_pickle=False)
            np.lib.format.write_array(out, np.ascontiguousarray(array, EMBEDDING_DTYPE))
            return
        header = {"descr": EMBEDDING_DTYPE.str, "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_1_0(out, header)
        row_bytes = dim * member.dtype.itemsize
        chunk_rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
        for start in range(0, rows, chunk_rows):
            want = min(chunk_rows, rows - start) * row_bytes
            data = source.read(want)
            if len(data) != want:
                raise PoolError(f"{npz}: member {member.name} is truncated")
            if member.dtype != EMBEDDING_DTYPE:
                data = np.frombuffer(data, member.dtype).astype(EMBEDDING_DTYPE).tobytes()
            out.write(data)


# --- parquet rows -------------------------------------------------------------------------


def cast_column(column: pa.ChunkedArray | pa.Array, target: pa.DataType, source: Path,
                name: str) -> pa.ChunkedArray | pa.Array:
    """``column`` as ``target``; a PoolError naming the file and column when it is not."""
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        first = str(exc).splitlines()[0]
        raise PoolError(f"{source}: column {name} cannot be read as {target} ({first})") from exc


def _checked_uids(column: pa.ChunkedArray, source: Path) -> pa.ChunkedArray:
    """Lower-cased uids; a PoolError naming the file for the first one that is not a uid."""
    uids = pc.utf8_lower(cast_column(column, pa.string(), source, "uid"))
    valid = pc.fill_null(pc.match_substring_regex(uids, UID_PATTERN.pattern), False)
    if len(valid) and not pc.all(valid).as_py():
        bad = uids[pc.index(valid, False).as_py()].as_py()
        raise PoolError(f"{source}: column uid holds a value that is not a uid: {bad!r}")
    return uids


def _pool_batch(batch: pa.Table, file: MetadataFile) -> pa.Table:
    """One batch of metadata rows as pool rows (POOL_SCHEMA, then face_bboxes, then extras)."""
    n = batch.num_rows
    uids = _checked_uids(batch.column("uid"), file.parquet)
    fixed: dict[str, Any] = {
        "uid": uids,
        **uid_halves(uids),
        "key": uids,  # DataComp has no key
        "shard": pa.repeat(pa.scalar(file.name, pa.string()), n),
        "status": pa.repeat(pa.scalar("success", pa.string()), n),
        "error_message": pa.nulls(n, pa.string()),
    }
    columns: dict[str, Any] = {}
    for field in POOL_SCHEMA:
        if field.name in fixed:
            columns[field.name] = fixed[field.name]
        elif field.name == TEXT_CHARS:
            columns[field.name] = text_chars(columns["text"])
        elif field.name in batch.column_names:
            columns[field.name] = cast_column(batch.column(field.name), field.type,
                                              file.parquet, field.name)
        else:
            columns[field.name] = pa.nulls(n, field.type)
    if FACE_BBOXES in batch.column_names:
        columns[FACE_BBOXES] = cast_column(batch.column(FACE_BBOXES), FACE_BBOXES_TYPE,
                                           file.parquet, FACE_BBOXES)
    else:
        columns[FACE_BBOXES] = pa.nulls(n, FACE_BBOXES_TYPE)
    carried = [name for name in batch.column_names if name not in NOT_CARRIED]  # none lost
    renames = clash_renames(carried, list(columns))
    for name in carried:
        columns[renames.get(name, name)] = batch.column(name)
    return with_renames(pa.table(columns), renames)


@dataclass(frozen=True)
class ReferenceLayout:
    """A referencing run's pool table: every column (held by the part or read from the
    metadata file), the parts' own schema, and the referenced columns whose type differs from
    the pool table's (ingest reads and casts those once, so a bad value fails here)."""

    columns: tuple[Column, ...]
    part_schema: pa.Schema
    checked: tuple[Column, ...]


CAST_NAMES = {pa.string(): "string", pa.int32(): "int32"}


def reference_layout(schemas: list[pa.Schema]) -> ReferenceLayout:
    """The pool table over metadata files with these schemas, in the copied table's column
    order (POOL_SCHEMA, face_bboxes, then the files' other columns, renamed on a clash)."""
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in schema:
            types.setdefault(field.name, field.type)
    columns: list[Column] = []
    part_fields: list[pa.Field] = []
    targets: dict[str, pa.DataType] = {}
    for field in [*POOL_SCHEMA, pa.field(FACE_BBOXES, FACE_BBOXES_TYPE)]:
        if field.name in ("uid", "key"):
            columns.append(Column(field.name, "uid", "uid"))
        elif field.name in DERIVED_COLUMNS or field.name not in types:
            columns.append(Column(field.name))
            part_fields.append(field)
        else:
            cast = "face_bboxes" if field.name == FACE_BBOXES else CAST_NAMES[field.type]
            columns.append(Column(field.name, field.name, cast))
            targets[field.name] = field.type
    carried = [name for name in types if name not in NOT_CARRIED]  # as a copying run carries them
    renames = clash_renames(carried, [c.name for c in columns])
    columns += [Column(renames.get(name, name), name) for name in carried]
    checked = tuple(c for c in columns if c.source in targets and c.name not in ("uid", "key")
                    and types[c.source] != targets[c.source])
    part_schema = with_renames(pa.schema(part_fields).empty_table(), renames).schema
    return ReferenceLayout(tuple(columns), part_schema, checked)


def _reference_batch(batch: pa.Table, file: MetadataFile, layout: ReferenceLayout) -> pa.Table:
    """One batch of metadata rows as a referencing part's rows: what ingest derives (and nulls
    for pool columns no file has); the referenced columns whose type differs are cast once
    here so that a value that cannot be read fails ingest, naming the file and column."""
    n = batch.num_rows
    uids = _checked_uids(batch.column("uid"), file.parquet)
    text = cast_column(batch.column("text"), pa.string(), file.parquet, "text")
    derived: dict[str, Any] = {
        **uid_halves(uids),
        "shard": pa.repeat(pa.scalar(file.name, pa.string()), n),
        "status": pa.repeat(pa.scalar("success", pa.string()), n),
        "error_message": pa.nulls(n, pa.string()),
        TEXT_CHARS: text_chars(text),
    }
    for column in layout.checked:
        if column.source in batch.column_names:
            target = FACE_BBOXES_TYPE if column.cast == "face_bboxes" else \
                POOL_SCHEMA.field(column.name).type
            cast_column(batch.column(column.source), target, file.parquet, column.source)
    arrays = [derived.get(field.name, pa.nulls(n, field.type)) for field in layout.part_schema]
    return pa.Table.from_arrays(arrays, schema=layout.part_schema)


def _score_batch(batch: pa.Table, uids: pa.ChunkedArray | None, scorer: DataCompScorer,
                 source: Path) -> pa.Table:
    """Score rows of one batch: ``ok``, or ``missing_score`` with a null score; without
    ``uids`` (a referencing run) the rows carry no uid."""
    n = batch.num_rows
    if scorer.column in batch.column_names:
        values = cast_column(batch.column(scorer.column), pa.float32(), source, scorer.column)
        scores = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        reason = f"no {scorer.column} in the metadata"
    else:
        scores = np.full(n, np.nan, dtype=np.float32)
        reason = f"the metadata has no column {scorer.column}"
    missing = np.isnan(scores)
    mask = pa.array(missing, pa.bool_())
    columns = {
        "uid": uids,
        score_column(scorer.name): pa.array(scores, pa.float32(), mask=missing),
        "status": pc.if_else(mask, MISSING_SCORE, OK),
        "error": pc.if_else(mask, pa.scalar(reason), pa.scalar(None, pa.string())),
    }
    if uids is None:
        del columns["uid"]
    return pa.table(columns, schema=_score_part_schema(scorer.name, uids is None))


@contextmanager
def _open_parquet(file: MetadataFile) -> Iterator[pq.ParquetFile]:
    """The metadata parquet, open for the block (a URL's handle closed after it)."""
    with ExitStack() as stack:
        try:
            metadata = pq.ParquetFile(arrow_source(file.parquet, file.options, stack))
        except (pa.ArrowInvalid, OSError) as exc:
            raise PoolError(f"{file.parquet}: unreadable parquet ({exc})") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in metadata.schema_arrow.names]
        if missing:
            raise PoolError(f"{file.parquet}: missing column(s) {', '.join(missing)}")
        yield metadata


def _write_tables(file: MetadataFile, metadata: pq.ParquetFile, paths: RunPaths,
                  layout: ReferenceLayout | None = None) -> dict[str, Counter[str]]:
    """Stream the parquet into the pool part and the score parts; return score statuses.
    With ``layout`` (a referencing run) the pool part holds the derived columns alone, the
    score parts no uid, and only the columns these need are read."""
    statuses: dict[str, Counter[str]] = {s.name: Counter() for s in SCORERS}
    part = part_name(file.index)
    if layout is None:
        pool_schema = _pool_batch(metadata.schema_arrow.empty_table(), file).schema
        columns = None
    else:
        pool_schema = layout.part_schema
        wanted = {"uid", "text", *SCORE_COLUMNS, *(c.source for c in layout.checked)}
        columns = [name for name in metadata.schema_arrow.names if name in wanted]
    with ExitStack() as stack:
        pool_tmp = stack.enter_context(atomic_path(paths.pool_part(file.index)))
        score_tmps = {
            s.name: stack.enter_context(atomic_path(paths.scores_dir(s.name) / f"{part}.parquet"))
            for s in SCORERS
        }
        # writers close (entered last, left first) before their files are renamed into place
        pool_writer = stack.enter_context(
            pq.ParquetWriter(pool_tmp, pool_schema, use_dictionary=POOL_DICTIONARY_COLUMNS)
        )
        score_schemas = {s.name: _score_part_schema(s.name, layout is not None) for s in SCORERS}
        score_writers = {
            s.name: stack.enter_context(pq.ParquetWriter(
                score_tmps[s.name], score_schemas[s.name], use_dictionary=["status", "error"]
            ))
            for s in SCORERS
        }
        for batch in _batches(metadata, file, columns):
            if layout is None:
                pool = _pool_batch(batch, file)
                uids = pool.column("uid")
            else:
                pool = _reference_batch(batch, file, layout)
                uids = None
            pool_writer.write_table(pool)
            for scorer in SCORERS:
                scores = _score_batch(batch, uids, scorer, file.parquet)
                score_writers[scorer.name].write_table(scores)
                statuses[scorer.name].update(_count(scores.column("status")))
    return statuses


def _score_part_schema(scorer: str, referencing: bool) -> pa.Schema:
    """A score part's schema: a referencing run's parts leave out the uid (row-aligned)."""
    schema = score_schema(scorer)
    return schema.remove(schema.get_field_index("uid")) if referencing else schema


def _batches(metadata: pq.ParquetFile, file: MetadataFile,
             columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The file's rows (``columns`` of them, or all) in bounded batches; a PoolError naming
    the file if it cannot be read."""
    batches = metadata.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise PoolError(f"{file.parquet}: unreadable parquet ({exc})") from exc
        yield pa.Table.from_batches([batch])


def _count(column: pa.ChunkedArray) -> Counter[str]:
    counts = pc.value_counts(column)
    return Counter(dict(zip(counts.field("values").to_pylist(),
                            counts.field("counts").to_pylist(), strict=True)))


def _outputs(file: MetadataFile, members: tuple[_Member, ...], paths: RunPaths) -> list[Path]:
    """Every file that a finished metadata file has in the run."""
    part = part_name(file.index)
    outputs = [paths.pool_part(file.index)]
    for scorer in SCORERS:
        outputs += [paths.scores_dir(scorer.name) / f"{part}.parquet",
                    paths.scores_dir(scorer.name) / DONE_DIR / f"{part}.json"]
    outputs += [_embedding_path(paths, file, m) for m in members]
    return outputs


def _embedding_path(paths: RunPaths, file: MetadataFile, member: _Member) -> Path:
    return paths.embeddings_dir(member.scorer) / f"{part_name(file.index)}.{member.kind}.npy"


@dataclass(frozen=True)
class FilePlan:
    """A metadata file checked before anything is written: its rows and npz members."""

    file: MetadataFile
    rows: int
    members: tuple[_Member, ...]
    schema: pa.Schema


def inspect_file(file: MetadataFile) -> FilePlan:
    """Check a file's columns and its npz against the parquet (footers and headers only)."""
    with _open_parquet(file) as metadata:
        rows = metadata.metadata.num_rows
        schema = metadata.schema_arrow
    if file.npz is None:
        logger.info("%s: no npz beside it; no embedding tables for this file", file.parquet)
    return FilePlan(file, rows, tuple(_npz_members(file, rows)), schema)


def ingest_metadata_file(plan: FilePlan, paths: RunPaths,
                         layout: ReferenceLayout | None = None) -> FileResult:
    """Write (or find finished) the pool, score and embedding parts of one metadata file
    (with ``layout``, a referencing run's parts)."""
    started = time.perf_counter()
    file, rows = plan.file, plan.rows
    if all(p.is_file() for p in _outputs(file, plan.members, paths)):
        pool = pq.read_table(paths.pool_part(file.index), columns=["status"])
        return FileResult(pool.num_rows, _count(pool.column("status")), skipped=True)
    with _open_parquet(file) as metadata:
        statuses = _write_tables(file, metadata, paths, layout)
    for member in plan.members:
        _copy_member(file.npz, member, _embedding_path(paths, file, member), file.options)
    seconds = time.perf_counter() - started
    part = part_name(file.index)
    for scorer in SCORERS:
        stats = ShardStats(shards=1, samples=rows, seconds=seconds,
                           by_status=+statuses[scorer.name])
        write_json_atomic(paths.scores_dir(scorer.name) / DONE_DIR / f"{part}.json",
                          stats.to_dict())
    logger.debug("%s: %d rows in %.1fs", base_name(file.parquet), rows, seconds)
    return FileResult(rows, Counter({"success": rows}) if rows else Counter())
