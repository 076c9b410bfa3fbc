"""The toy world's stage kinds for recipes: ``toyworld``, ``download`` (a URL list or a toy
world served on 127.0.0.1) and the demo's own steps (``random-subset``, ``demo-report``).

Registered here, not in ``curate.pipeline``, so the engine never imports the toy world;
``filter-pool run`` and ``filter-pool demo`` import this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from curate.errors import UserError
from curate.pipeline import StageOutcome, register_stage


@register_stage("toyworld")
def toyworld(out: str, seed: int = 0, scale: str = "small", hq: int | None = None,
             pool: int | None = None, eval_per_class: int | None = None, workers: int = 1,
             overwrite: bool = False, progress: bool = True) -> StageOutcome:
    """Generate the toy web world (HQ shards, a noisy POOL, EVAL, ground truth)."""
    from curate.toyworld.world import ToyWorldConfig, write_toy_world

    sizes = {"hq_size": hq, "pool_size": pool, "eval_per_class": eval_per_class}
    config = ToyWorldConfig.for_scale(scale, seed=seed, workers=workers,
                                      **{k: v for k, v in sizes.items() if v is not None})
    existed = (Path(out) / "world.json").is_file() and not overwrite
    world = write_toy_world(out, config, overwrite=overwrite, progress=progress)
    return StageOutcome(world.to_dict(), f"hq {world.counts['hq']}, pool {world.counts['pool']}, "
                                         f"eval {world.counts['eval']} -> {out}", reused=existed)


@register_stage("download")
def download(urls: str, out: str, processes: int = 2, threads: int = 16, image_size: int = 512,
             resize_mode: str = "keep_ratio_largest", resize_only_if_bigger: bool = True,
             url_col: str = "url", caption_col: str = "caption", shard_size: int | None = None,
             timeout: int = 10, retries: int = 0, overwrite: bool = False) -> StageOutcome:
    """Download a URL list (or a toy world's POOL, served on 127.0.0.1) with img2dataset."""
    from curate.io.download import DownloadConfig, download_urls
    from curate.toyworld.download import download_toy_pool
    from curate.toyworld.world import WORLD_FILE

    options = dict(processes=processes, threads=threads, image_size=image_size,
                   resize_mode=resize_mode, resize_only_if_bigger=resize_only_if_bigger,
                   timeout=timeout, retries=retries, overwrite=overwrite)
    if shard_size is not None:
        options["shard_size"] = shard_size
    source = Path(urls)
    if source.is_dir() and (source / WORLD_FILE).is_file():
        summary = download_toy_pool(source, out, **options)
    elif source.is_dir():
        raise UserError(f"{urls} is a folder but not a toy world (no {WORLD_FILE})")
    else:
        summary = download_urls(DownloadConfig(urls=source, out=Path(out), url_col=url_col,
                                               caption_col=caption_col, **options))
    return StageOutcome(summary.to_dict(), f"{summary.successes} of {summary.count} samples in "
                                           f"{summary.shards} shards -> {out}",
                        reused=summary.reused)


@register_stage("random-subset")
def random_subset(run: str, out: str, size_of: str, where: str = "status = 'success'",
                  salt: str = "random-subset") -> StageOutcome:
    """A seeded random subset the size of another subset (the demo's random baseline)."""
    from curate.select.subset import SelectConfig, select_subset

    record = Path(run) / "subsets" / size_of / "selection.json"
    if not record.is_file():
        raise UserError(f"random-subset: subset '{size_of}' not found ({record})")
    size = json.loads(record.read_text())["kept"]
    chosen = (f"sample_id IN (SELECT sample_id FROM samples WHERE {where} "
              f"ORDER BY hash(uid || '{salt}') LIMIT {size})")
    summary = select_subset(SelectConfig(run=run, name=out, where=chosen,
                                         command="filter-pool run (random-subset)"))
    return StageOutcome(summary.to_dict(), f"'{out}': kept {summary.kept} of {summary.total} "
                                           f"(the size of '{size_of}')", reused=summary.reused)


@register_stage("demo-report")
def demo_report(out: str, run: str, world: str, subsets: list[str], filters: list[str],
                eval: str, scale: str = "full",  # noqa: A002 (evaluate's option name)
                model: str = "fp-tiny-cnn", filter_samples: int = 0, samples_seen: int = 20_000,
                seed: list[int] | None = None, batch_size: int = 64, lr: float | None = None,
                decoded_cache: bool = False, basic: str = "",
                comparison: str | None = None) -> StageOutcome:
    """The demo's comparison: precision against the hidden labels, zero-shot top-1 per seed;
    the scaling comparison ``comparison`` (RUN/compare/NAME) when given; the demo's claims
    checked; demo_results.json and demo_report.md (evaluations are those of the evaluate
    stages)."""
    from curate.toyworld.demo import write_demo_results

    result = write_demo_results(
        Path(out), Path(run), Path(world), subsets, filters, Path(eval),
        scale=scale, model=model, filter_samples=filter_samples, samples_seen=samples_seen,
        seeds=tuple(seed or (0,)), batch_size=batch_size, lr=lr, decoded_cache=decoded_cache,
        basic=basic, comparison=comparison or None,
    )
    return StageOutcome(result.to_dict(), f"{len(result.subsets)} subsets compared -> "
                                          f"{result.report}")
