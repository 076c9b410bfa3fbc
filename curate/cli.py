"""The ``filter-pool`` command line: each command builds a config and calls one library function."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer

from curate.errors import UserError
from curate.executor import ExecutorConfig  # stdlib only
from curate.io.limits import DEFAULT_MAX_PIXELS

# Stages load inside their commands: torch, open_clip and dask (~5 s) only where needed, and a
# table command (query, sweep, select, ...) loads DuckDB and pyarrow but not Pillow or ingest.

app = typer.Typer(
    name="filter-pool",
    help="Score web image-text pools with Data Filtering Networks, explore, select, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
F = TypeVar("F", bound=Callable[..., Any])
TABLES_ONLY = ("embeddings/",)  # what a table command never reads from a run on a URL
_shown_as: dict[str, str] = {}  # a run's local mirror -> its URL, while a command works on it


class Result(Protocol):
    """What every library function a command calls returns: a result that prints itself."""

    def text(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def user_errors(command: F) -> F:
    """A :class:`UserError` (any subclass) raised by ``command`` becomes one line on stderr,
    ``error: <message>``, and exit code 2; anything else propagates."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:  # a full disk, a file size limit, a permission, a missing parent
            logging.getLogger(__name__).debug("%s", exc, exc_info=True)
            typer.echo(f"error: {os_error_line(exc, kwargs)}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def os_error_line(exc: OSError, options: dict[str, Any]) -> str:
    """One line for an operating-system error: the path it names (or the command's output)
    and the system's reason; the stages' staging leaves no partial output behind."""
    path = exc.filename or next((options[k] for k in ("out", "run") if options.get(k)), None)
    reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = f"{path}: " if path is not None else ""
    return f"{where}{reason} (nothing was left half-written; free space or fix the path and " \
           "run the command again)"


def on_run(parameter: str = "run", must_exist: bool = True, what: str = "run",
           skip: tuple[str, ...] = (), writes: bool = True,
           per_output: bool = False) -> Callable[[F], F]:
    """A run (or another folder: ``what``) given as a URL (``s3://bucket/runs/r1``): the
    command works on its local mirror, pulled before and pushed after (curate/io/run_store.py);
    messages name the URL, not the mirror. Options for the store come from the environment
    (``FILTER_POOL_STORAGE_OPTIONS``) and the command's ``--storage-options``. ``skip``:
    prefixes the command never reads (a table command and ``embeddings/``). ``writes``: the
    command holds the folder's lock on the store and pushes (False: it only reads);
    ``per_output``: it locks each output of the run it writes instead (every write of the
    command goes through ``curate.io.lock.run_output``)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = kwargs.get(parameter)
            from curate.io.storage import looks_like_url

            if given is None or not looks_like_url(str(given)):
                return command(*args, **kwargs)
            from curate.io.run_store import run_location
            from curate.io.storage import parse_storage_options, restored_url

            url = restored_url(given)
            options = parse_storage_options(kwargs.get("storage_options"))
            with run_location(url, options, must_exist=must_exist, what=what, skip=skip,
                              writes=writes, per_output=per_output) as mirror:
                _shown_as[str(mirror)] = url
                try:
                    return command(*args, **{**kwargs, parameter: mirror})
                except UserError as exc:
                    raise UserError(str(exc).replace(str(mirror), url)) from None
                except OSError as exc:
                    line = os_error_line(exc, {**kwargs, parameter: mirror})
                    raise UserError(line.replace(str(mirror), url)) from None
                finally:
                    del _shown_as[str(mirror)]

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def resume_hint(out: Path) -> Iterator[None]:
    """Ctrl-C: say how to resume from the checkpoint in ``out``; exit code 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(f"interrupted: run the same command again to resume from the last "
                   f"checkpoint in {out}", err=True)
        raise typer.Exit(code=130) from None


def show(result: Result, as_json: bool, *, failed: bool = False) -> None:
    """Print ``result`` (``text()``, or ``to_dict()`` as JSON); exit code 1 when ``failed``.
    A run on a URL is named by its URL, not by its local mirror."""
    text = json.dumps(result.to_dict(), indent=2, sort_keys=True) if as_json else result.text()
    for mirror, url in _shown_as.items():
        text = text.replace(mirror, url)
    typer.echo(text)
    if failed:
        raise typer.Exit(code=1)


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
@user_errors
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

    sizes = {"hq_size": hq, "pool_size": pool, "eval_per_class": eval_per_class}
    overrides = {k: v for k, v in sizes.items() if v is not None}
    config = ToyWorldConfig.for_scale(scale, seed=seed, workers=workers, **overrides)
    show(write_toy_world(out, config, overwrite=overwrite, progress=progress), as_json)


@app.command()
@user_errors
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
    from curate.toyworld.download import download_pool

    options: dict[str, Any] = dict(
        processes=processes, threads=threads, image_size=image_size, resize_mode=resize_mode,
        resize_only_if_bigger=resize_only_if_bigger, timeout=timeout, retries=retries,
        overwrite=overwrite,
    )  # fmt: skip
    if shard_size is not None:  # the toy world's default differs from a URL list's
        options["shard_size"] = shard_size
    summary = download_pool(urls, out, url_col=url_col, caption_col=caption_col, **options)
    show(summary, as_json)


@app.command()
@user_errors
@on_run(must_exist=False)
def ingest(
    pool: Annotated[
        str, typer.Argument(help="img2dataset webdataset output or a DataComp metadata folder: "
                            "a path, or an fsspec URL such as s3://bucket/pool.")
    ],
    run: Annotated[Path, typer.Option("--run", help="Run directory to create or complete: a "
                                      "path, or a URL such as s3://bucket/runs/r1.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a run made from another pool.")] = False,
    storage_options: Annotated[str | None, typer.Option(
        "--storage-options", help="JSON fsspec options for a pool or run on a URL (endpoint_url, "
        "client_kwargs, profile...), kept in the run record: no credentials here, they come "
        "from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE).")
    ] = None,
    copy_pool: Annotated[bool, typer.Option(
        "--copy-pool", help="DataComp metadata: copy its columns (url, text, sha256, ...) "
        "into the run instead of reading them from the metadata files (on a URL: fetched into "
        "this machine's cache when first read), so the run stays valid when the pool moves or "
        "changes (about 1.2x the metadata's bytes instead of 0.2x).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Read a pool into the run's tables (one row per sample); DataComp metadata also brings
    its precomputed scores (clip_b32, clip_l14) and embeddings."""
    from curate.ingest.stage import IngestConfig, ingest_pool
    from curate.io.storage import looks_like_url, parse_storage_options

    options = parse_storage_options(storage_options)
    if options and not looks_like_url(pool) and _shown_as.get(str(run)) is None:
        raise UserError(f"--storage-options applies to a pool or a run on a URL, not to {pool} "
                        f"and {run}")
    config = IngestConfig(pool=pool, run=run, overwrite=overwrite,
                          storage_options=options if looks_like_url(pool) else None,
                          copy_pool=copy_pool)
    show(ingest_pool(config), as_json)


@app.command()
@user_errors
@on_run(per_output=True)
def score(
    run: Annotated[Path, typer.Argument(help="Run directory made by `filter-pool ingest` (a "
                                        "path, or a URL such as s3://bucket/runs/r1).")],
    model: Annotated[str | None, typer.Option(
        help="ARCH, hf-hub:org/name, or a model directory (scorer kinds with a model).")] = None,
    kind: Annotated[str, typer.Option(
        help="Scorer kind (registered in curate/score/kinds/): clip is image-text cosine.")
    ] = "clip",
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
    head: Annotated[Path | None, typer.Option(
        help="--kind head: a head file (train-head output, a linear or LAION aesthetic "
        "state dict).")] = None,
    embeddings: Annotated[str | None, typer.Option(
        help="--kind head: saved embeddings to read (e.g. clip_l14) [default: the head's].")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Score every sample with a filter network (image-text cosine), or with a learned head
    over saved embeddings (--kind head)."""
    from curate.models import ModelSpec
    from curate.score.stage import ScoreConfig, score_run

    spec = ModelSpec(model, pretrained, quick_gelu, random_init) if model else None
    summary = score_run(ScoreConfig(
        run=run, model=spec, kind=kind, name=name,
        batch_size=batch_size, executor=ExecutorConfig(workers=workers, scheduler=scheduler),
        device=device, save_embeddings=save_embeddings, overwrite=overwrite,
        max_image_pixels=max_image_pixels, precision=precision, plain_encoders=plain_encoders,
        decoder=decode, progress=progress, head=head, embeddings=embeddings,
    ))
    show(summary, as_json, failed=bool(summary.failed_shards))


@app.command("train-head")
@user_errors
@on_run(per_output=True)
def train_head_command(
    run: Annotated[Path, typer.Argument(help="Run directory with saved embeddings.")],
    labels: Annotated[Path, typer.Option(
        help="Labels table (parquet, csv): uid,label (binary classes) or uid,value.")],
    embeddings: Annotated[str, typer.Option(help="Saved embeddings to train on (clip_l14, ...).")],
    out: Annotated[Path, typer.Option(help="Head file to write (safetensors + JSON metadata).")],
    head_type: Annotated[str, typer.Option("--type", help="linear or mlp.")] = "linear",
    task: Annotated[str, typer.Option(
        help="auto (label: classification, value: regression), classification, regression.")
    ] = "auto",
    input_kind: Annotated[str, typer.Option(
        "--input", help="image, or image_text (image and text embeddings concatenated).")
    ] = "image",
    hidden: Annotated[str, typer.Option(help="--type mlp: hidden sizes, e.g. 512,64.")] = "256",
    holdout: Annotated[float, typer.Option(help="Share of uids held out for the report.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 1024,
    lr: Annotated[float | None, typer.Option(
        help="AdamW learning rate (default: 1e-2 linear, 1e-3 mlp).")] = None,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    positive: Annotated[str | None, typer.Option(
        help="The positive class name (default: 1, true, else the last name sorted).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing head file.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Train a linear or small MLP head on saved embeddings from labels; held-out report."""
    from curate.heads.train import TrainHeadConfig, train_head

    sizes = tuple(int(v) for v in _csv_floats(hidden, "--hidden"))
    show(train_head(TrainHeadConfig(
        run=run, labels=labels, embeddings=embeddings, out=out, head_type=head_type, task=task,
        input=input_kind, hidden=sizes, holdout=holdout, seed=seed, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, positive=positive,
        overwrite=overwrite,
    )), as_json)


def _csv_floats(text: str | None, option: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes comma-separated numbers, got '{text}'") from None


def _filter_specs(texts: list[str] | None) -> tuple:
    from curate.filters import parse_filter_spec

    return tuple(parse_filter_spec(text) for text in texts or [])


FilterOption = Annotated[
    list[str] | None,
    typer.Option("--filter", help="A named filter, NAME or NAME:key=value,... (repeatable)."),
]
WhereOption = Annotated[str | None, typer.Option(help="SQL condition over `samples` to keep.")]


@app.command()
@user_errors
@on_run(skip=TABLES_ONLY, writes=False)
def query(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
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

    text = write_result(run_query(run, sql), output_format, out, overwrite)
    if text:
        typer.echo(text)


@app.command("filters")
@user_errors
def list_filters_command(as_json: JsonOption = False) -> None:
    """List the named filters and their parameters."""
    from curate.filters import describe_filters

    show(describe_filters(), as_json)


@app.command("sweep")
@user_errors
@on_run(skip=TABLES_ONLY, per_output=True)
def sweep_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
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

    chosen = (tuple((i + 1) / points for i in range(points)) if points
              else _csv_floats(fractions, "--fractions"))
    show(sweep(SweepConfig(
        run=run, by=by, fractions=chosen,
        thresholds=_csv_floats(thresholds, "--thresholds"), filters=_filter_specs(filters),
        where=where, name=name, overwrite=overwrite, stats_sample=stats_sample,
    )), as_json)


@app.command("select")
@user_errors
@on_run(skip=TABLES_ONLY, per_output=True)
def select_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
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

    show(select_subset(SelectConfig(
        run=run, name=out, by=by, fraction=fraction, threshold=threshold,
        filters=_filter_specs(filters), where=where, overwrite=overwrite,
        uids_only=uids_only, command=" ".join(["filter-pool", *sys.argv[1:]]),
    )), as_json)


@app.command("export")
@user_errors
@on_run(skip=TABLES_ONLY, per_output=True)
@on_run("out", must_exist=False, what="output")
def export_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
    subset: Annotated[str, typer.Option(help="Subset name (RUN/subsets/NAME).")],
    out: Annotated[Path, typer.Option(help="Output folder for webdataset shards.")],
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Write the subset as webdataset shards named by uid, for the reinforcement stage."""
    from curate.export.stage import ExportConfig, export_subset

    summary = export_subset(ExportConfig(run=run, subset=subset, out=out,
                                         shard_size=shard_size, overwrite=overwrite,
                                         progress=progress))
    show(summary, as_json, failed=bool(summary.missing))


@app.command("report")
@user_errors
@on_run(skip=TABLES_ONLY, per_output=True)
def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
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

    show(build_report(ReportConfig(run=run, out=out, subset=subset, scorer=scorer,
                                   fraction=fraction, grid_size=grid_size,
                                   overwrite=overwrite)), as_json)


@app.command("train-dfn")
@user_errors
@on_run("data", what="training data", writes=False)
@on_run("out", must_exist=False, what="output")
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

    with resume_hint(out):
        result = train_clip(TrainConfig(
            data=data, out=out, subset=subset, model=model, init=init, steps=steps,
            epochs=epochs, samples=samples, batch_size=batch_size, accum=accum, lr=lr,
            warmup=warmup, weight_decay=weight_decay, holdout=holdout, eval_set=eval_set,
            val_every=val_every, checkpoint_every=checkpoint_every, workers=workers,
            device=device, precision=precision, seed=seed, overwrite=overwrite,
            progress=progress, decoded_cache=decoded_cache,
        ))
    show(result, as_json)


@app.command("evaluate")
@user_errors
@on_run(skip=TABLES_ONLY, per_output=True)
def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
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
    show(evaluate_subset(EvaluateConfig(
        run=run, subset=subset, eval_set=eval_set, samples_seen=samples_seen,
        seeds=tuple(seed or (0,)), model=model, batch_size=batch_size, lr=lr,
        workers=workers, device=device, overwrite=overwrite, progress=progress,
        reinforced=reinforced, distill=DistillConfig(**given) if given else None,
        decoded_cache=decoded_cache,
    )), as_json)


def _csv_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers, got '{text}'") from None


@app.command("compare")
@user_errors
@on_run(skip=TABLES_ONLY, per_output=True)
def compare_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
    subset: Annotated[list[str], typer.Option(
        help="Subset name (RUN/subsets/NAME); repeat to compare several.")],
    eval_set: Annotated[Path, typer.Option(
        "--eval", help="Zero-shot eval set folder (see data/README.md).")],
    budgets: Annotated[str, typer.Option(
        help="Samples seen per student, comma-separated; at least 4 (the largest checks the "
             "fit; 5 or more fit all four parameters).")] = "8000,16000,32000,64000",
    seeds: Annotated[int, typer.Option(help="Seeds per budget (0, 1, ...).")] = 3,
    name: Annotated[str | None, typer.Option(
        help="RUN/compare/NAME (default: the subsets joined by _vs_).")] = None,
    model: Annotated[str, typer.Option(help="Student open_clip config.")] = "fp-tiny-cnn",
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 64,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading processes.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    reinforced: Annotated[Path | None, typer.Option(
        help="Also train the (one) subset on these reinforced shards and report the "
             "learning-efficiency factor of reinforced over plain training.")] = None,
    decoded_cache: Annotated[bool, typer.Option(
        help="Decode every pair once into memory (as evaluate --decoded-cache).")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace the comparison (finished evaluate runs are still reused).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Train proxy students per subset, budget and seed (reusing finished evaluate runs), fit
    err(C) = a*(C+b)^-c + d per subset and write RUN/compare/NAME/ (json, parquet, png)."""
    from curate.compare.stage import CompareConfig, compare_subsets

    show(compare_subsets(CompareConfig(
        run=run, subsets=tuple(subset), eval_set=eval_set,
        budgets=_csv_ints(budgets, "--budgets"), seeds=seeds, name=name, model=model,
        batch_size=batch_size, lr=lr, workers=workers, device=device, reinforced=reinforced,
        decoded_cache=decoded_cache, overwrite=overwrite, progress=progress,
    )), as_json)


@app.command()
@user_errors
def models(as_json: JsonOption = False) -> None:
    """List the packaged tiny configs and open_clip's architectures and pretrained tags."""
    from curate.models import describe_models

    show(describe_models(), as_json)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the world, pool, run and results.")] = Path(
        "demo-run"
    ),
    scale: Annotated[str, typer.Option(help="small (CI, ~2 min) or full (30-60 min).")] = "full",
    workers: Annotated[int, typer.Option(help="Dask workers for scoring (0: in-process).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the world and of the filters.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: JsonOption = False,
) -> None:
    """The whole flow on a generated toy web world: download, ingest, train a DFN, score, select,
    export, and compare subsets by training a small CLIP on each."""
    from curate.toyworld.demo import DemoConfig, run_demo

    show(run_demo(DemoConfig(out=out, scale=scale, workers=workers, seed=seed,
                             progress=progress)), as_json)


def _specs(text: str, option: str, random_init: bool) -> tuple:
    from curate.models import parse_model_spec

    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError(f"{option} '{text}': an empty model name in the list")
    return tuple(parse_model_spec(part, random_init=random_init) for part in parts)


@app.command("reinforce")
@user_errors
@on_run("shards", what="shards", writes=False)
@on_run("out", must_exist=False, what="output")
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

    summary = reinforce(ReinforceConfig(
        shards=shards, out=out, teachers=_specs(teachers, "--teachers", random_init),
        augmentations=augmentations,
        captioner=_specs(captioner, "--captioner", random_init)[0] if captioner else None,
        sampling=SamplingConfig(num_captions=captions, top_p=top_p), image_size=image_size,
        bf16=bf16, seed=seed, batch_size=batch_size, device=device,
        executor=ExecutorConfig(workers=workers, scheduler=scheduler), overwrite=overwrite,
        progress=progress,
    ))
    show(summary, as_json, failed=bool(summary.failed_shards))


@app.command("validate-reinforced")
@user_errors
def validate_reinforced_command(
    directory: Annotated[Path, typer.Argument(help="Output of `filter-pool reinforce`.")],
    as_json: JsonOption = False,
) -> None:
    """Check every reinforced sample against config.json; report per shard (exit 1 if bad)."""
    from curate.reinforce.validate import validate_reinforced

    report = validate_reinforced(directory)
    show(report, as_json, failed=not report.ok)


@app.command("cluster")
@user_errors
@on_run(per_output=True)
def cluster_command(
    run: Annotated[Path, typer.Argument(help="Run directory (a path or a URL).")],
    name: Annotated[str, typer.Option(help="Table name: RUN/scores/NAME, columns NAME_keep, "
                                           "NAME_cluster, ...")] = "image_based",
    embeddings: Annotated[str, typer.Option(
        help="Image embeddings of the run (DataComp ingest: clip_l14).")] = "clip_l14",
    centroids: Annotated[Path | None, typer.Option(
        help="Centroids [K, D]: DataComp's *_centroids_l14.pt or a .npy.")] = None,
    clusters: Annotated[int | None, typer.Option(
        help="Compute K centroids by k-means over the pool (DataComp: 100000).")] = None,
    seed: Annotated[int, typer.Option(help="k-means seed (DataComp: 0).")] = 0,
    sample_ratio: Annotated[float | None, typer.Option(
        help="k-means on this fraction of the samples (DataComp: large 0.3, xlarge 0.03).")
    ] = None,
    reference: Annotated[list[Path] | None, typer.Option(
        help="Reference image embeddings [M, D] (.npy, or DataComp's in1k_clip_vit_l14_*.pt); "
             "repeatable, concatenated in order.")] = None,
    target_clusters: Annotated[Path | None, typer.Option(
        help="Target centroid ids (.npy of integers, or one id a line) instead of --reference."
    )] = None,
    fasttext_model: Annotated[Path | None, typer.Option(
        help="fastText lid.176.bin for the caption's language (DataComp's exact model); "
             "default: py3langid's packaged model.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a table made with other settings.")
                         ] = False,
    as_json: JsonOption = False,
) -> None:
    """DataComp's image-based filter: a table of each sample's centroid and whether it is kept."""
    from curate.cluster.stage import ClusterConfig, cluster_run

    show(cluster_run(ClusterConfig(
        run=run, name=name, embeddings=embeddings, centroids=centroids, clusters=clusters,
        seed=seed, sample_ratio=sample_ratio, reference=tuple(reference or ()),
        target_clusters=target_clusters, fasttext_model=fasttext_model, overwrite=overwrite,
    )), as_json)


@app.command("dedup")
@user_errors
@on_run(per_output=True)
def dedup_command(
    run: Annotated[Path, typer.Argument(help="Run directory made by `filter-pool ingest`.")],
    level: Annotated[str, typer.Option(help="exact (bytes or pixels), phash (perceptual "
                                            "hashes) or semantic (SemDeDup on embeddings).")],
    name: Annotated[str | None, typer.Option(
        help="Table name (default dedup_LEVEL): columns NAME_keep, NAME_group, ...")] = None,
    prefer: Annotated[str | None, typer.Option(
        help="Score column whose highest value is kept in a group (ties: smallest uid).")
    ] = None,
    with_caption: Annotated[bool, typer.Option(
        "--with-caption", help="exact: the caption must match too.")] = False,
    max_distance: Annotated[int, typer.Option(help="phash: largest Hamming distance.")] = 4,
    hash_kind: Annotated[str, typer.Option("--hash", help="phash: phash or dhash.")] = "phash",
    embeddings: Annotated[str, typer.Option(help="semantic: saved image embeddings.")
                          ] = "clip_l14",
    clusters: Annotated[int, typer.Option(help="semantic: k-means clusters.")] = 100,
    eps: Annotated[float, typer.Option(help="semantic: duplicates above cosine 1 - eps.")
                   ] = 0.05,
    niter: Annotated[int, typer.Option(help="semantic: k-means iterations.")] = 20,
    seed: Annotated[int, typer.Option(help="semantic: k-means seed.")] = 0,
    workers: Annotated[int | None, typer.Option(
        help="Dask workers hashing images (0 runs in-process).")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing Dask scheduler.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a table made with other settings.")
                         ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Group duplicate samples and mark one representative per group (a table in samples)."""
    from curate.dedup.stage import DedupConfig, dedup_run

    show(dedup_run(DedupConfig(
        run=run, level=level, name=name, prefer=prefer, with_caption=with_caption,
        max_distance=max_distance, hash=hash_kind, embeddings=embeddings, clusters=clusters,
        eps=eps, niter=niter, seed=seed,
        executor=ExecutorConfig(workers=workers, scheduler=scheduler), overwrite=overwrite,
        progress=progress,
    )), as_json)


@app.command("run")
@user_errors
@on_run(must_exist=False)
def run_command(
    recipe: Annotated[Path, typer.Argument(help="A recipe: pipelines/NAME.toml.")],
    assignments: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE: set a recipe variable (repeatable).")] = None,
    run: Annotated[Path | None, typer.Option(
        "--run", help="The run (where the recipe is recorded): the same as --set run=RUN, "
        "and it may be a URL (s3://bucket/runs/r1), worked on through a local mirror.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the stages with their resolved settings and which are done; "
                          "run nothing.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Run a recipe's stages in order: finished ones are done, a killed one resumes; the
    recipe and its resolved settings are recorded in RUN/recipes/."""
    import curate.toyworld.stages  # noqa: F401  (registers toyworld, download, demo kinds)
    from curate.pipeline import parse_assignment, run_recipe

    overrides = dict(parse_assignment(text) for text in assignments or [])
    if run is not None:
        overrides["run"] = str(run)
    result = run_recipe(recipe, overrides, dry_run=dry_run, progress=progress,
                        on_stage=None if as_json or dry_run else lambda r: typer.echo(r.line()))
    show(result, as_json, failed=not result.ok)


if __name__ == "__main__":
    app()
