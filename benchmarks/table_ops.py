"""Table operations at DataComp small/medium scale: ingest, a 100-point sweep, a fraction select.

Generates (or reuses) DataComp-style metadata, 12.8M rows by default (small; ``--rows
128000000`` is medium) (``uid, url, text``, sizes, both CLIP scores, ``face_bboxes``,
``sha256``; no npz), then times, each step in a fresh subprocess of this script:

* ``ingest``: ``filter-pool ingest`` (``ingest_pool``) of the metadata into a run, which
  reads url/text/... from the metadata files (the default) or with ``--copy-pool`` copies
  them (the old layout); after it, the bytes: the metadata's, and the run's per table
  (``run/pool/``, each ``run/scores/<name>/``, everything else, the whole run) as bytes/row
  and as a ratio to the metadata's;
* ``sweep``: ``sweep`` of ``clip_l14`` at 100 fractions (0.01 .. 1.00), with the default
  ``stats_sample``, with ``stats_sample=0`` (no sampled language/class-name stats) and, for
  reference, with ``--compare-stats-sample`` (100000, the default before; 0 skips it);
* ``select``: ``select_subset`` of the top 30% by ``clip_l14`` with every output
  (``uids.npy``, ``manifest.parquet``, ``dropped.parquet``, ``selection.json``);
* ``select-uids``: the same with ``uids_only`` (``filter-pool select --uids-only``):
  ``uids.npy`` and ``selection.json`` alone, what DataComp's path writes;
* ``pandas``: DataComp's own path (``baselines/apply_filter.py``): pandas reads every file's
  score, ``threshold = -np.sort(-values)[int(N * F)]``, then per file the uids with
  ``score >= threshold`` become ``u8,u8`` pairs through ``int(uid[:16], 16)``, concatenated,
  sorted, ``np.save``-d;

checks that both selects and the pandas path write the same uids, times ``dd`` writing as
many bytes as the full select wrote (its MB/s beside the select's), and prints seconds (the
library call, timed inside the step) and peak RSS (``ru_maxrss`` of the step's process from
``os.wait4``: the step's own peak, or a waited-for child's if larger) and seconds per
million rows. Usage::

    .venv/bin/python benchmarks/table_ops.py [--rows 12800000] [--files 128] [--work DIR]
        [--fraction 0.3] [--pandas-workers 1] [--skip-ingest] [--copy-pool]
        [--compare-stats-sample N] [--baseline-json PATH] [--remove-data] [--json]

Before generating, the free space of ``--work``'s file system is checked against an estimate
of what the steps write (metadata ~177 bytes/row; the run's pool table ~0.2x of it and its
score tables ~10 bytes/row, ~1.24x and ~73 with ``--copy-pool``; the full select ~73 bytes/row
and as much again for ``dd``); when it will not fit, the script says so in one line and exits with
code 2 (and again after ingest, when the selects will not fit). ``--remove-data`` deletes what
the script wrote in ``--work`` (metadata/, metadata.json, run/, pandas_uids.npy, ...) when it
ends, also after a failed step. ``--baseline-json`` takes an earlier ``--json`` output (e.g.
at 12.8M rows) and prints, per step, this run's seconds / (the baseline's seconds * the rows
ratio): 1.0 or less is no worse than linear.

Progress goes to stderr; the figures go to stdout. The targets, as this script judges them:
up to 12.8M rows, sweep (default stats) + select within 10 s, judged twice: with every output,
and with ``--uids-only`` (the issue's "fraction select with uids.npy export", what the pandas
path writes), and peak RSS (ingest, sweep, select) under 2 GiB; above 12.8M rows, the peak RSS
of both selects under 4 GiB and, with ``--baseline-json``, the sweep and both selects no worse
than linear from the baseline. At every size: the pandas path at least 5x slower than ``select
--uids-only`` (the two write the same file), and the run's bytes after ingest at most 0.3x the
metadata's. The stricter ratios (pandas path over select with every output, and over sweep +
select) are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "table_ops"
SCORE_KEY = "clip_l14_similarity_score"
SCORER = "clip_l14"
FRACTIONS = tuple((i + 1) / 100 for i in range(100))
SUBSET_NAME = "bench_top"
TARGET_SECONDS = 10.0
TARGET_SPEEDUP = 5.0
TARGET_RSS_MIB = 2048.0
SMALL_ROWS = 12_800_000  # DataComp small: the 10 s and 2 GiB targets; above it, medium's
TARGET_RSS_LARGE_MIB = 4096.0  # both selects' peak RSS above SMALL_ROWS (128M: medium)
TARGET_RUN_RATIO = 0.3  # the run's bytes after ingest over the metadata's
# disk estimates, measured at 12.8M rows: the generated metadata's bytes/row, the run's pool
# table over the metadata's (reading url/text/... from the metadata, or copying them), its two
# score tables' bytes/row (clip_b32, clip_l14: ~5 each row-aligned, ~36 each with the uid that
# a copying run repeats), the full select's manifest.parquet + dropped.parquet bytes/row, and a
# margin over their sum
SOURCE_BYTES_PER_ROW = 177
POOL_RATIO_REFERENCE = 0.2
POOL_RATIO_COPY = 1.24
SCORES_BYTES_PER_ROW = {False: 10, True: 73}  # by copy_pool
SELECT_BYTES_PER_ROW = 73
DISK_MARGIN = 1.05
# what the script writes in --work (the only names --remove-data deletes), besides the
# .run.lock / .run.ingest / .run.<8 hex>.tmp|.old siblings that ingest leaves beside run/
WORK_CHILDREN = ("metadata", "metadata.json", "run", "pandas_uids.npy", "dd.tmp")
RUN_SIBLING_SUFFIXES = (".lock", ".ingest", ".tmp", ".old")
STEPS = ("generate", "ingest", "sweep", "select", "select-uids", "pandas")


@dataclass
class StepResult:
    """One step's figures: the timed call, the process wall time and peak RSS."""

    step: str
    label: str
    seconds: float
    process_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    import_rss_mib: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[table_ops] {message}", file=sys.stderr, flush=True)


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- steps (each runs in its own process) ---------------------------------------------------


def step_generate(work: Path, rows: int, files: int) -> dict[str, Any]:
    """Write ``files`` metadata parquets of ``rows / files`` rows each (no npz)."""
    from tests.generators.datacomp import write_datacomp_metadata

    metadata = work / "metadata"
    shutil.rmtree(metadata, ignore_errors=True)
    paths = write_datacomp_metadata(metadata, num_files=files, rows_per_file=rows // files,
                                    with_npz=False)
    size = sum(p.stat().st_size for p in paths)
    (work / "metadata.json").write_text(json.dumps({"rows": rows, "files": files}) + "\n")
    return {"files": len(paths), "bytes": size}


def step_ingest(work: Path, copy_pool: bool) -> dict[str, Any]:
    """``ingest_pool`` of the metadata into ``work/run`` (a fresh run); ``copy_pool`` copies
    the metadata's columns into the run (the old layout) instead of referencing them."""
    from curate.ingest.stage import IngestConfig, ingest_pool

    summary = ingest_pool(IngestConfig(pool=work / "metadata", run=work / "run",
                                       copy_pool=copy_pool))
    return {"samples": summary.samples, "shards": summary.shards,
            "duplicate_uids": summary.duplicate_uids}


def step_sweep(work: Path, stats_sample: int) -> dict[str, Any]:
    """A 100-point fraction sweep of clip_l14."""
    from curate.select.sweep import SweepConfig, sweep

    config = SweepConfig(work / "run", by=SCORER, fractions=FRACTIONS, stats_sample=stats_sample,
                         name=f"bench_s{stats_sample}", overwrite=True)
    result = sweep(config)
    table = result.table.to_pydict()
    return {"candidates": result.candidates, "rows": result.table.num_rows,
            "thresholds": dict(zip(table["fraction"], table["threshold"], strict=True))}


def step_select(work: Path, fraction: float, uids_only: bool = False) -> dict[str, Any]:
    """``select_subset`` of the top ``fraction`` by clip_l14: every output (uids.npy,
    manifest.parquet, dropped.parquet, selection.json), or with ``uids_only`` (``select
    --uids-only``) uids.npy and selection.json alone, as DataComp's path writes uids.npy alone."""
    from curate.select.subset import SelectConfig, select_subset

    name = SUBSET_NAME + ("_uids" if uids_only else "")
    summary = select_subset(SelectConfig(work / "run", name=name, by=SCORER, fraction=fraction,
                                         overwrite=True, uids_only=uids_only))
    threshold = next(f["resolved"]["threshold"] for f in summary.filters
                     if f["name"] == "fraction")
    written = sum(f.stat().st_size for f in summary.path.iterdir() if f.is_file())
    return {"kept": summary.kept, "total": summary.total, "threshold": threshold,
            "uids": str(summary.path / "uids.npy"), "bytes": written,
            "phases": summary.seconds}


def dd_seconds(work: Path, size: int) -> float:
    """Seconds for ``dd`` to write ``size`` bytes (1 MiB blocks) into the work folder, as the
    select writes its files (page cache, no fsync); the file is removed after."""
    target = work / "dd.tmp"
    started = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M",
                    f"count={max(1, -(-size // 2**20))}"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


def _pandas_threshold_part(path: str) -> Any:
    import pandas as pd

    return pd.read_parquet(path, columns=[SCORE_KEY])


def _pandas_uids_part(path: str, threshold: float) -> np.ndarray:
    """DataComp's ``load_uids_with_clip_score_helper`` (no gcld3)."""
    import pandas as pd

    df = pd.read_parquet(path, columns=["uid", SCORE_KEY])
    return np.array(
        [(int(uid[:16], 16), int(uid[16:32], 16))
         for uid in df[df[SCORE_KEY] >= threshold]["uid"].values],
        np.dtype("u8,u8"),
    )


def step_pandas(work: Path, fraction: float, workers: int) -> dict[str, Any]:
    """DataComp's ``--fraction`` path: pandas threshold, per-file uids, sort, np.save."""
    import functools
    from multiprocessing import Pool

    import pandas as pd

    paths = sorted(str(p) for p in (work / "metadata").iterdir() if ".parquet" in p.name)

    def mapped(fn: Any, items: list[str]) -> list[Any]:
        if workers <= 1:
            return [fn(item) for item in items]
        with Pool(workers) as pool:  # DataComp's worker_threadpool: a process Pool
            return list(pool.imap_unordered(fn, items))

    df = pd.concat(mapped(_pandas_threshold_part, paths))
    n = int(len(df) * fraction)
    threshold = -np.sort(-df[SCORE_KEY].values)[n]
    del df
    uids = np.concatenate(mapped(functools.partial(_pandas_uids_part, threshold=threshold),
                                 paths))
    uids.sort()
    out = work / "pandas_uids.npy"
    np.save(out, uids)
    return {"kept": len(uids), "threshold": float(threshold), "uids": str(out)}


def run_step(args: argparse.Namespace) -> None:
    """Run one step in this process and write its figures to ``--result``."""
    import_rss = _rss_mib()
    started = time.perf_counter()
    work = args.work
    if args.step == "generate":
        details = step_generate(work, args.rows, args.files)
    elif args.step == "ingest":
        shutil.rmtree(work / "run", ignore_errors=True)
        started = time.perf_counter()
        details = step_ingest(work, args.copy_pool)
    elif args.step == "sweep":
        details = step_sweep(work, args.stats_sample)
    elif args.step == "select":
        details = step_select(work, args.fraction)
    elif args.step == "select-uids":
        details = step_select(work, args.fraction, uids_only=True)
    else:
        details = step_pandas(work, args.fraction, args.pandas_workers)
    seconds = time.perf_counter() - started
    payload = {"seconds": seconds, "import_rss_mib": import_rss, "details": details}
    Path(args.result).write_text(json.dumps(payload, default=str))


# --- the driver ------------------------------------------------------------------------------


def spawn(args: argparse.Namespace, step: str, label: str, *extra: str) -> StepResult:
    """Run ``--step STEP`` in a fresh subprocess (after a sync: no step pays for the writeback
    of the one before); peak RSS from ``os.wait4`` on it."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step,
               "--work", str(args.work), "--rows", str(args.rows), "--files", str(args.files),
               "--fraction", repr(args.fraction), "--pandas-workers", str(args.pandas_workers),
               "--result", str(result_path), *(["--copy-pool"] if args.copy_pool else []),
               *extra]
    os.sync()  # the last step's written pages reach the disk first, not during this step
    log(f"{label} ...")
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    try:
        if process.returncode != 0:
            raise SystemExit(f"step {label} failed with exit code {process.returncode}")
        payload = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    result = StepResult(step=step, label=label, seconds=payload["seconds"], process_seconds=wall,
                        peak_rss_mib=usage.ru_maxrss / 1024,
                        import_rss_mib=payload["import_rss_mib"], details=payload["details"])
    log(f"{label}: {result.seconds:.2f} s, peak RSS {result.peak_rss_mib:.0f} MiB")
    return result


def _default_stats_sample() -> int:
    from curate.select.sweep import SweepConfig

    return int(SweepConfig.__dataclass_fields__["stats_sample"].default)


def _metadata_ready(work: Path, rows: int, files: int) -> bool:
    marker = work / "metadata.json"
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
    return record == {"rows": rows, "files": files}


def _same_uids(ours: Path, theirs: Path) -> tuple[bool, int, int]:
    a, b = np.load(ours), np.load(theirs)
    return bool(np.array_equal(np.sort(a), np.sort(b))), len(a), len(b)


def tree_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (or of the file itself; symlinks not followed)."""
    if path.is_symlink() or not path.exists():
        return 0
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def _sized(size: int, rows: int, source: int) -> dict[str, float]:
    return {"bytes": size, "bytes_per_row": size / rows,
            "ratio_to_source": size / source if source else float("nan")}


def measure_bytes(work: Path, rows: int) -> dict[str, Any]:
    """The metadata's bytes and the run's per table: ``pool/``, each ``scores/<name>/``,
    everything else, the whole run."""
    source = tree_bytes(work / "metadata")
    run = work / "run"
    tables: dict[str, dict[str, float]] = {}
    accounted = 0
    parts = [run / "pool"]
    if (run / "scores").is_dir():
        parts += sorted(p for p in (run / "scores").iterdir() if p.is_dir())
    for part in parts:
        size = tree_bytes(part)
        accounted += size
        tables[f"{part.relative_to(run).as_posix()}/"] = _sized(size, rows, source)
    total = tree_bytes(run)
    tables["other"] = _sized(total - accounted, rows, source)
    tables["total"] = _sized(total, rows, source)
    return {"source": _sized(source, rows, source), "run": tables}


def _free_bytes(path: Path) -> int:
    """Free bytes of the file system that holds ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def select_estimate(args: argparse.Namespace) -> int:
    """Bytes the selects write: manifest + dropped (and as much again, briefly, for ``dd``),
    and three uids.npy (select, select --uids-only, the pandas path) of 16 bytes a uid."""
    return int(2 * SELECT_BYTES_PER_ROW * args.rows + 3 * 16 * args.fraction * args.rows)


def check_disk(args: argparse.Namespace) -> dict[str, Any]:
    """Refuse (one line, exit code 2) when the steps' estimated bytes will not fit in the free
    space of ``--work``'s file system; what the steps replace (an older metadata or run) counts
    as free."""
    work = args.work
    need: dict[str, int] = {}
    reclaim = 0
    if not _metadata_ready(work, args.rows, args.files):
        need["metadata"] = SOURCE_BYTES_PER_ROW * args.rows
        reclaim += tree_bytes(work / "metadata")
    if not (args.skip_ingest and (work / "run" / "run.json").is_file()):
        ratio = POOL_RATIO_COPY if args.copy_pool else POOL_RATIO_REFERENCE
        need["run"] = int((ratio * SOURCE_BYTES_PER_ROW + SCORES_BYTES_PER_ROW[args.copy_pool])
                          * args.rows)
        reclaim += tree_bytes(work / "run")
    need["selects"] = select_estimate(args)
    reclaim += tree_bytes(work / "pandas_uids.npy")
    needed = int(DISK_MARGIN * sum(need.values()))
    free = _free_bytes(work)
    if needed > free + reclaim:
        parts = ", ".join(f"{name} {_gb(size)}" for name, size in need.items())
        print(f"table_ops: not enough disk space in {work}: about {_gb(needed)} needed ({parts},"
              f" {DISK_MARGIN - 1:.0%} margin), {_gb(free)} free"
              + (f" + {_gb(reclaim)} replaced" if reclaim else "")
              + "; use fewer --rows or another --work", file=sys.stderr, flush=True)
        raise SystemExit(2)
    return {"estimated_bytes": needed, "free_bytes": free, "replaced_bytes": reclaim,
            "estimate": need}


def remove_data(work: Path, ours: bool) -> None:
    """Delete what the script writes in ``work`` (WORK_CHILDREN and the run's siblings), never
    ``work`` wholesale; ``work`` itself goes only when it is empty then and ``ours`` (this run
    created it, or it held this script's metadata.json)."""
    removed = []
    names = [*WORK_CHILDREN]
    if work.is_dir():
        names += sorted(p.name for p in work.glob(".run.*")
                        if p.name.endswith(RUN_SIBLING_SUFFIXES))
    freed = 0
    for name in names:
        path = work / name
        if not (path.exists() or path.is_symlink()):
            continue
        freed += tree_bytes(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    if ours and work.is_dir() and not any(work.iterdir()):
        work.rmdir()
        removed.append(f"(the folder {work} itself)")
    log(f"--remove-data: removed {', '.join(removed) or 'nothing'} from {work} "
        f"({_gb(freed)})")


def compare_baseline(baseline: dict[str, Any], rows: int,
                     results: list[StepResult]) -> dict[str, Any]:
    """Per step: this run's seconds / (the baseline's seconds * the rows ratio); steps match
    by label, else by step name when the baseline has that step once."""
    base_rows = int(baseline["rows"])
    ratio = rows / base_rows
    by_label = {s["label"]: s for s in baseline["steps"]}
    by_step: dict[str, list[dict[str, Any]]] = {}
    for s in baseline["steps"]:
        by_step.setdefault(s["step"], []).append(s)
    steps = {}
    for r in results:
        base = by_label.get(r.label)
        if base is None and len(by_step.get(r.step, [])) == 1:
            base = by_step[r.step][0]
        if base is None or not base["seconds"]:
            continue
        steps[r.label] = {"step": r.step, "seconds": r.seconds,
                          "baseline_seconds": base["seconds"],
                          "over_linear": r.seconds / (base["seconds"] * ratio)}
    return {"path": baseline["_path"], "rows": base_rows, "rows_ratio": ratio, "steps": steps}


def drive(args: argparse.Namespace) -> dict[str, Any]:
    """Every step in order; the figures, the check and the targets."""
    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    results: list[StepResult] = []
    if _metadata_ready(args.work, args.rows, args.files):
        log(f"reusing metadata in {args.work / 'metadata'}")
    else:
        results.append(spawn(args, "generate", "generate metadata"))
    ingested = not (args.skip_ingest and (args.work / "run" / "run.json").is_file())
    if ingested:
        results.append(spawn(args, "ingest", "ingest" + (" (--copy-pool)" if args.copy_pool
                                                         else "")))
    else:
        log("reusing the ingested run (--skip-ingest)")
    sizes = measure_bytes(args.work, args.rows)
    run_ratio = sizes["run"]["total"]["ratio_to_source"]
    log(f"run after ingest: {_gb(sizes['run']['total']['bytes'])}, {run_ratio:.2f}x the "
        f"metadata's {_gb(sizes['source']['bytes'])}")
    selects_need = int(DISK_MARGIN * select_estimate(args))
    if selects_need > _free_bytes(args.work):
        print(f"table_ops: not enough disk space in {args.work} for the selects: about "
              f"{_gb(selects_need)} needed, {_gb(_free_bytes(args.work))} free",
              file=sys.stderr, flush=True)
        raise SystemExit(2)
    default_sample = _default_stats_sample()
    sweep_default = spawn(args, "sweep", f"sweep (default stats_sample={default_sample})",
                          "--stats-sample", str(default_sample))
    sweep_bare = spawn(args, "sweep", "sweep (stats_sample=0)", "--stats-sample", "0")
    results += [sweep_default, sweep_bare]
    if args.compare_stats_sample not in (0, default_sample):
        results.append(spawn(args, "sweep", f"  ref: sweep (stats_sample="
                             f"{args.compare_stats_sample})", "--stats-sample",
                             str(args.compare_stats_sample)))
    select = spawn(args, "select", f"select fraction {args.fraction} (every output)")
    uids_only = spawn(args, "select-uids", f"select fraction {args.fraction} --uids-only")
    pandas_path = spawn(args, "pandas", "DataComp pandas path")
    results += [select, uids_only, pandas_path]
    dd = dd_seconds(args.work, select.details["bytes"])
    load_after = os.getloadavg()

    identical, ours_n, theirs_n = _same_uids(Path(select.details["uids"]),
                                             Path(pandas_path.details["uids"]))
    identical_uids_only = _same_uids(Path(uids_only.details["uids"]),
                                     Path(pandas_path.details["uids"]))[0]
    sweep_at = sweep_default.details["thresholds"].get(str(args.fraction))
    ours_seconds = sweep_default.seconds + select.seconds
    peak = max(r.peak_rss_mib for r in results
               if r.step in ("ingest", "sweep", "select", "select-uids"))
    speedup = pandas_path.seconds / uids_only.seconds
    uids_only_seconds = sweep_default.seconds + uids_only.seconds
    steps = [asdict(r) for r in results]
    for step in steps:
        step["seconds_per_million_rows"] = step["seconds"] / (args.rows / 1e6)
    baseline = compare_baseline(args.baseline, args.rows, results) if args.baseline else None
    targets: dict[str, bool] = {}
    if args.rows <= SMALL_ROWS:
        targets[f"sweep + select (every output) <= {TARGET_SECONDS:g} s"] = (
            ours_seconds <= TARGET_SECONDS)
        targets[f"sweep + select --uids-only <= {TARGET_SECONDS:g} s (the select writing "
                "uids.npy, like the pandas path)"] = uids_only_seconds <= TARGET_SECONDS
    targets[f"pandas path >= {TARGET_SPEEDUP:g}x slower than select --uids-only (both write "
            "uids.npy alone)"] = speedup >= TARGET_SPEEDUP
    if args.rows <= SMALL_ROWS:
        targets[f"peak RSS < {TARGET_RSS_MIB:g} MiB (ingest, sweep, select)"] = (
            peak < TARGET_RSS_MIB)
    else:
        for r in (select, uids_only):
            targets[f"peak RSS < {TARGET_RSS_LARGE_MIB:g} MiB ({r.label})"] = (
                r.peak_rss_mib < TARGET_RSS_LARGE_MIB)
        if baseline:
            for r in (sweep_default, select, uids_only):
                compared = baseline["steps"].get(r.label)
                if compared:
                    targets[f"no worse than linear from {baseline['rows']:,} rows "
                            f"(time / (baseline * rows ratio) <= 1.0): {r.label}"] = (
                        compared["over_linear"] <= 1.0)
    layout = " (--copy-pool: the old layout)" if args.copy_pool else ""
    targets[f"run bytes after ingest <= {TARGET_RUN_RATIO:g}x the metadata's{layout}"] = (
        run_ratio <= TARGET_RUN_RATIO)
    return {
        "rows": args.rows,
        "files": args.files,
        "fraction": args.fraction,
        "pandas_workers": args.pandas_workers,
        "copy_pool": args.copy_pool,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "steps": steps,
        "bytes": {"after": "ingest" if ingested else "reused run (--skip-ingest)", **sizes},
        "disk": args.disk,
        "baseline": baseline,
        "check": {
            "identical_uids": identical,
            "identical_uids_uids_only": identical_uids_only,
            "select_uids": ours_n,
            "pandas_uids": theirs_n,
            "select_threshold": select.details["threshold"],
            "pandas_threshold": pandas_path.details["threshold"],
            "sweep_threshold_at_fraction": sweep_at,
        },
        "sweep_plus_select_seconds": ours_seconds,
        "sweep0_plus_select_seconds": sweep_bare.seconds + select.seconds,
        "sweep_plus_select_uids_only_seconds": uids_only_seconds,
        "pandas_over_sweep_plus_select_uids_only": pandas_path.seconds / uids_only_seconds,
        "pandas_over_select_uids_only": speedup,
        "pandas_over_select": pandas_path.seconds / select.seconds,
        "pandas_over_sweep_plus_select": pandas_path.seconds / ours_seconds,
        "peak_rss_ours_mib": peak,
        "select_bytes": select.details["bytes"],
        "select_mb_per_s": select.details["bytes"] / 1e6 / select.seconds,
        "dd_mb_per_s": select.details["bytes"] / 1e6 / dd,
        "targets": targets,
    }


def print_report(figures: dict[str, Any]) -> None:
    """The figures as a table with the check and the targets."""
    print(f"table_ops: {figures['rows']:,} rows in {figures['files']} files, fraction "
          f"{figures['fraction']}, {figures['cpus']} CPUs, pandas path with "
          f"{figures['pandas_workers']} worker(s)")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}"
          .format(*figures["load_average_before"], *figures["load_average_after"]))
    print()
    print(f"{'step':<42} {'seconds':>9} {'s/M rows':>9} {'process s':>10} "
          f"{'peak RSS MiB':>13}")
    for step in figures["steps"]:
        print(f"{step['label']:<42} {step['seconds']:>9.2f} "
              f"{step['seconds_per_million_rows']:>9.3f} {step['process_seconds']:>10.2f} "
              f"{step['peak_rss_mib']:>13.0f}")
    for step in figures["steps"]:
        phases = step["details"].get("phases") if isinstance(step["details"], dict) else None
        if phases:
            print(f"  {step['label']}: " + ", ".join(f"{name} {seconds:.2f} s"
                                                     for name, seconds in phases.items()))
    print("seconds: the library call inside the step; s/M rows: seconds per million rows; "
          "process s: the whole subprocess (interpreter, imports); peak RSS: ru_maxrss of the "
          "step's process (os.wait4)")
    if figures["pandas_workers"] > 1:
        print("(pandas path with a process pool: its peak RSS is the largest process's, "
              "not the pool's sum)")
    print()
    sizes = figures["bytes"]
    layout = ("copies the metadata's columns (--copy-pool)" if figures["copy_pool"]
              else "reads url/text/... from the metadata")
    print(f"bytes after {sizes['after']} (the run {layout}):")
    print(f"  {'':<28} {'bytes':>16} {'bytes/row':>10} {'x metadata':>11}")
    for name, size in [("metadata (the source)", sizes["source"]),
                       *((f"run/{k}" if k.endswith("/") else f"run: {k}", v)
                         for k, v in sizes["run"].items())]:
        print(f"  {name:<28} {size['bytes']:>16,} {size['bytes_per_row']:>10.1f} "
              f"{size['ratio_to_source']:>11.3f}")
    disk = figures.get("disk")
    if disk:
        print(f"disk: {_gb(disk['estimated_bytes'])} estimated for the steps, "
              f"{_gb(disk['free_bytes'])} free before them")
    baseline = figures.get("baseline")
    if baseline:
        print()
        print(f"against {baseline['path']} ({baseline['rows']:,} rows; rows ratio "
              f"{baseline['rows_ratio']:.2f}): time / (baseline time * rows ratio), <= 1.0 is no "
              "worse than linear")
        for label, compared in baseline["steps"].items():
            print(f"  {label:<42} {compared['seconds']:>9.2f} s vs "
                  f"{compared['baseline_seconds']:>9.2f} s: {compared['over_linear']:.2f}")
    print()
    check = figures["check"]
    print(f"identical uids.npy (select vs pandas path, np.array_equal after sort): "
          f"{check['identical_uids']} ({check['select_uids']:,} vs {check['pandas_uids']:,} "
          f"uids; thresholds {check['select_threshold']!r} vs {check['pandas_threshold']!r}, "
          f"sweep at {figures['fraction']}: {check['sweep_threshold_at_fraction']!r})")
    print(f"identical uids.npy (select --uids-only vs pandas path): "
          f"{check['identical_uids_uids_only']}")
    print(f"sweep + select: {figures['sweep_plus_select_seconds']:.2f} s (with stats_sample=0: "
          f"{figures['sweep0_plus_select_seconds']:.2f} s; with select --uids-only: "
          f"{figures['sweep_plus_select_uids_only_seconds']:.2f} s)")
    print(f"pandas path / select --uids-only: {figures['pandas_over_select_uids_only']:.2f}x; "
          f"pandas path / select (every output): {figures['pandas_over_select']:.2f}x; "
          f"pandas path / (sweep + select): {figures['pandas_over_sweep_plus_select']:.2f}x; "
          "pandas path / (sweep + select --uids-only): "
          f"{figures['pandas_over_sweep_plus_select_uids_only']:.2f}x")
    print(f"peak RSS of our steps: {figures['peak_rss_ours_mib']:.0f} MiB")
    print(f"select (every output) writes {figures['select_bytes'] / 1e6:.0f} MB: "
          f"{figures['select_mb_per_s']:.0f} MB/s over the whole select; dd of the same bytes "
          f"(page cache, no fsync, as the select writes): {figures['dd_mb_per_s']:.0f} MB/s")
    print()
    for target, met in figures["targets"].items():
        print(f"  [{'met' if met else 'MISSED'}] {target}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options (``--step`` and ``--result`` are internal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--rows", type=int, default=12_800_000)
    parser.add_argument("--files", type=int, default=128)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--pandas-workers", type=int, default=1,
                        help="processes for the pandas path (DataComp's default: all CPUs)")
    parser.add_argument("--skip-ingest", action="store_true",
                        help="reuse work/run when it exists (no ingest figure)")
    parser.add_argument("--compare-stats-sample", type=int, default=100_000,
                        help="also time a sweep with this stats_sample (0: skip)")
    parser.add_argument("--copy-pool", action="store_true",
                        help="ingest with copy_pool=True: the run copies the metadata's "
                        "columns (the old layout)")
    parser.add_argument("--baseline-json", type=Path,
                        help="an earlier --json output: print, per step, time / (its time * "
                        "rows ratio)")
    parser.add_argument("--remove-data", action="store_true",
                        help="delete what the script wrote in --work when it ends (also after "
                        "a failure)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--stats-sample", type=int, default=100_000, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.files <= 0 or args.rows <= 0 or args.rows % args.files:
        parser.error("--rows must be a positive multiple of --files")
    if not 0 < args.fraction < 1:
        parser.error("--fraction must be in (0, 1)")
    args.work = args.work.resolve()
    args.baseline = None
    if args.baseline_json and not args.step:
        try:
            baseline = json.loads(args.baseline_json.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"--baseline-json {args.baseline_json}: {error}")
        if not (isinstance(baseline, dict) and isinstance(baseline.get("rows"), int)
                and isinstance(baseline.get("steps"), list)):
            parser.error(f"--baseline-json {args.baseline_json}: not a --json output of this "
                         "script (no rows and steps)")
        args.baseline = {**baseline, "_path": str(args.baseline_json)}
    return args


def main(argv: list[str] | None = None) -> None:
    """Run one step (internal) or the whole benchmark."""
    args = parse_args(argv)
    if args.step:
        run_step(args)
        return
    args.disk = check_disk(args)
    ours = not args.work.exists() or (args.work / "metadata.json").is_file()
    try:
        figures = drive(args)
        if args.json:
            print(json.dumps(figures, indent=2, default=str))
        else:
            print_report(figures)
    finally:
        if args.remove_data:
            remove_data(args.work, ours)


if __name__ == "__main__":
    main()
