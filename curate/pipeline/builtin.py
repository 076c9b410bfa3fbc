"""The engine's stage kinds: one per library stage, named and set as its CLI command.

Each builds the stage's config dataclass and calls its one library function; every one of
those resumes a killed run and reuses a finished output of the same settings, or refuses other
settings naming what differs. Stage modules load inside the functions (torch is slow to import).
"""

from __future__ import annotations

from typing import Any

from curate.filters import parse_filter_spec
from curate.pipeline.stages import StageOutcome, register_stage


def _filters(texts: list[str] | None) -> tuple:
    return tuple(parse_filter_spec(text) for text in texts or [])


@register_stage("ingest")
def ingest(pool: str, run: str, overwrite: bool = False) -> StageOutcome:
    """Read a pool into the run's tables."""
    from curate.ingest.stage import IngestConfig, ingest_pool

    summary = ingest_pool(IngestConfig(pool=pool, run=run, overwrite=overwrite))
    return StageOutcome(summary.to_dict(), f"{summary.samples} samples from {summary.shards} "
                                           f"shards -> {run}")


@register_stage("score")
def score(
    run: str, model: str | None = None, kind: str = "clip", pretrained: str | None = None,
    name: str = "dfn",
    random_init: bool = False, quick_gelu: bool | None = None, workers: int | None = None,
    scheduler: str | None = None, device: str = "auto", batch_size: int = 64,
    save_embeddings: bool = False, overwrite: bool = False, max_image_pixels: int | None = None,
    precision: str = "auto", plain_encoders: bool = False, decode: str = "auto",
    progress: bool = True, head: str | None = None, embeddings: str | None = None,
) -> StageOutcome:
    """Score every sample with a filter network (or a head over embeddings: kind head)."""
    from curate.executor import ExecutorConfig
    from curate.models import ModelSpec
    from curate.score.stage import ScoreConfig, score_run

    extra = {"max_image_pixels": max_image_pixels} if max_image_pixels is not None else {}
    spec = ModelSpec(model, pretrained, quick_gelu, random_init) if model else None
    summary = score_run(ScoreConfig(
        run=run, model=spec, kind=kind, name=name,
        batch_size=batch_size, executor=ExecutorConfig(workers=workers, scheduler=scheduler),
        device=device, save_embeddings=save_embeddings, overwrite=overwrite,
        precision=precision, plain_encoders=plain_encoders, decoder=decode, progress=progress,
        head=head, embeddings=embeddings, **extra,
    ))
    failed = summary.failed_shards
    text = (f"'{name}': {summary.stats.samples} samples, {summary.shards_skipped} of "
            f"{summary.shards_total} shards already done")
    if failed:
        text += "; FAILED shards: " + ", ".join(sorted(failed))
    return StageOutcome(summary.to_dict(), text, ok=not failed,
                        reused=summary.shards_skipped == summary.shards_total)


@register_stage("train-head")
def train_head(
    run: str, labels: str, embeddings: str, out: str, type: str = "linear",  # noqa: A002
    task: str = "auto", input: str = "image", hidden: list[int] | None = None,  # noqa: A002
    holdout: float = 0.2, seed: int = 0, epochs: int = 100, batch_size: int = 1024,
    lr: float | None = None, weight_decay: float = 1e-4, positive: str | None = None,
    overwrite: bool = False,
) -> StageOutcome:
    """Train a linear or MLP head on saved embeddings from a labels table."""
    from curate.heads.train import TrainHeadConfig
    from curate.heads.train import train_head as run_train_head

    result = run_train_head(TrainHeadConfig(
        run=run, labels=labels, embeddings=embeddings, out=out, head_type=type, task=task,
        input=input, hidden=tuple(hidden or (256,)), holdout=holdout, seed=seed, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, positive=positive,
        overwrite=overwrite,
    ))
    held = result.report.get("holdout", {})
    return StageOutcome(result.to_dict(), f"{result.info.architecture} head -> {out}; held out: "
                                          + (", ".join(f"{k} {v}" for k, v in held.items())
                                             or "none"), reused=result.reused)


@register_stage("score-head")
def score_head(
    run: str, head: str, name: str, embeddings: str | None = None, workers: int | None = 0,
    scheduler: str | None = None, overwrite: bool = False, progress: bool = True,
) -> StageOutcome:
    """Score every sample with a learned head over saved embeddings (score --kind head)."""
    from curate.executor import ExecutorConfig
    from curate.score.stage import ScoreConfig, score_run

    summary = score_run(ScoreConfig(
        run=run, kind="head", head=head, embeddings=embeddings, name=name,
        executor=ExecutorConfig(workers=workers, scheduler=scheduler), overwrite=overwrite,
        progress=progress,
    ))
    failed = summary.failed_shards
    return StageOutcome(summary.to_dict(), f"'{name}': {summary.stats.samples} samples, "
                                           f"{summary.shards_skipped} of {summary.shards_total} "
                                           "shards already done", ok=not failed,
                        reused=summary.shards_skipped == summary.shards_total)


@register_stage("sweep")
def sweep(
    run: str, by: str, fractions: list[float] | None = None,
    thresholds: list[float] | None = None, points: int | None = None,
    filter: list[str] | None = None, where: str | None = None,  # noqa: A002 (the option)
    name: str | None = None, stats_sample: int = 25_000, overwrite: bool = False,
) -> StageOutcome:
    """Kept counts and kept-sample statistics at fractions and thresholds."""
    from curate.select.sweep import DEFAULT_FRACTIONS, SweepConfig
    from curate.select.sweep import sweep as run_sweep

    chosen = (tuple((i + 1) / points for i in range(points)) if points
              else tuple(fractions) if fractions is not None else DEFAULT_FRACTIONS)
    result = run_sweep(SweepConfig(
        run=run, by=by, fractions=chosen, thresholds=tuple(thresholds or ()),
        filters=_filters(filter), where=where, name=name, overwrite=overwrite,
        stats_sample=stats_sample,
    ))
    return StageOutcome(result.to_dict(), f"{result.column} over {result.candidates} samples "
                                          f"-> {result.path}", reused=result.reused)


@register_stage("select")
def select(
    run: str, out: str, by: str | None = None, fraction: float | None = None,
    threshold: float | None = None, filter: list[str] | None = None,  # noqa: A002
    where: str | None = None, overwrite: bool = False, uids_only: bool = False,
) -> StageOutcome:
    """Select a subset: uids.npy, manifest, dropped samples with reasons."""
    from curate.select.subset import SelectConfig, select_subset

    summary = select_subset(SelectConfig(
        run=run, name=out, by=by, fraction=fraction, threshold=threshold,
        filters=_filters(filter), where=where, overwrite=overwrite, uids_only=uids_only,
        command="filter-pool run (recipe stage)",
    ))
    return StageOutcome(summary.to_dict(), f"'{out}': kept {summary.kept} of {summary.total}",
                        reused=summary.reused)


@register_stage("export")
def export(run: str, subset: str, out: str, shard_size: int = 10_000, overwrite: bool = False,
           progress: bool = True) -> StageOutcome:
    """Write the subset as webdataset shards named by uid."""
    from curate.export.stage import ExportConfig, export_subset

    summary = export_subset(ExportConfig(run=run, subset=subset, out=out, shard_size=shard_size,
                                         overwrite=overwrite, progress=progress))
    text = f"{summary.exported} of {summary.selected} samples in {summary.shards} shards -> {out}"
    if summary.missing:
        text += f"; missing from the pool: {dict(summary.missing)}"
    return StageOutcome(summary.to_dict(), text, ok=not summary.missing, reused=summary.reused)


@register_stage("dedup")
def dedup(
    run: str, level: str, name: str | None = None, prefer: str | None = None,
    with_caption: bool = False, max_distance: int = 4, hash: str = "phash",  # noqa: A002
    embeddings: str = "clip_l14", clusters: int = 100, eps: float = 0.05, niter: int = 20,
    seed: int = 0, workers: int | None = None, scheduler: str | None = None,
    overwrite: bool = False, progress: bool = True,
) -> StageOutcome:
    """Group duplicates (exact, phash or semantic) and mark one representative per group."""
    from curate.dedup.stage import DedupConfig, dedup_run
    from curate.executor import ExecutorConfig

    summary = dedup_run(DedupConfig(
        run=run, level=level, name=name, prefer=prefer, with_caption=with_caption,
        max_distance=max_distance, hash=hash, embeddings=embeddings, clusters=clusters,
        eps=eps, niter=niter, seed=seed,
        executor=ExecutorConfig(workers=workers, scheduler=scheduler), overwrite=overwrite,
        progress=progress,
    ))
    return StageOutcome(summary.to_dict(), f"'{summary.name}': {summary.groups} groups, "
                                           f"{summary.duplicates} duplicates of "
                                           f"{summary.samples}", reused=summary.reused)


@register_stage("train-dfn")
def train_dfn(
    data: str, out: str, subset: str | None = None, model: str | None = None,
    init: str | None = None, steps: int | None = None, epochs: float | None = None,
    samples: int | None = None, batch_size: int = 64, accum: int = 1, lr: float | None = None,
    warmup: int | None = None, weight_decay: float = 0.2, holdout: int | None = None,
    eval: str | None = None,  # noqa: A002 (the option's name)
    val_every: int | None = None, checkpoint_every: int | None = None,
    workers: int | None = None, device: str = "auto", precision: str = "auto", seed: int = 0,
    overwrite: bool = False, progress: bool = True, decoded_cache: bool = False,
) -> StageOutcome:
    """Train a filter network on high-quality pairs."""
    from curate.train import TrainConfig, train_clip

    result = train_clip(TrainConfig(
        data=data, out=out, subset=subset, model=model, init=init or None,  # "": from scratch
        steps=steps, epochs=epochs,
        samples=samples, batch_size=batch_size, accum=accum, lr=lr, warmup=warmup,
        weight_decay=weight_decay, holdout=holdout, eval_set=eval, val_every=val_every,
        checkpoint_every=checkpoint_every, workers=workers, device=device, precision=precision,
        seed=seed, overwrite=overwrite, progress=progress, decoded_cache=decoded_cache,
    ))
    record = result.record
    return StageOutcome(result.to_dict(), f"{record['steps']} steps ({record['samples_seen']} "
                                          f"samples seen) -> {out}", reused=result.reused)


def _specs(text: str | list[str], random_init: bool) -> tuple:
    from curate.models import parse_model_spec

    parts = text if isinstance(text, list) else [p.strip() for p in text.split(",")]
    return tuple(parse_model_spec(part, random_init=random_init) for part in parts)


@register_stage("reinforce")
def reinforce(
    shards: str, out: str, teachers: list[str], augmentations: int,
    captioner: str | None = None, captions: int = 5, top_p: float = 0.9, bf16: bool = False,
    image_size: int | None = None, seed: int = 0, random_init: bool = False,
    batch_size: int = 16, workers: int = 1, scheduler: str | None = None,
    device: str = "auto", overwrite: bool = False, progress: bool = True,
) -> StageOutcome:
    """Store K augmentations, teacher embeddings and synthetic captions per sample."""
    from curate.executor import ExecutorConfig
    from curate.reinforce.captioner import SamplingConfig
    from curate.reinforce.stage import ReinforceConfig
    from curate.reinforce.stage import reinforce as run_reinforce

    summary = run_reinforce(ReinforceConfig(
        shards=shards, out=out, teachers=_specs(teachers, random_init),
        augmentations=augmentations,
        captioner=_specs(captioner, random_init)[0] if captioner else None,
        sampling=SamplingConfig(num_captions=captions, top_p=top_p), image_size=image_size,
        bf16=bf16, seed=seed, batch_size=batch_size, device=device,
        executor=ExecutorConfig(workers=workers, scheduler=scheduler), overwrite=overwrite,
        progress=progress,
    ))
    failed = summary.failed_shards
    return StageOutcome(summary.to_dict(),
                        f"{summary.stats.written} of {summary.stats.samples} samples, "
                        f"{summary.shards_skipped} of {summary.shards_total} shards already "
                        f"done -> {out}", ok=not failed,
                        reused=summary.shards_skipped == summary.shards_total)


@register_stage("validate-reinforced")
def validate_reinforced(directory: str) -> StageOutcome:
    """Check every reinforced sample against config.json (fails the recipe if bad)."""
    from curate.reinforce.validate import validate_reinforced as validate

    report = validate(directory)
    samples = sum(shard.samples for shard in report.shards)
    return StageOutcome(report.to_dict(), f"{samples} samples in {len(report.shards)} shards: "
                                          f"{'valid' if report.ok else 'INVALID'}", ok=report.ok)


@register_stage("evaluate")
def evaluate(
    run: str, subset: str, eval: str,  # noqa: A002 (the option's name)
    samples_seen: int = 20_000, seed: list[int] | None = None, model: str = "fp-tiny-cnn",
    batch_size: int = 64, lr: float | None = None, workers: int | None = None,
    device: str = "auto", overwrite: bool = False, progress: bool = True,
    reinforced: str | None = None, clip_weight: float | None = None,
    distill_weight: float | None = None, teacher_logit_scale: list[float] | None = None,
    synthetic_captions: bool | None = None, decoded_cache: bool = False,
) -> StageOutcome:
    """Train a fresh small CLIP on the subset and report zero-shot top-1."""
    from curate.errors import UserError
    from curate.evaluate.stage import EvaluateConfig, evaluate_subset
    from curate.train.reinforced import DistillConfig

    options = {"clip_weight": clip_weight, "distill_weight": distill_weight,
               "teacher_logit_scales": tuple(teacher_logit_scale or ()) or None,
               "synthetic_captions": synthetic_captions}
    given = {k: v for k, v in options.items() if v is not None}
    if given and reinforced is None:
        raise UserError("clip_weight, distill_weight, teacher_logit_scale and "
                        "synthetic_captions need reinforced")
    evaluation = evaluate_subset(EvaluateConfig(
        run=run, subset=subset, eval_set=eval, samples_seen=samples_seen,
        seeds=tuple(seed or (0,)), model=model, batch_size=batch_size, lr=lr, workers=workers,
        device=device, overwrite=overwrite, progress=progress, reinforced=reinforced,
        distill=DistillConfig(**given) if reinforced is not None else None,
        decoded_cache=decoded_cache,
    ))
    top1: Any = evaluation.summary().get("zero_shot_top1", {}).get("mean")
    return StageOutcome(evaluation.to_dict(), f"'{subset}': zero-shot top-1 mean "
                                              f"{top1 if top1 is None else round(top1, 4)} over "
                                              f"{len(evaluation.runs)} seeds")


@register_stage("compare")
def compare(
    run: str, subset: list[str], eval: str,  # noqa: A002 (the option's name)
    budgets: list[int], seeds: int = 3, name: str | None = None, model: str = "fp-tiny-cnn",
    batch_size: int = 64, lr: float | None = None, workers: int | None = None,
    device: str = "auto", reinforced: str | None = None, decoded_cache: bool = False,
    overwrite: bool = False, progress: bool = True,
) -> StageOutcome:
    """Fitted scaling curves per subset over budgets and seeds (finished students reused)."""
    from curate.compare.stage import CompareConfig, compare_subsets

    result = compare_subsets(CompareConfig(
        run=run, subsets=tuple(subset), eval_set=eval, budgets=tuple(budgets), seeds=seeds,
        name=name or None, model=model, batch_size=batch_size, lr=lr, workers=workers,
        device=device, reinforced=reinforced or None, decoded_cache=decoded_cache,
        overwrite=overwrite, progress=progress,
    ))
    best = max(result.record["curves"], key=lambda c: c["predicted_at_10x"]["top1"])
    top1 = best["predicted_at_10x"]["top1"]
    return StageOutcome(result.to_dict(), f"'{result.record['name']}': {result.trained} trained, "
                                          f"{result.reused_runs} reused; best at 10x: "
                                          f"{best['label']} ({top1:.4f})", reused=result.reused)


@register_stage("report")
def report(run: str, out: str, subset: str | None = None, scorer: str | None = None,
           fraction: float = 0.3, grid_size: int = 8, overwrite: bool = False) -> StageOutcome:
    """Write one self-contained HTML report."""
    from curate.report import ReportConfig, build_report

    summary = build_report(ReportConfig(run=run, out=out, subset=subset, scorer=scorer,
                                        fraction=fraction, grid_size=grid_size,
                                        overwrite=overwrite))
    return StageOutcome(summary.to_dict(), f"{summary.images} images -> {out}")


@register_stage("cluster")
def cluster(
    run: str, name: str = "image_based", embeddings: str = "clip_l14",
    centroids: str | None = None, clusters: int | None = None, seed: int = 0,
    sample_ratio: float | None = None, reference: list[str] | None = None,
    target_clusters: str | None = None, fasttext_model: str | None = None,
    overwrite: bool = False,
) -> StageOutcome:
    """DataComp's image-based clustering table (centroid per sample, kept or not)."""
    from pathlib import Path

    from curate.cluster.stage import ClusterConfig, cluster_run

    summary = cluster_run(ClusterConfig(
        run=Path(run), name=name, embeddings=embeddings,
        centroids=Path(centroids) if centroids else None, clusters=clusters or None,
        seed=seed, sample_ratio=sample_ratio or None,
        reference=tuple(Path(p) for p in reference or () if p),
        target_clusters=Path(target_clusters) if target_clusters else None,
        fasttext_model=Path(fasttext_model) if fasttext_model else None, overwrite=overwrite,
    ))
    return StageOutcome(summary.to_dict(), summary.text(), reused=summary.reused)
