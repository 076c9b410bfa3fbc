"""Trust, member names: exported and reinforced tar members are named by validated uids only;
a manifest uid or an input key that is not one is refused with the file named."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.export.stage import ExportConfig, export_subset
from curate.io.shards import add_tar_member
from curate.models import ModelSpec
from curate.reinforce.stage import ReinforceConfig, reinforce
from tests.generators.synthetic import SyntheticPool
from tests.test_export import good_rows, write_subset
from tests.test_reinforce import write_handoff

HOSTILE_UIDS = ["../../etc/evil", "-rf", "a" * 31 + "\x00", "A" * 32, "0" * 31 + ".", ""]


@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_a_manifest_uid_that_is_not_a_uid_is_refused(run_dir: Path, pool: SyntheticPool,
                                                    tmp_path: Path, uid: str) -> None:
    table = good_rows(run_dir, pool)
    uids = table.column("uid").to_pylist()
    uids[1] = uid
    table = table.set_column(table.column_names.index("uid"), "uid", pa.array(uids))
    folder = write_subset(run_dir, table)
    with pytest.raises(UserError, match="is not a uid") as caught:
        export_subset(ExportConfig(run=run_dir, subset="top", out=tmp_path / "out",
                                   progress=False))
    assert str(folder / "manifest.parquet") in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert pc.count(table.column("uid")).as_py() == table.num_rows


def test_a_handoff_key_that_is_not_a_uid_fails_its_shard(tmp_path: Path) -> None:
    shards = write_handoff(tmp_path / "shards")
    tar = sorted(shards.glob("*.tar"))[0]
    with tarfile.open(tar, "a") as archive:
        for ext, data in (("jpg", b"\xff\xd8"), ("txt", b"x")):
            add_tar_member(archive, f"-rf.{ext}", data, mtime=0)
    summary = reinforce(ReinforceConfig(
        shards=shards, out=tmp_path / "out",
        teachers=(ModelSpec("fp-tiny-vit", random_init=True),), augmentations=1,
        executor=ExecutorConfig(workers=0, retries=0), progress=False))
    assert list(summary.failed_shards) == [tar.stem]
    assert "is not a uid" in summary.failed_shards[tar.stem]
    assert str(tar) in summary.failed_shards[tar.stem]
    assert not (tmp_path / "out" / tar.name).exists()
    assert not any(p.name.startswith("-") for p in (tmp_path / "out").rglob("*"))
