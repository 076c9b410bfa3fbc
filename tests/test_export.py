"""Export: webdataset hand-off shards that apple/ml-mobileclip-dr's reader accepts."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.errors import UserError
from curate.export.stage import MEMBER_MTIME, ExportConfig, export_subset, to_rgb_jpeg
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.workspace import RunPaths
from tests.generators.synthetic import SyntheticPool, truncate_file, write_synthetic_pool

# Member kinds RayGen's TarReader (src/raygen/datasetio.py) accepts; anything else raises.
RAYGEN_EXTENSIONS = {"jpg", "txt", "url.txt", "npy", "npz", "pth.gz"}


def pool_table(run: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in RunPaths(run).pool_parts())


def write_subset(run: Path, table: pa.Table, name: str = "top") -> Path:
    """A subset folder as select writes it: manifest.parquet (plus a score), selection.json."""
    scores = pa.array([(i * 37 % 101) / 101 for i in range(table.num_rows)], pa.float32())
    table = table.append_column("dfn_score", scores)
    folder = run / "subsets" / name
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "manifest.parquet")
    (folder / "selection.json").write_text(json.dumps({"by": "dfn_score", "fraction": 0.5}))
    return folder


def good_rows(run: Path, pool: SyntheticPool) -> pa.Table:
    table = pool_table(run)
    keep = pc.invert(pc.is_in(table.column("key"), pa.array(list(pool.planted))))
    return table.filter(keep)


def export(run: Path, out: Path, **kwargs: Any) -> Any:
    return export_subset(ExportConfig(run=run, subset="top", out=out, progress=False, **kwargs))


def read_shard(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def read_export(out: Path) -> list[dict[str, Any]]:
    """Samples of all shards in order, grouped the way RayGen's TarReader groups them."""
    samples: list[dict[str, Any]] = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        for info, data in read_shard(out / f"{json.loads(line)['shard']}.tar"):
            uid, extension = info.name.split(".", 1)
            if not samples or samples[-1]["uid"] != uid:
                samples.append({"uid": uid})
            samples[-1][extension] = data
    return samples


def test_exports_exactly_the_selected_samples(run_dir: Path, pool: SyntheticPool, tmp_path: Path):
    table = good_rows(run_dir, pool)
    selected = table.take(list(range(table.num_rows - 1, -1, -2)))  # manifest in reverse order
    folder = write_subset(run_dir, selected)
    out = tmp_path / "handoff"

    summary = export(run_dir, out, shard_size=4)

    assert summary.selected == summary.exported == selected.num_rows
    assert not summary.missing and summary.reencoded == 0
    samples = read_export(out)
    manifest = pq.read_table(folder / "manifest.parquet").to_pylist()
    rows = {r["uid"]: r for r in manifest}
    source_order = [r["uid"] for r in reversed(manifest)]  # output follows the source tars
    assert [s["uid"] for s in samples] == source_order
    for sample in samples:
        row = rows[sample["uid"]]
        assert "." not in sample["uid"]
        assert sorted(k for k in sample if k != "uid") == ["jpg", "json", "txt"]
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB"
        assert hashlib.sha256(sample["jpg"]).hexdigest() == row["sha256"]  # passed through
        assert sample["txt"].decode("utf-8") == row["text"]
        meta = json.loads(sample["json"])
        assert meta["uid"] == row["uid"] and meta["url"] == row["url"]
        assert (meta["shard"], meta["key"], meta["sha256"]) == (row["shard"], row["key"],
                                                                 row["sha256"])
        assert (meta["original_width"], meta["original_height"]) == (
            row["original_width"], row["original_height"])
        assert math.isclose(meta["scores"]["dfn_score"], row["dfn_score"], rel_tol=1e-6)

    info = json.loads((out / "info.json").read_text())
    assert info["subset"] == "top" and info["run"] == str(run_dir.resolve())
    assert info["num_samples"] == info["num_selected"] == selected.num_rows
    assert info["num_shards"] == summary.shards == math.ceil(selected.num_rows / 4)
    assert info["shard_size"] == 4
    expected_sha = hashlib.sha256((folder / "selection.json").read_bytes()).hexdigest()
    assert info["selection_sha256"] == expected_sha
    assert sorted(info["lengths"]) == sorted(str(p.resolve()) for p in out.glob("*.tar"))
    assert info["totalLength"] == str(selected.num_rows)
    assert pq.read_table(out / "missing.parquet").num_rows == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["handoff", "run"]  # no staging left


def test_sizes_and_sha256_come_from_the_pool_when_the_manifest_lacks_them(
        run_dir: Path, pool: SyntheticPool, tmp_path: Path):
    table = good_rows(run_dir, pool)
    write_subset(run_dir, table.select(["uid", "shard", "key", "url", "text"]))  # as select does
    out = tmp_path / "out"

    summary = export(run_dir, out, shard_size=1000)

    assert summary.exported == table.num_rows
    rows = {r["uid"]: r for r in table.to_pylist()}
    for sample in read_export(out):
        meta, row = json.loads(sample["json"]), rows[sample["uid"]]
        assert meta["sha256"] == row["sha256"] == hashlib.sha256(sample["jpg"]).hexdigest()
        assert (meta["original_width"], meta["original_height"]) == (
            row["original_width"], row["original_height"])
        assert meta["original_width"] is not None


@pytest.mark.parametrize("shard_size", [1, 5, 7, 1000])
def test_shard_size_splits_output(run_dir: Path, pool: SyntheticPool, tmp_path: Path,
                                  shard_size: int):
    table = good_rows(run_dir, pool)
    write_subset(run_dir, table)
    out = tmp_path / "out"
    export(run_dir, out, shard_size=shard_size)

    n = table.num_rows
    expected = [min(shard_size, n - start) for start in range(0, n, shard_size)]
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines == [{"shard": f"{i:08d}", "num_uids": c} for i, c in enumerate(expected)]
    assert sorted(p.name for p in out.glob("*.tar")) == [f"{i:08d}.tar" for i in range(len(lines))]
    for line in lines:
        assert len(read_shard(out / f"{line['shard']}.tar")) == 3 * line["num_uids"]
    info = json.loads((out / "info.json").read_text())
    assert info["lengths"] == {
        str((out / f"{x['shard']}.tar").resolve()): str(x["num_uids"]) for x in lines
    }


def test_raygen_reader_accepts_the_shards(run_dir: Path, pool: SyntheticPool, tmp_path: Path):
    """Replays RayGen's TarReader: member kinds, uid = name up to the first '.', json merge."""
    write_subset(run_dir, good_rows(run_dir, pool))
    out = tmp_path / "out"
    export(run_dir, out, shard_size=10)
    for tar_path in sorted(out.glob("*.tar")):
        samples: list[dict[str, Any]] = []
        for info, data in read_shard(tar_path):
            assert info.isfile() and "/" not in info.name
            assert (info.mode, info.uid, info.gid, info.mtime) == (0o644, 0, 0, MEMBER_MTIME)
            uid, extension = info.name.split(".", 1)
            assert extension in RAYGEN_EXTENSIONS or extension.endswith("json")
            if not samples or samples[-1]["_tar_uid"] != uid:
                samples.append({"_tar_uid": uid})
            sample = samples[-1]
            sample["uid"] = uid
            if extension == "txt":
                sample["text"] = data.decode("utf-8")
            elif extension == "jpg":
                sample["image"] = data
            else:
                sample.update(json.loads(data))
        for sample in samples:
            assert sample["uid"] == sample["_tar_uid"]  # the json's uid overrides the member's
            assert {"uid", "text", "image", "url"} <= set(sample)
            assert "caption" not in sample  # RayGen's embedding pass asserts text xor caption
            assert not any("emb" in k or k.startswith("syn_text") for k in sample)


def test_missing_samples_are_reported(run_dir: Path, pool: SyntheticPool, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture):
    table = pool_table(run_dir)
    first = table.slice(0, 1).to_pylist()[0]
    ghost = {**first, "uid": "f" * 32, "key": "999999999"}  # a key the tar does not hold
    stray = {**first, "uid": "e" * 32, "shard": "77777"}  # a shard the run does not list
    extra = pa.Table.from_pylist([ghost, stray, first], schema=table.schema)  # first: duplicate
    write_subset(run_dir, pa.concat_tables([table, extra]))
    out = tmp_path / "out"

    with caplog.at_level(logging.WARNING, logger="curate.export.stage"):
        summary = export(run_dir, out, shard_size=8)

    assert "listed in" in caplog.text and "shard 00000:" in caplog.text
    expected_reasons = {
        "failed_to_download": "not_in_tar",
        "corrupt_image": "corrupt_image",
        "unsupported_format": "unsupported_format",
        "missing_caption": "missing_caption",
        "missing_image": "missing_image",
        "too_large": "too_large",
    }
    missing = pq.read_table(out / "missing.parquet").to_pylist()
    by_key = {(m["shard"], m["key"], m["uid"]): m["reason"] for m in missing}
    for key, kind in pool.planted.items():
        row = table.filter(pc.equal(table.column("key"), key)).to_pylist()[0]
        assert by_key[(row["shard"], key, row["uid"])] == expected_reasons[kind]
    assert by_key[(ghost["shard"], ghost["key"], ghost["uid"])] == "not_in_tar"
    assert by_key[(stray["shard"], stray["key"], stray["uid"])] == "unknown_shard"
    assert by_key[(first["shard"], first["key"], first["uid"])] == "duplicate_uid"
    assert len(missing) == len(pool.planted) + 3
    assert summary.missing == {
        "not_in_tar": 2, "corrupt_image": 1, "unsupported_format": 1, "missing_caption": 1,
        "missing_image": 1, "too_large": 1, "unknown_shard": 1, "duplicate_uid": 1,
    }
    assert summary.exported == table.num_rows - len(pool.planted)
    assert summary.exported + sum(summary.missing.values()) == summary.selected
    exported = {s["uid"] for s in read_export(out)}
    assert exported.isdisjoint(m["uid"] for m in missing if m["reason"] != "duplicate_uid")
    assert first["uid"] in exported  # the first of two rows with one uid is exported
    info = json.loads((out / "info.json").read_text())
    assert info["missing"] == dict(summary.missing)


def test_truncated_and_absent_tars_are_reported(tmp_path: Path):
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=3, samples_per_shard=8,
                                plant_bad=False)
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    truncate_file(pool.root / "00001.tar", 0.5)
    (pool.root / "00002.tar").unlink()
    write_subset(run, pool_table(run))

    summary = export(run, tmp_path / "out")

    missing = pq.read_table(tmp_path / "out" / "missing.parquet").to_pylist()
    reasons = {(m["shard"], m["reason"]) for m in missing}
    assert reasons == {("00001", "shard_truncated"), ("00002", "tar_missing")}
    assert summary.missing["tar_missing"] == 8
    assert 0 < summary.missing["shard_truncated"] < 8
    assert summary.exported == 8 + (8 - summary.missing["shard_truncated"])


def _image_bytes(mode: str, fmt: str, **save: Any) -> bytes:
    color = {"RGBA": (200, 30, 40, 0), "L": 90, "CMYK": (0, 200, 180, 10)}.get(mode, (40, 80, 220))
    image = Image.new(mode, (32, 24), color)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _write_pool(root: Path, images: dict[str, bytes]) -> None:
    """One img2dataset-style shard holding the given images (key -> bytes)."""
    root.mkdir(parents=True)
    rows = []
    with tarfile.open(root / "00000.tar", "w") as tar:
        for key, data in images.items():
            row = {"url": f"http://x/{key}", "caption": f"image {key}", "key": key,
                   "status": "success", "sha256": hashlib.sha256(data).hexdigest()}
            rows.append(row)
            for extension, payload in (("jpg", data), ("txt", row["caption"].encode()),
                                       ("json", json.dumps(row).encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    pq.write_table(pa.Table.from_pylist(rows), root / "00000.parquet")


def test_non_jpeg_and_non_rgb_images_are_reencoded(tmp_path: Path):
    images = {
        "000000000": _image_bytes("RGB", "JPEG"),
        "000000001": _image_bytes("RGBA", "PNG"),
        "000000002": _image_bytes("L", "JPEG"),
        "000000003": _image_bytes("RGB", "JPEG", progressive=True),
        "000000004": _image_bytes("CMYK", "JPEG"),
        "000000005": _image_bytes("RGB", "WEBP"),
    }
    _write_pool(tmp_path / "pool", images)
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=tmp_path / "pool", run=run))
    write_subset(run, pool_table(run))

    summary = export(run, tmp_path / "out")

    assert summary.exported == 6 and summary.reencoded == 5
    samples = {json.loads(s["json"])["key"]: s["jpg"] for s in read_export(tmp_path / "out")}
    assert samples["000000000"] == images["000000000"]
    for data in samples.values():
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert not image.info.get("progressive")
        assert to_rgb_jpeg(data) == (data, False)  # the output is itself pass-through
    matted = Image.open(io.BytesIO(samples["000000001"])).getpixel((16, 12))
    assert min(matted) > 240  # fully transparent pixels are matted on white


def test_existing_output_is_refused_unless_overwrite(run_dir: Path, pool: SyntheticPool,
                                                     tmp_path: Path):
    write_subset(run_dir, good_rows(run_dir, pool))
    out = tmp_path / "out"
    first = export(run_dir, out, shard_size=100)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    again = export(run_dir, out, shard_size=100)  # the same settings: reused, nothing written
    assert again.reused and again.to_dict() == {**first.to_dict(), "reused": True}
    with pytest.raises(UserError, match="other settings .shard_size: was 100, now 5"):
        export(run_dir, out, shard_size=5)
    (out / "info.json").unlink()
    with pytest.raises(UserError, match="already exists"):
        export(run_dir, out, shard_size=100)
    (out / "info.json").write_bytes(before["info.json"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]

    summary = export(run_dir, out, shard_size=5, overwrite=True)
    assert len(list(out.glob("*.tar"))) == summary.shards > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]

    with pytest.raises(UserError, match="is the input"):
        export(run_dir, run_dir, overwrite=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="was not made by `filter-pool export`"):
        export(run_dir, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_same_input_gives_identical_bytes(run_dir: Path, tmp_path: Path):
    write_subset(run_dir, pool_table(run_dir))  # planted samples too: missing.parquet non-empty
    export(run_dir, tmp_path / "a", shard_size=7)
    export(run_dir, tmp_path / "b", shard_size=7)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        if name != "info.json":  # holds its creation time and its own path
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_requests_are_user_errors(run_dir: Path, tmp_path: Path):
    with pytest.raises(UserError, match=str(run_dir / "subsets" / "nope")):
        export_subset(ExportConfig(run=run_dir, subset="nope", out=tmp_path / "o"))
    with pytest.raises(UserError, match="not a run"):
        export_subset(ExportConfig(run=tmp_path, subset="top", out=tmp_path / "o"))
    for bad in ({"shard_size": 0}, {"jpeg_quality": 0}, {"subset": "a/b"}):
        with pytest.raises(UserError):
            ExportConfig(**{"run": run_dir, "subset": "top", "out": tmp_path / "o", **bad})
    table = pool_table(run_dir).slice(0, 2)
    uids = pa.array(["a.b", "c" * 32])
    write_subset(run_dir, table.set_column(0, "uid", uids))
    with pytest.raises(UserError, match="'a.b'"):
        export(run_dir, tmp_path / "o")
    write_subset(run_dir, table.drop_columns(["key"]))
    with pytest.raises(UserError, match="missing column.*key"):
        export(run_dir, tmp_path / "o")
    write_subset(run_dir, table)
    record = json.loads((run_dir / "run.json").read_text())
    for shard in record["shards"]:
        shard["tar"] = None  # as a DataComp metadata ingest records it
    (run_dir / "run.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="no image tars"):
        export(run_dir, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_empty_subset_exports_no_shards(run_dir: Path, tmp_path: Path):
    write_subset(run_dir, pool_table(run_dir).slice(0, 0))
    summary = export(run_dir, tmp_path / "out")
    assert (summary.exported, summary.shards) == (0, 0)
    assert (tmp_path / "out" / "manifest.jsonl").read_text() == ""
    assert json.loads((tmp_path / "out" / "info.json").read_text())["lengths"] == {}
