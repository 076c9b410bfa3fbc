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
from curate.models import ModelSpec, list_packaged_configs
from curate.pool.ingest import IngestConfig, ingest_pool
from curate.scoring.decode import DEFAULT_MAX_PIXELS
from curate.scoring.stage import ScoreConfig, ScoreSummary, score_run

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
def ingest(
    pool: Annotated[Path, typer.Argument(help="img2dataset webdataset output folder.")],
    run: Annotated[Path, typer.Option("--run", help="Run directory to create or complete.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a run made from another pool.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Read a pool's shards into the run's pool table (one row per sample)."""
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


def _summary_text(summary: ScoreSummary) -> str:
    stats = summary.stats
    lines = [
        f"scored '{summary.name}': {stats.samples} samples in {summary.shards_total} shards "
        f"({summary.shards_skipped} already done)",
        f"  {summary.samples_scored} scored now in {summary.wall_seconds:.1f} s "
        f"({summary.samples_per_second:.1f} samples/s)",
        f"  ok {stats.ok}, failed {stats.failed}",
    ]
    lines += [f"    {status}: {count}" for status, count in sorted(stats.by_status.items())
              if status != "ok"]
    if stats.unlisted_samples:
        lines.append(f"  {stats.unlisted_samples} tar samples not in the pool table were ignored")
    for shard, reason in sorted(summary.failed_shards.items()):
        lines.append(f"  FAILED shard {shard}: {reason}")
    return "\n".join(lines)


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
    workers: Annotated[int, typer.Option(help="Dask workers (0 runs in-process).")] = 1,
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
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Score every sample with a filter network: image-text cosine similarity."""
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
            progress=progress,
        )
        summary = score_run(config)
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(summary.to_dict(), as_json, _summary_text(summary))
    if summary.failed_shards:
        raise typer.Exit(code=1)


@app.command()
def models(as_json: JsonOption = False) -> None:
    """List the packaged tiny configs and open_clip's architectures and pretrained tags."""
    import open_clip

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
    out: Annotated[Path, typer.Option(help="Folder for the generated pool and run.")] = Path(
        "demo-run"
    ),
    samples: Annotated[int, typer.Option(help="Samples in the generated pool.")] = 600,
    workers: Annotated[int, typer.Option(help="Dask workers (0 runs in-process).")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Generate a small web-like pool, ingest it and score it end to end."""
    from curate.demo import DemoConfig, run_demo

    try:
        result = run_demo(DemoConfig(out=out, samples=samples, workers=workers))
    except USER_ERRORS as exc:
        fail(str(exc))
    emit(result.to_dict(), as_json, result.text())
    if result.score.failed_shards:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
