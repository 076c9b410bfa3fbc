"""Trust, tar shards: every sample of a hostile or broken shard gets a status, memory stays
bounded, and no sample gets another sample's image or score."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.executor import ExecutorConfig
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.shards import TarReadResult, iter_tar_samples
from curate.models import ModelSpec
from curate.score.stage import ScoreConfig, score_run
from tests.generators.synthetic import SyntheticPool

SHARD = "00000"


def _members(tar: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(tar) as archive:
        return [(info, archive.extractfile(info).read() if info.isfile() else None)
                for info in archive.getmembers()]


def _write(tar: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)


def _scored_keys(pool_root: Path) -> list[str]:
    """Keys of the first shard that have an image and a caption (the ones scored ok)."""
    keys = []
    for sample in iter_tar_samples(pool_root / f"{SHARD}.tar", TarReadResult()):
        if sample.image() and sample.caption():
            keys.append(sample.key)
    return keys


def _score(pool_root: Path, run: Path) -> dict[str, tuple[str, float | None]]:
    """key -> (status, score) of the first shard after ingest and score."""
    ingest_pool(IngestConfig(pool=pool_root, run=run))
    score_run(ScoreConfig(run=run, model=ModelSpec("fp-tiny-vit", random_init=True),
                          executor=ExecutorConfig(workers=0), progress=False, batch_size=8))
    keys = pq.read_table(run / "pool" / "part-00000.parquet").column("key").to_pylist()
    table = pq.read_table(run / "scores" / "dfn" / "part-00000.parquet").to_pylist()
    return {k: (row["status"], row["dfn_score"]) for k, row in zip(keys, table, strict=True)}


def _same(result: dict, clean: dict, except_keys: set[str] = frozenset()) -> bool:
    """Same statuses, and scores equal within float noise (batches differ in make-up)."""
    a = {k: v for k, v in result.items() if k not in except_keys}
    b = {k: v for k, v in clean.items() if k not in except_keys}
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and (a[k][1] is None) == (b[k][1] is None)
        and (a[k][1] is None or abs(a[k][1] - b[k][1]) < 1e-5) for k in a)


@pytest.fixture()
def copy(tmp_path: Path, pool: SyntheticPool) -> Path:
    shutil.copytree(pool.root, tmp_path / "pool")
    return tmp_path / "pool"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, pool: SyntheticPool) -> dict:
    return _score(pool.root, tmp_path_factory.mktemp("clean") / "run")


def test_a_gzip_compressed_tar_is_read_as_such(copy: Path, tmp_path: Path, clean: dict) -> None:
    tar = copy / f"{SHARD}.tar"
    tar.write_bytes(gzip.compress(tar.read_bytes()))  # still named .tar
    assert _same(_score(copy, tmp_path / "run"), clean)


def test_a_cut_gzip_tar_is_named_truncated_and_keeps_every_row(copy: Path, tmp_path: Path) -> None:
    tar = copy / f"{SHARD}.tar"
    data = gzip.compress(tar.read_bytes())
    tar.write_bytes(data[: len(data) // 2])
    result = _score(copy, tmp_path / "run")
    statuses = {status for status, _ in result.values()}
    assert "shard_truncated" in statuses and len(result) == 12
    error = pq.read_table(tmp_path / "run/scores/dfn/part-00000.parquet").column("error")
    assert any("gzip-compressed tar" in (e or "") for e in error.to_pylist())


def test_a_key_that_occurs_twice_scores_no_copy(copy: Path, tmp_path: Path, clean: dict) -> None:
    tar = copy / f"{SHARD}.tar"
    victim, donor = _scored_keys(copy)[:2]
    members = _members(tar)
    # the donor's image and caption again, under the victim's key, at the end of the shard
    for info, data in [m for m in members if m[0].name.startswith(donor + ".")]:
        clone = tarfile.TarInfo(info.name.replace(donor, victim, 1))
        clone.size = info.size
        members.append((clone, data))
    _write(tar, members)
    result = _score(copy, tmp_path / "run")
    assert result[victim][0] == "duplicate_key" and result[victim][1] is None
    assert _same(result, clean, {victim})


def test_links_and_bad_member_names_get_a_status(copy: Path, tmp_path: Path, clean: dict) -> None:
    tar = copy / f"{SHARD}.tar"
    linked, renamed, _ = _scored_keys(copy)[:3]
    members = []
    for info, data in _members(tar):
        if info.name == f"{linked}.jpg":
            link = tarfile.TarInfo(info.name)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            members.append((link, None))
        elif info.name == f"{renamed}.txt":
            bad = tarfile.TarInfo(f"{renamed}.t\udcffxt")  # not UTF-8 once written
            bad.size = info.size
            members.append((bad, data))
        else:
            members.append((info, data))
    outside = tarfile.TarInfo("../outside.jpg")
    outside.size = 3
    members.append((outside, b"abc"))
    _write(tar, members)
    result = _score(copy, tmp_path / "run")
    assert result[linked] == ("bad_member", None)
    assert result[renamed] == ("bad_member", None)
    assert _same(result, clean, {linked, renamed})
    assert not (tmp_path / "outside.jpg").exists()


def test_a_sparse_member_declaring_gigabytes_is_not_read(copy: Path, tmp_path: Path) -> None:
    """A member of 8 GiB that takes a few KB in the tar: a status, and the scoring process
    stays far below that in memory (RSS measured in a subprocess)."""
    tar = copy / f"{SHARD}.tar"
    bomb = _scored_keys(copy)[0]
    kept = [m for m in _members(tar) if not m[0].name.startswith(bomb + ".")]
    _write(tar, kept)
    folder = tmp_path / "members"
    folder.mkdir()
    with open(folder / f"{bomb}.jpg", "wb") as handle:
        handle.truncate(8 * 1024**3)  # sparse on disk
    (folder / f"{bomb}.txt").write_text("a red circle")
    subprocess.run(["tar", "--sparse", "-rf", str(tar), "-C", str(folder), f"{bomb}.jpg",
                    f"{bomb}.txt"], check=True)
    assert tar.stat().st_size < 1024**2
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=copy, run=run))
    cli = Path(sys.executable).parent / "filter-pool"
    # A small parent runs the command and reports RUSAGE_CHILDREN: Linux carries a process's
    # peak RSS across fork and exec, so a child of the (large) pytest process would report
    # pytest's own size.
    measure = ("import resource, subprocess, sys; "
               "code = subprocess.run(sys.argv[1:], stdout=sys.stderr).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", measure, str(cli), "score", str(run),
                             "--model", "fp-tiny-vit", "--random-init", "--workers", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < 3 * 1024**2  # KiB: far below the member's 8 GiB
    keys = pq.read_table(run / "pool" / "part-00000.parquet").column("key").to_pylist()
    rows = pq.read_table(run / "scores" / "dfn" / "part-00000.parquet").to_pylist()
    status = {k: (r["status"], r["error"]) for k, r in zip(keys, rows, strict=True)}
    assert status[bomb][0] == "too_large" and "declares 8589934592 bytes" in status[bomb][1]


def test_export_leaves_every_copy_of_a_repeated_key_aside(copy: Path, tmp_path: Path) -> None:
    from curate.export.stage import ExportConfig, export_subset
    from curate.select.subset import SelectConfig, select_subset

    tar = copy / f"{SHARD}.tar"
    victim, donor = _scored_keys(copy)[:2]
    members = _members(tar)
    for info, data in [m for m in members if m[0].name.startswith(donor + ".")]:
        clone = tarfile.TarInfo(info.name.replace(donor, victim, 1))
        clone.size = info.size
        members.append((clone, data))  # the victim's key again, with the donor's image
    _write(tar, members)
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=copy, run=run))
    select_subset(SelectConfig(run=run, name="all"))
    summary = export_subset(ExportConfig(run=run, subset="all", out=tmp_path / "out",
                                         progress=False))
    assert summary.missing["duplicate_key"] == 1
    exported = set()
    for shard in (tmp_path / "out").glob("*.tar"):
        with tarfile.open(shard) as archive:
            exported |= {m.name.split(".")[0] for m in archive.getmembers()}
    victim_uid = dict(zip(*pq.read_table(run / "pool" / "part-00000.parquet",
                                         columns=["key", "uid"]).to_pydict().values(),
                          strict=True))[victim]
    assert victim_uid not in exported
