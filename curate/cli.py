"""The ``filter-pool`` command line: each command builds a config and calls one library function."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.image import DEFAULT_MAX_PIXELS

app = typer.Typer(
    name="filter-pool",
    help="Score web image-text pools with Data Filtering Networks, explore, select, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

USER_ERRORS = (UserError,)
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def fail(message: str) -> NoReturn:
    """One line on stderr naming the problem; exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def emit(payload: dict[str, Any], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True) if as_json else text)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """filter-pool: data curation for CLIP training."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def toyworld(
    out: Annotated[Path, typer.Option(help="Folder for the generated world.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives identical files.")] = 0,
    scale: Annotated[
        str, typer.Option(help="small (tests: HQ 1.5k, POOL 2.5k) or full (HQ 10k, POOL 25k).")
    ] = "small",
    hq: Annotated[int | None, typer.Option(help="HQ pairs (overrides the scale).")] = None,
    pool: Annotated[int | None, typer.Option(help="POOL samples (overrides the scale).")] = None,
    eval_per_class: Annotated[
        int | None, typer.Option(help="EVAL images per class (overrides the scale).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes generating HQ and POOL.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing world.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Generate the toy web world: HQ shards, a noisy POOL to serve, EVAL, ground truth."""
    from curate.toyworld.world import ToyWorldConfig, write_toy_world

    try:
        sizes = {"hq_size": hq, "pool_size": pool, "eval_per_class": eval_per_class}
        overrides = {k: v for k, v in sizes.items() if v is not None}
        config = ToyWorldConfig.for_scale(scale, seed=seed, workers=workers, **overrides)
        world = write_toy_world(out, config, overwrite=overwrite, progress=progress)
    except USER_ERRORS as exc:
        fail(str(exc))
    kinds = ", ".join(f"{k} {v}" for k, v in world.pool_kinds.items())
    emit(
        world.to_dict(),
        as_json,
        f"toy world in {out}: hq {world.counts['hq']}, pool {world.counts['pool']} ({kinds}), "
        f"eval {world.counts['eval']} images of {world.to_dict()['classes']} classes",
    )


@app.command()
def download(
    urls: Annotated[
        Path,
        typer.Argument(
            help="URL list (parquet, csv, tsv, txt, json, jsonl), or a toy world folder "
            "(its POOL files are served on 127.0.0.1 and downloaded)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder for the webdataset shards.")],
    processes: Annotated[int, typer.Option(help="img2dataset processes.")] = 2,
    threads: Annotated[int, typer.Option(help="Download threads per process.")] = 16,
    image_size: Annotated[int, typer.Option(help="Resize target (DataComp: 512).")] = 512,
    resize_mode: Annotated[
        str, typer.Option(help="no, border, keep_ratio, keep_ratio_largest, center_crop.")
    ] = "keep_ratio_largest",
    resize_only_if_bigger: Annotated[
        bool, typer.Option(help="Only shrink images larger than --image-size (DataComp).")
    ] = True,
    url_col: Annotated[str, typer.Option(help="URL column of the list.")] = "url",
    caption_col: Annotated[str, typer.Option(help="Caption column of the list.")] = "caption",
    shard_size: Annotated[
        int | None, typer.Option(help="Samples per shard [default: 10000; toy world: 2500].")
    ] = None,
    timeout: Annotated[int, typer.Option(help="Seconds per request.")] = 10,
    retries: Annotated[int, typer.Option(help="Retries per failed URL.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Download a URL list with img2dataset into webdataset shards that `ingest` reads."""
    from curate.io.download import DownloadConfig, download_urls
    from curate.toyworld.download import download_toy_pool
    from curate.toyworld.world import WORLD_FILE

    options: dict[str, Any] = dict(
        processes=processes, threads=threads, image_size=image_size, resize_mode=resize_mode,
        resize_only_if_bigger=resize_only_if_bigger, timeout=timeout, retries=retries,
        overwrite=overwrite,
    )  # fmt: skip
    if shard_size is not None:
        options["shard_size"] = shard_size
    try:
        if urls.is_dir() and (urls / WORLD_FILE).is_file():
            summary = download_toy_pool(urls, out, **options)
        elif urls.is_dir():
            fail(f"{urls} is a folder but not a toy world (no {WORLD_FILE}); pass a URL list")
        else:
            summary = download_urls(
                DownloadConfig(urls=urls, out=out, url_col=url_col, caption_col=caption_col,
                               **options)
            )  # fmt: skip
    except USER_ERRORS as exc:
        fail(str(exc))
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items()))
    emit(
        summary.to_dict(),
        as_json,
        f"downloaded {summary.successes} of {summary.count} samples in {summary.shards} shards "
        f"into {out} ({statuses})",
    )


@app.command()
def ingest(
    pool: Annotated[
        Path, typer.Argument(help="img2dataset webdataset output or a DataComp metadata folder.")
    ],
    run: Annotated[Path, typer.Option("--run", help="Run directory to create or complete.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a run made from another pool.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Read a pool into the run's tables (one row per sample); DataComp metadata also brings
    its precomputed scores (clip_b32, clip_l14) and embeddings."""
    try:
        summary = ingest_pool(IngestConfig(pool=pool, run=run, overwrite=overwrite))
    except USER_ERRORS as exc:
        fail(str(exc))
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.by_status.items()))
    emit(
        summary.to_dict(),
        as_json,
        f"ingested {summary.samples} samples from {summary.shards} shards into {run}"
        f" ({statuses}; {summary.duplicate_uids} duplicate uids)",
    )


@app.command()
def score(
    run: Annotated[Path, typer.Argument(help="Run directory made by `filter-pool ingest`.")],
    model: Annotated[str, typer.Option(help="ARCH, hf-hub:org/name, or a model directory.")],
    pretrained: Annotated[
        str | None, typer.Option(help="open_clip tag or checkpoint file for ARCH.")
    ] = None,
    name: Annotated[str, typer.Option(help="Scorer name: the score column is NAME_score.")] = "dfn",
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Allow a model without weights.")
    ] = False,
    quick_gelu: Annotated[
        bool | None,
        typer.Option("--quick-gelu/--no-quick-gelu", help="Force the activation (default: "
                     "from the tag, hub or directory config, else the architecture)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Dask workers (0 runs in-process; default one per GPU, or on CPU workers of "
            "at most 4 torch threads, at least 2)."
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing Dask scheduler.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Samples per model batch.")] = 64,
    save_embeddings: Annotated[
        bool, typer.Option("--save-embeddings", help="Also write float16 embeddings.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo finished shards.")] = False,
    max_image_pixels: Annotated[
        int, typer.Option(help="Refuse larger images before decoding.")
    ] = DEFAULT_MAX_PIXELS,
    precision: Annotated[
        str,
        typer.Option(help="auto (fp32 on CPU, fp16 autocast on CUDA), fp32, bf16 (lossy), fp16."),
    ] = "auto",
    plain_encoders: Annotated[
        bool,
        typer.Option(
            "--plain-encoders",
            help="Run open_clip's encode_image and encode_text unchanged (slower; by default "
            "captions stop at the batch's longest one and the last block runs only where the "
            "tower pools, both exact).",
        ),
    ] = False,
    decode: Annotated[
        str,
        typer.Option(help="auto (JPEG decode on the GPU when scoring on CUDA), cpu or cuda."),
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Score every sample with a filter network: image-text cosine similarity."""
    from curate.models import ModelSpec
    from curate.score.stage import ScoreConfig, score_run

    try:
        config = ScoreConfig(
            run=run,
            model=ModelSpec(model, pretrained, quick_gelu, random_init),
            name=name,
            batch_size=batch_size,
            executor=ExecutorConfig(workers=workers, scheduler=scheduler),
            device=device,
            save_embeddings=save_embeddings,
            overwrite=overwrite,
            max_image_pixels=max_image_pixels,
            precision=precision,
            plain_encoders=plain_encoders,
            decoder=decode,
            progress=progress,
        )
        summary = score_run(config)
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(summary.to_dict(), as_json, summary.text())
    if summary.failed_shards:
        raise typer.Exit(code=1)


def _csv_floats(text: str | None, option: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"{option} takes comma-separated numbers, got '{text}'")


def _filter_specs(texts: list[str] | None) -> tuple:
    from curate.filters import parse_filter_spec

    return tuple(parse_filter_spec(text) for text in texts or [])


FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", help="A named filter, NAME or NAME:key=value,... (repeatable)."),
]
WhereOption = Annotated[str | None, typer.Option(help="SQL condition over `samples` to keep.")]


@app.command()
def query(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement.")],
    output_format: Annotated[
        str, typer.Option("--format", help="table, csv, json or parquet.")
    ] = "table",
    out: Annotated[Path | None, typer.Option(help="Write the result to this file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Run read-only SQL over the run's views: pool, one per scorer, samples."""
    from curate.tables.output import write_result
    from curate.tables.views import run_query

    try:
        result = run_query(run, sql)
        text = write_result(result, output_format, out, overwrite)
    except USER_ERRORS as exc:
        fail(str(exc))
    if text:
        typer.echo(text)


@app.command("filters")
def list_filters_command(as_json: JsonOption = False) -> None:
    """List the named filters and their parameters."""
    from curate.filters import list_filters

    entries = [
        {
            "name": f.name,
            "description": f.description,
            "params": [
                {"name": p.name, "type": p.type_name, "default": p.default, "help": p.help,
                 "required": p.required}
                for p in f.params
            ],
        }
        for f in list_filters()
    ]
    lines = []
    for entry in entries:
        lines.append(f"{entry['name']}: {entry['description']}")
        lines += [
            f"    {p['name']} ({p['type']}{', required' if p['required'] else ''}"
            f"{'' if p['default'] is None else ', default ' + str(p['default'])}): {p['help']}"
            for p in entry["params"]
        ]
    emit({"filters": entries}, as_json, "\n".join(lines))


@app.command("sweep")
def sweep_command(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    by: Annotated[str, typer.Option(help="Score column (dfn or dfn_score).")],
    fractions: Annotated[
        str | None, typer.Option(help="Comma-separated fractions to keep.")
    ] = "0.1,0.15,0.2,0.3",
    thresholds: Annotated[str | None, typer.Option(help="Comma-separated thresholds.")] = None,
    points: Annotated[
        int | None, typer.Option(help="Instead of --fractions: N evenly spaced fractions.")
    ] = None,
    filters: FilterOption = None,
    where: WhereOption = None,
    name: Annotated[str | None, typer.Option(help="Sweep name (default: the column).")] = None,
    stats_sample: Annotated[
        int, typer.Option(help="Rows sampled for English and class-match shares.")
    ] = 25_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing sweep.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Kept counts and kept-sample statistics at DataComp fractions and thresholds."""
    from curate.select.sweep import SweepConfig, sweep

    try:
        chosen = (tuple((i + 1) / points for i in range(points)) if points
                  else _csv_floats(fractions, "--fractions"))
        result = sweep(SweepConfig(
            run=run, by=by, fractions=chosen,
            thresholds=_csv_floats(thresholds, "--thresholds"), filters=_filter_specs(filters),
            where=where, name=name, overwrite=overwrite, stats_sample=stats_sample,
        ))
    except USER_ERRORS as exc:
        fail(str(exc))
    header = f"{'fraction':>9} {'threshold':>10} {'kept':>10} {'kept%':>7} {'chars':>7} " \
             f"{'english':>8} {'classes':>8}"

    def cell(value: Any, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    lines = [f"sweep of {result.column} over {result.candidates} samples -> {result.path}",
             header]
    for row in result.table.to_pylist():
        lines.append(
            f"{cell(row['fraction'], '9.3f')} {row['threshold']:10.4f} {row['kept']:10d} "
            f"{100 * row['kept_fraction']:6.2f}% {cell(row['mean_caption_chars'], '7.1f')} "
            f"{cell(row['english_share'], '8.3f')} {cell(row['class_match_share'], '8.3f')}"
        )
    emit(result.to_dict(), as_json, "\n".join(lines))


@app.command("select")
def select_command(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[str, typer.Option(help="Subset name: writes RUN/subsets/NAME/.")],
    by: Annotated[str | None, typer.Option(help="Score column (dfn or dfn_score).")] = None,
    fraction: Annotated[
        float | None, typer.Option(help="Keep this top fraction (DataComp's rule).")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Keep score >= this.")] = None,
    filters: FilterOption = None,
    where: WhereOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing subset.")] = False,
    uids_only: Annotated[bool, typer.Option(
        "--uids-only", help="Write uids.npy and selection.json only (DataComp's output; no "
        "manifest.parquet or dropped.parquet, so no export or per-sample drop reasons).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Select a subset: uids.npy (DataComp), manifest, dropped samples with reasons."""
    from curate.select.subset import SelectConfig, select_subset

    try:
        summary = select_subset(SelectConfig(
            run=run, name=out, by=by, fraction=fraction, threshold=threshold,
            filters=_filter_specs(filters), where=where, overwrite=overwrite,
            uids_only=uids_only, command=" ".join(["filter-pool", *sys.argv[1:]]),
        ))
    except USER_ERRORS as exc:
        fail(str(exc))
    payload = summary.to_dict()
    lines = [f"subset '{summary.name}': kept {summary.kept} of {summary.total} "
             f"({100 * payload['kept_fraction']:.2f}%) -> {summary.path}"]
    lines += [f"  dropped first by {label}: {count}"
              for label, count in summary.dropped_first.most_common()]
    emit(payload, as_json, "\n".join(lines))


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    subset: Annotated[str, typer.Option(help="Subset name (RUN/subsets/NAME).")],
    out: Annotated[Path, typer.Option(help="Output folder for webdataset shards.")],
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Write the subset as webdataset shards named by uid, for the reinforcement stage."""
    from curate.export.stage import ExportConfig, export_subset

    try:
        summary = export_subset(ExportConfig(run=run, subset=subset, out=out,
                                             shard_size=shard_size, overwrite=overwrite,
                                             progress=progress))
    except USER_ERRORS as exc:
        fail(str(exc))
    payload = summary.to_dict()
    text = (f"exported {summary.exported} of {summary.selected} samples in {summary.shards} "
            f"shards -> {summary.out}")
    if summary.missing:
        text += "\n  missing from the pool: " + ", ".join(
            f"{reason} {count}" for reason, count in summary.missing.most_common())
    emit(payload, as_json, text)
    if summary.missing:
        raise typer.Exit(code=1)


@app.command("report")
def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")],
    subset: Annotated[str | None, typer.Option(help="Subset name (RUN/subsets/NAME).")] = None,
    scorer: Annotated[
        str | None, typer.Option(help="Scorer for the image grids (default: the subset's).")
    ] = None,
    fraction: Annotated[
        float, typer.Option(help="Cut for the grids when no subset gives one (top fraction).")
    ] = 0.3,
    grid_size: Annotated[int, typer.Option(help="Images per grid.")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Write one self-contained HTML report: statuses, score plots, images around the cut."""
    from curate.report import ReportConfig, build_report

    try:
        summary = build_report(ReportConfig(run=run, out=out, subset=subset, scorer=scorer,
                                            fraction=fraction, grid_size=grid_size,
                                            overwrite=overwrite))
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(summary.to_dict(), as_json,
         f"report -> {summary.out} ({summary.images} images, {summary.bytes / 1e6:.1f} MB)")


def _train_text(result: Any) -> str:
    record = result.record
    metrics = result.metrics
    lines = [f"trained {record['model']['architecture']} for {record['steps']} steps "
             f"({record['samples_seen']} samples seen) -> {result.out}"]
    if metrics.get("loss_first") is not None:
        lines.append(f"  loss {metrics['loss_first']:.4f} -> {metrics['loss_last']:.4f}")
    if "image_to_text_r1" in metrics:
        lines.append(f"  held-out recall@1 ({metrics['heldout_pairs']} pairs, chance "
                     f"{metrics['recall_chance']:.4f}): image->text "
                     f"{metrics['image_to_text_r1']:.4f}, text->image "
                     f"{metrics['text_to_image_r1']:.4f}")
    if "zero_shot_top1" in metrics:
        lines.append(f"  zero-shot top-1 on {metrics['eval_set']}: {metrics['zero_shot_top1']:.4f}"
                     f" (chance {metrics['zero_shot_chance']:.4f})")
    throughput = record["throughput"]
    if throughput["steps_per_second"]:
        lines.append(f"  {throughput['steps_per_second']:.2f} steps/s, "
                     f"{throughput['samples_per_second']:.1f} samples/s, waiting on data "
                     f"{100 * throughput['data_wait_fraction']:.1f}% of the time")
    skipped = record["data"]["skipped"]
    if skipped:
        lines.append("  skipped samples: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    lines.append(f"  score with: filter-pool score RUN --model {result.out}")
    return "\n".join(lines)


@app.command("train-dfn")
def train_dfn(
    data: Annotated[Path, typer.Argument(
        help="webdataset shards (img2dataset layout), a run subset folder RUN/subsets/NAME, "
             "or a run with --subset.")],
    out: Annotated[Path, typer.Option(help="Output model directory (resumed when it holds "
                                           "a checkpoint of the same configuration).")],
    subset: Annotated[str | None, typer.Option(help="Subset name when DATA is a run.")] = None,
    model: Annotated[str | None, typer.Option(
        help="open_clip config to train (default ViT-B-32, or the --init architecture).")] = None,
    init: Annotated[str | None, typer.Option(
        help="Fine-tune from ARCH:TAG, ARCH:/path/ckpt.pt, hf-hub:org/name or a model DIR.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data (default 1).")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples seen in total.")] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per micro-batch.")] = 64,
    accum: Annotated[int, typer.Option(
        help="Micro-batches per step (effective batch = batch size x accum).")] = 1,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (default 5e-4 from scratch, 1e-5 with --init).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warmup steps (default 10%).")] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.2,
    holdout: Annotated[int | None, typer.Option(
        help="Held-out pairs for recall@1 (default 10%, at most 1000).")] = None,
    eval_set: Annotated[Path | None, typer.Option(
        "--eval", help="Zero-shot eval set folder (see data/README.md).")] = None,
    val_every: Annotated[int | None, typer.Option(help="Validate every N steps.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        help="Save the resume checkpoint every N steps.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Data-loading worker processes (default min(2, cores)).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto, fp32, bf16 or fp16 (mixed precision on CUDA only).")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of init, data order and augmentation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    decoded_cache: Annotated[bool, typer.Option(
        help="Decode every pair once into memory at the model's input size and augment with "
             "random crops (fast for small runs of tiny models).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a filter network (CLIP, contrastive) on high-quality pairs, from scratch or
    fine-tuned; `filter-pool score --model DIR` loads the result."""
    from curate.train import TrainConfig, train_clip

    try:
        result = train_clip(TrainConfig(
            data=data, out=out, subset=subset, model=model, init=init, steps=steps,
            epochs=epochs, samples=samples, batch_size=batch_size, accum=accum, lr=lr,
            warmup=warmup, weight_decay=weight_decay, holdout=holdout, eval_set=eval_set,
            val_every=val_every, checkpoint_every=checkpoint_every, workers=workers,
            device=device, precision=precision, seed=seed, overwrite=overwrite,
            progress=progress, decoded_cache=decoded_cache,
        ))
    except USER_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo(f"interrupted: run the same command again to resume from the last "
                   f"checkpoint in {out}", err=True)
        raise typer.Exit(code=130) from None
    emit(result.to_dict(), as_json, _train_text(result))


def _evaluation_text(evaluation: Any) -> str:
    lines = [f"subset {evaluation.subset}: {evaluation.settings['model']} trained on "
             f"{evaluation.settings['samples_seen']} samples seen per seed"]
    reinforced = evaluation.settings.get("reinforced")
    if reinforced:
        lines[0] += (f", distilled from {reinforced['path']} (clip weight "
                     f"{reinforced['clip_weight']:g}, distill weight "
                     f"{reinforced['distill_weight']:g})")
    for run in evaluation.runs:
        lines.append(f"  seed {run['seed']}: zero-shot top-1 {run['zero_shot_top1']:.4f}, "
                     f"recall@1 i->t {run['image_to_text_r1']:.4f} t->i "
                     f"{run['text_to_image_r1']:.4f} ({run['subset_pairs']} pairs, "
                     f"{run['epochs_seen']:.1f} epochs)")
    top1 = evaluation.summary().get("zero_shot_top1")
    if top1:
        lines.append(f"  zero-shot top-1 mean {top1['mean']:.4f} (std {top1['std']:.4f}, "
                     f"min {top1['min']:.4f}, max {top1['max']:.4f})")
    return "\n".join(lines)


@app.command("evaluate")
def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    subset: Annotated[str, typer.Option(help="Subset name (RUN/subsets/NAME).")],
    eval_set: Annotated[Path, typer.Option(
        "--eval", help="Zero-shot eval set folder (see data/README.md).")],
    samples_seen: Annotated[int, typer.Option(
        help="Training budget in samples seen, the same whatever the subset size.")] = 20_000,
    seed: Annotated[list[int] | None, typer.Option(
        help="Seed of one training run; repeat for several (default 0).")] = None,
    model: Annotated[str, typer.Option(help="Student open_clip config.")] = "fp-tiny-cnn",
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 64,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading processes.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Retrain finished seeds.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    reinforced: Annotated[Path | None, typer.Option(
        help="Train on these reinforced shards (`filter-pool reinforce` of this subset's "
             "export) with MobileCLIP's distillation loss.")] = None,
    clip_weight: Annotated[float | None, typer.Option(
        help="With --reinforced: weight of the CLIP loss (default 0.25).")] = None,
    distill_weight: Annotated[float | None, typer.Option(
        help="With --reinforced: weight of the distillation loss (default 0.75).")] = None,
    teacher_logit_scale: Annotated[list[float] | None, typer.Option(
        help="With --reinforced: teachers' logit scale, once for all or once per teacher "
             "(default 100).")] = None,
    synthetic_captions: Annotated[bool | None, typer.Option(
        "--synthetic-captions/--no-synthetic-captions",
        help="With --reinforced: also train on the stored synthetic captions (default on).")
    ] = None,
    decoded_cache: Annotated[bool, typer.Option(
        help="Decode every pair once into memory at the model's input size and augment with "
             "random crops (fast for small runs of tiny models).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a fresh small CLIP on the subset (fixed samples seen) and report zero-shot top-1
    on EVAL and held-out recall@1; results go to RUN/subsets/NAME/evaluation.json."""
    from curate.evaluate.stage import EvaluateConfig, evaluate_subset
    from curate.train.reinforced import DistillConfig

    options = {"clip_weight": clip_weight, "distill_weight": distill_weight,
               "teacher_logit_scales": tuple(teacher_logit_scale or ()) or None,
               "synthetic_captions": synthetic_captions}
    given = {k: v for k, v in options.items() if v is not None}
    if given and reinforced is None:
        fail("--clip-weight, --distill-weight, --teacher-logit-scale and "
             "--synthetic-captions need --reinforced DIR")
    try:
        evaluation = evaluate_subset(EvaluateConfig(
            run=run, subset=subset, eval_set=eval_set, samples_seen=samples_seen,
            seeds=tuple(seed or (0,)), model=model, batch_size=batch_size, lr=lr,
            workers=workers, device=device, overwrite=overwrite, progress=progress,
            reinforced=reinforced,
            distill=DistillConfig(**given) if reinforced is not None else None,
            decoded_cache=decoded_cache,
        ))
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(evaluation.to_dict(), as_json, _evaluation_text(evaluation))


@app.command()
def models(as_json: JsonOption = False) -> None:
    """List the packaged tiny configs and open_clip's architectures and pretrained tags."""
    import open_clip

    from curate.models import list_packaged_configs
    from curate.models.spec import _register_packaged_configs

    _register_packaged_configs()
    packaged = list_packaged_configs()
    tags: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        tags.setdefault(arch, []).append(tag)
    architectures = [m for m in open_clip.list_models() if m not in packaged]
    payload = {"packaged": packaged, "architectures": architectures, "pretrained": tags}
    lines = ["packaged: " + ", ".join(packaged), "open_clip architectures (pretrained tags):"]
    lines += [f"  {arch}: {', '.join(tags.get(arch, [])) or '-'}" for arch in architectures]
    emit(payload, as_json, "\n".join(lines))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the world, pool, run and results.")] = Path(
        "demo-run"
    ),
    scale: Annotated[str, typer.Option(help="small (CI, ~3 min) or full (~15 min).")] = "full",
    workers: Annotated[int, typer.Option(help="Dask workers for scoring (0: in-process).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the world and of the filters.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: JsonOption = False,
) -> None:
    """The whole flow on a generated toy web world: download, ingest, train a DFN, score, select,
    export, and compare subsets by training a small CLIP on each."""
    from curate.toyworld.demo import DemoConfig, run_demo

    try:
        result = run_demo(DemoConfig(out=out, scale=scale, workers=workers, seed=seed,
                                     progress=progress))
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(result.to_dict(), as_json, result.text())


def _specs(text: str, option: str, random_init: bool) -> tuple:
    from curate.models import parse_model_spec

    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        fail(f"{option} '{text}': an empty model name in the list")
    return tuple(parse_model_spec(part, random_init=random_init) for part in parts)


@app.command("reinforce")
def reinforce_command(
    shards: Annotated[Path, typer.Argument(help="Hand-off shards from `filter-pool export`.")],
    out: Annotated[Path, typer.Option(help="Output folder for the reinforced shards.")],
    teachers: Annotated[
        str, typer.Option(help="Teacher SPECs, comma-separated, in the order they are stored.")
    ],
    augmentations: Annotated[int, typer.Option(help="K: stored augmentations per image.")],
    captioner: Annotated[
        str | None, typer.Option(help="An open_clip CoCa SPEC for synthetic captions.")
    ] = None,
    captions: Annotated[int, typer.Option(help="S: synthetic captions per image.")] = 5,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 0.9,
    bf16: Annotated[
        bool, typer.Option("--bf16", help="Store bfloat16 embeddings ({uid}.pth.gz).")
    ] = False,
    image_size: Annotated[
        int | None, typer.Option(help="Augmentation size (default: the largest teacher's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the augmentations and captions.")] = 0,
    random_init: Annotated[
        bool, typer.Option("--random-init", help="Allow architectures without weights.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Samples per model batch.")] = 16,
    workers: Annotated[int, typer.Option(help="Dask workers (0 runs in-process).")] = 1,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing Dask scheduler.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Store K augmentations, teacher-ensemble embeddings and synthetic captions per sample."""
    from curate.reinforce.captioner import SamplingConfig
    from curate.reinforce.stage import ReinforceConfig, reinforce

    try:
        config = ReinforceConfig(
            shards=shards,
            out=out,
            teachers=_specs(teachers, "--teachers", random_init),
            augmentations=augmentations,
            captioner=_specs(captioner, "--captioner", random_init)[0] if captioner else None,
            sampling=SamplingConfig(num_captions=captions, top_p=top_p),
            image_size=image_size,
            bf16=bf16,
            seed=seed,
            batch_size=batch_size,
            device=device,
            executor=ExecutorConfig(workers=workers, scheduler=scheduler),
            overwrite=overwrite,
            progress=progress,
        )
        summary = reinforce(config)
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(summary.to_dict(), as_json, summary.text())
    if summary.failed_shards:
        raise typer.Exit(code=1)


@app.command("validate-reinforced")
def validate_reinforced_command(
    directory: Annotated[Path, typer.Argument(help="Output of `filter-pool reinforce`.")],
    as_json: JsonOption = False,
) -> None:
    """Check every reinforced sample against config.json; report per shard (exit 1 if bad)."""
    from curate.reinforce.validate import validate_reinforced

    try:
        report = validate_reinforced(directory)
    except USER_ERRORS as exc:
        fail(str(exc))
    lines = [f"config: {error}" for error in report.config_errors]
    for shard in report.shards:
        state = "ok" if shard.ok else f"{shard.error_count} violations"
        lines.append(f"{shard.shard}: {shard.samples} samples, {state}")
        lines += [f"  {error}" for error in shard.errors]
    lines.append("valid" if report.ok else "INVALID")
    emit(report.to_dict(), as_json, "\n".join(lines))
    if not report.ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
