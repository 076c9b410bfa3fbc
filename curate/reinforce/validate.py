"""Check a reinforced directory against every invariant of its config.json, shard by shard.

Per sample: every member is there (jpg, txt, json, paug.json, the embedding file, syn.json when
a captioner was used); ``len(param_aug) == K == image_emb.shape[0]``; every stored augmentation
has a crop (and RandAugment ops when configured); the embedding width is the sum of the
teachers' dims in config.json, and each teacher's slice of every row is unit-norm (a teacher
order or dim that does not match config.json shows as slices that are not); ``text_emb`` has a
row per ground-truth caption and ``syn_text_emb`` a row per synthetic caption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from curate.errors import UserError
from curate.io.shards import TarReadResult, TarSample, iter_tar_samples
from curate.io.workspace import DONE_DIR
from curate.reinforce import records as rec
from curate.reinforce.augment import RAND_AUGMENT_KEY, RRC_KEY
from curate.reinforce.teachers import slices

CONFIG_FILE = "config.json"
NORM_TOLERANCE = {"float32": 1e-3, "bfloat16": 1e-2}
MAX_ERRORS_PER_SHARD = 20


@dataclass
class ShardReport:
    """One shard's result: samples checked and the violations found (first few kept)."""

    shard: str
    samples: int = 0
    bad_samples: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_PER_SHARD:
            self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "ok": self.ok,
            "samples": self.samples,
            "bad_samples": self.bad_samples,
            "error_count": self.error_count,
            "errors": self.errors,
        }


@dataclass
class ValidationReport:
    """Every shard's report; valid when no shard has a violation."""

    root: Path
    shards: list[ShardReport]
    config_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.config_errors and all(s.ok for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "config_errors": self.config_errors,
            "samples": sum(s.samples for s in self.shards),
            "bad_samples": sum(s.bad_samples for s in self.shards),
            "shards": [s.to_dict() for s in self.shards],
        }

    def text(self) -> str:
        lines = [f"config: {error}" for error in self.config_errors]
        for shard in self.shards:
            state = "ok" if shard.ok else f"{shard.error_count} violations"
            lines.append(f"{shard.shard}: {shard.samples} samples, {state}")
            lines += [f"  {error}" for error in shard.errors]
        lines.append("valid" if self.ok else "INVALID")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Expect:
    k: int
    dims: list[int]
    extension: str
    dtype: str
    rand_augment: bool
    num_syn: int | None  # None: no captioner
    num_gt: int


def _read_config(root: Path) -> tuple[_Expect, list[str]]:
    path = root / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{root} is not a reinforced directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
        teacher_dims = [int(t["embed_dim"]) for t in config["teachers"]]
        dims = [int(d) for d in config["embed_dims"]]
        augmentation = config["augmentation"]
        sampling = config.get("sampling")
        expect = _Expect(
            k=int(augmentation["num_augmentations"]),
            dims=teacher_dims,
            extension=config["embedding_file"],
            dtype=config["dtype"],
            rand_augment=bool(augmentation.get("rand_augment", True)),
            num_syn=int(sampling["num_captions"]) if config.get("captioner") else None,
            num_gt=int(config.get("num_gt_captions", 1)),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a reinforce config ({type(exc).__name__}: {exc})") from exc
    if expect.extension not in (rec.NPZ, rec.PTH_GZ) or expect.dtype not in NORM_TOLERANCE:
        raise UserError(f"{path}: unknown embedding_file or dtype")
    problems = []
    if teacher_dims != dims:
        problems.append(
            f"{CONFIG_FILE}: embed_dims {dims} disagree with the teachers' embed_dim {teacher_dims}"
        )
    return expect, problems


def _check_rows(name: str, array: torch.Tensor, rows: int | None, expect: _Expect) -> list[str]:
    if array.ndim != 2:
        return [f"{name} has shape {list(array.shape)}, expected 2 dimensions"]
    problems = []
    if rows is not None and array.shape[0] != rows:
        problems.append(f"{name} has {array.shape[0]} rows, expected {rows}")
    if array.shape[1] != sum(expect.dims):
        return problems + [
            f"{name} is {array.shape[1]} wide, config.json teachers sum to "
            f"{sum(expect.dims)} ({expect.dims})"
        ]
    tolerance = NORM_TOLERANCE[expect.dtype]
    for teacher, cols in enumerate(slices(expect.dims)):
        norms = array[:, cols].norm(dim=1)
        worst = float((norms - 1).abs().max()) if len(norms) else 0.0
        if not worst <= tolerance:
            problems.append(
                f"{name} teacher {teacher} slice [{cols.start}:{cols.stop}] is not "
                f"unit-norm (|norm-1| up to {worst:.3g})"
            )
    return problems


def check_sample(sample: TarSample, expect: _Expect) -> list[str]:
    """The violations of one sample (empty when it is complete and consistent)."""
    needed = ["jpg", "txt", "json", rec.PAUG, expect.extension]
    if expect.num_syn is not None:
        needed.append(rec.SYN)
    missing = [ext for ext in needed if ext not in sample.members]
    if missing:
        return [f"missing {', '.join('.' + m for m in missing)}"]
    problems = []
    try:
        params = json.loads(sample.members[rec.PAUG])["param_aug"]
        emb = rec.decode_embeddings(sample.members[expect.extension], expect.extension)
    except Exception as exc:  # any unreadable member is a violation, reported, not raised
        return [f"unreadable member: {type(exc).__name__}: {exc}"]
    if len(params) != expect.k:
        problems.append(f"{len(params)} stored augmentations, config.json says K={expect.k}")
    for index, entry in enumerate(params):
        if RRC_KEY not in entry or len(entry[RRC_KEY]) != 4:
            problems.append(f"augmentation {index} has no 4-value {RRC_KEY}")
        if expect.rand_augment and RAND_AUGMENT_KEY not in entry:
            problems.append(f"augmentation {index} has no {RAND_AUGMENT_KEY}")
    keys = ["image_emb", "text_emb"] + (["syn_text_emb"] if expect.num_syn is not None else [])
    absent = [key for key in keys if key not in emb]
    if absent:
        return problems + [f"embedding file lacks {', '.join(absent)}"]
    problems += _check_rows("image_emb", emb["image_emb"], expect.k, expect)
    if emb["image_emb"].ndim == 2 and emb["image_emb"].shape[0] != len(params):
        problems.append(
            f"image_emb has {emb['image_emb'].shape[0]} rows for {len(params)} stored augmentations"
        )
    problems += _check_rows("text_emb", emb["text_emb"], expect.num_gt, expect)
    if expect.num_syn is not None:
        try:
            syn = json.loads(sample.members[rec.SYN])["syn_text"]
        except (json.JSONDecodeError, KeyError) as exc:
            return problems + [f"unreadable .{rec.SYN}: {exc}"]
        if len(syn) != expect.num_syn:
            problems.append(f"{len(syn)} synthetic captions, config.json says {expect.num_syn}")
        problems += _check_rows("syn_text_emb", emb["syn_text_emb"], len(syn), expect)
    return problems


def _check_shard(tar: Path, expect: _Expect) -> ShardReport:
    report = ShardReport(shard=tar.stem)
    done = tar.parent / DONE_DIR / f"{tar.stem}.json"
    if not done.is_file():
        report.add("no completion record: the shard was not finished")
    else:
        for reason in json.loads(done.read_text()).get("failed_shards", {}).values():
            report.add(f"the input shard failed, samples may be missing: {reason}")
    result = TarReadResult()
    for sample in iter_tar_samples(tar, result):
        report.samples += 1
        problems = check_sample(sample, expect)
        if sample.problem is not None:
            problems = [sample.problem.reason, *problems]
        if problems:
            report.bad_samples += 1
            for problem in problems:
                report.add(f"{sample.key}: {problem}")
    if result.error:
        report.add(result.error)
    return report


def validate_reinforced(root: Path) -> ValidationReport:
    """Check every shard of a reinforced directory; violations are reported, not raised."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a directory")
    expect, config_errors = _read_config(root)
    tars = sorted(root.glob("*.tar"))
    if not tars:
        raise UserError(f"{root} holds no shards (*.tar)")
    shards = [_check_shard(tar, expect) for tar in tars]
    return ValidationReport(root=root, shards=shards, config_errors=config_errors)
