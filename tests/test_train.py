"""train-dfn: a tiny CLIP trained on a clean shapes pool learns, saves, reloads, resumes."""

from __future__ import annotations

import copy
import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import UserError
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.shards import add_tar_member
from curate.models import ModelSpec, load_model
from curate.select.subset import SelectConfig, select_subset
from curate.train import TrainConfig, load_eval_set, train_clip
from curate.train.checkpoint import checkpoint_path, load_checkpoint
from curate.train.loop import contrastive_step
from curate.train.metrics import class_embeddings, recall_at_1, zero_shot_top1
from curate.train.schedule import cosine_lr
from tests.generators.shapes import write_shapes_eval_set, write_shapes_pool

TINY = "fp-tiny-vit"
EXAMPLE_EVAL = Path(__file__).resolve().parent.parent / "data" / "example_eval"
runner = CliRunner()


@pytest.fixture(scope="module")
def shapes_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """320 clean pairs: one coloured shape per 32 px image, captioned "a red circle"."""
    return write_shapes_pool(tmp_path_factory.mktemp("shapes"), num_shards=2, samples_per_shard=160)


def _config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=data,
        out=out,
        model=TINY,
        steps=30,
        batch_size=32,
        lr=2e-3,
        warmup=3,
        holdout=40,
        workers=0,
        progress=False,
        checkpoint_every=1000,
        val_every=1000,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(shapes_pool: Path, tmp_path_factory: pytest.TempPathFactory):
    """fp-tiny-vit trained 30 steps, data decoded in a worker process, zero-shot on the example."""
    out = tmp_path_factory.mktemp("trained") / "dfn"
    return train_clip(_config(shapes_pool, out, workers=1, val_every=15, eval_set=EXAMPLE_EVAL))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_lowers_loss_and_beats_chance_recall(trained) -> None:
    record = json.loads((trained.out / "train.json").read_text())
    metrics = record["final_metrics"]
    assert metrics["loss_last"] < metrics["loss_first"] - 0.5
    recall = (metrics["image_to_text_r1"] + metrics["text_to_image_r1"]) / 2
    assert metrics["heldout_pairs"] == 40
    assert recall > 3 * metrics["recall_chance"]
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0 and metrics["eval_set"] == "shapes-eval"
    assert record["steps"] == 30 and record["samples_seen"] == 30 * 32
    assert record["data"] == {**record["data"], "pairs": 320, "train_pairs": 280, "skipped": {}}
    assert record["hyperparameters"]["lr"] == 2e-3
    assert [v["step"] for v in record["validations"]] == [15, 30]
    assert 0.0 <= record["throughput"]["data_wait_fraction"] < 1.0
    assert record["throughput"]["steps_per_second"] > 0
    with open(trained.out / "loss_curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert Image.open(trained.out / "loss_curve.png").format == "PNG"


def test_saved_model_reloads_and_scores_identically(trained, shapes_pool: Path) -> None:
    loaded = load_model(ModelSpec(str(trained.out)))
    saved, live = loaded.model.state_dict(), trained.model.state_dict()
    assert saved.keys() == live.keys()
    assert all(torch.equal(saved[k], live[k].cpu()) for k in saved)
    with tarfile.open(shapes_pool / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    keys = sorted({name.split(".")[0] for name in members})[:16]
    images = torch.stack(
        [loaded.preprocess(Image.open(io.BytesIO(members[f"{k}.jpg"]))) for k in keys]
    )
    tokens = loaded.tokenizer([members[f"{k}.txt"].decode() for k in keys])
    with torch.no_grad():
        scores = [
            (m.encode_image(images, normalize=True) * m.encode_text(tokens, normalize=True)).sum(-1)
            for m in (loaded.model, copy.deepcopy(trained.model).cpu())
        ]
    assert torch.allclose(scores[0], scores[1], atol=1e-5)


def test_score_command_loads_the_output_with_no_other_flags(
    trained, shapes_pool: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=shapes_pool, run=run))
    result = runner.invoke(
        app, ["score", str(run), "--model", str(trained.out), "--workers", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(sorted((run / "scores" / "dfn").glob("part-*.parquet"))[0])
    assert table.column("status").to_pylist() == ["ok"] * table.num_rows
    # Matching captions score above mismatched ones once the filter has learned.
    scores = np.asarray(table.column("dfn_score").to_pylist())
    assert np.isfinite(scores).all() and scores.mean() > 0.2


def test_interrupted_run_resumes_at_the_right_step(shapes_pool: Path, tmp_path: Path) -> None:
    settings = dict(steps=8, batch_size=16, checkpoint_every=3, holdout=16)
    reference = train_clip(_config(shapes_pool, tmp_path / "straight", **settings))

    def interrupt(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):  # decoded in a worker: crops must not depend on it
        train_clip(_config(shapes_pool, out, **settings, workers=1), on_step=interrupt)
    assert load_checkpoint(out)["step"] == 3
    assert not (out / "train.json").exists() and not (out / "open_clip_model.safetensors").exists()

    with pytest.raises(UserError, match="another configuration.*lr: checkpoint 0.002, now 0.001"):
        train_clip(_config(shapes_pool, out, **settings, lr=1e-3))

    resumed = train_clip(_config(shapes_pool, out, **settings))
    assert resumed.record["run"]["resumed_from_step"] == 3
    assert resumed.record["run"]["session_steps"] == 5
    assert resumed.record["steps"] == 8 and resumed.record["samples_seen"] == 8 * 16
    a, b = _state(reference.model), _state(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with open(reference.out / "loss_curve.csv") as f1, open(out / "loss_curve.csv") as f2:
        straight = [float(r["loss"]) for r in csv.DictReader(f1)]
        continued = [float(r["loss"]) for r in csv.DictReader(f2)]
    assert np.allclose(straight, continued, atol=1e-5)
    again = train_clip(_config(shapes_pool, out, **settings))  # finished: reused, not retrained
    assert again.reused and again.model is None and again.record == resumed.record


def test_gradient_accumulation_gives_the_full_batch_gradient() -> None:
    torch.manual_seed(0)
    model = load_model(ModelSpec(TINY, random_init=True)).model.train()
    images = torch.randn(16, 3, 32, 32)
    tokens = torch.randint(1, 1000, (16, 32))
    loss_fn = open_clip.ClipLoss()
    grads = []
    for micro in ([(images, tokens)], [(images[:8], tokens[:8]), (images[8:], tokens[8:])]):
        model.zero_grad()
        contrastive_step(model, loss_fn, micro, torch.device("cpu"), None, None)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_fine_tune_starts_from_the_init_weights(trained, shapes_pool: Path, tmp_path: Path) -> None:
    result = train_clip(
        _config(shapes_pool, tmp_path / "ft", init=str(trained.out), steps=2, lr=1e-9)
    )
    assert result.record["model"]["init"] == str(trained.out)
    start, end = _state(trained.model), _state(result.model)
    assert all(torch.allclose(start[k], end[k], atol=1e-5) for k in start)


def test_init_that_does_not_match_model_is_refused(
    tiny_checkpoint: Path, shapes_pool: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "train-dfn",
            str(shapes_pool),
            "--out",
            str(out),
            "--model",
            "fp-tiny-rn",
            "--init",
            f"{TINY}:{tiny_checkpoint}",
        ],
    )
    assert result.exit_code == 2
    assert "does not match --model fp-tiny-rn" in result.output
    assert not out.exists()
    result = runner.invoke(app, ["train-dfn", str(shapes_pool), "--out", str(out), "--init", TINY])
    assert result.exit_code == 2 and "names no weights" in result.output


def _write_pool_without_captions(root: Path, captioned: int, uncaptioned: int) -> Path:
    root.mkdir(parents=True)
    image = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image, format="JPEG")
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i in range(captioned + uncaptioned):
            add_tar_member(tar, f"{i:05d}.jpg", image.getvalue(), mtime=0)
            if i < captioned:
                add_tar_member(tar, f"{i:05d}.txt", b"a red square", mtime=0)
    return root


def test_shards_without_captions_are_counted_and_skipped(tmp_path: Path) -> None:
    pool = _write_pool_without_captions(tmp_path / "pool", captioned=12, uncaptioned=5)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "train-dfn",
            str(pool),
            "--out",
            str(out),
            "--model",
            TINY,
            "--steps",
            "1",
            "--batch-size",
            "8",
            "--holdout",
            "2",
            "--workers",
            "0",
            "--no-progress",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "train.json").read_text())
    assert record["data"]["skipped"] == {"missing_caption": 5}
    assert record["data"]["pairs"] == 12

    bare = _write_pool_without_captions(tmp_path / "bare", captioned=0, uncaptioned=4)
    result = runner.invoke(
        app, ["train-dfn", str(bare), "--out", str(tmp_path / "o2"), "--model", TINY]
    )
    assert result.exit_code == 2
    assert "no usable image-caption pairs (skipped: missing_caption 4)" in result.output
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "400"], "batch size 400 x accum 1 = 400 is larger than the 280"),
        (["--batch-size", "200", "--accum", "2"], "= 400 is larger than"),
        (["--steps", "3", "--epochs", "1"], "only one of --steps, --epochs"),
        (["--holdout", "320"], "leaves no training pairs"),
        (["--precision", "fp8"], "--precision must be one of"),
        (["--model", "ViT-B-33"], "unknown model 'ViT-B-33'"),
        (["--eval", "/nonexistent/eval"], "eval set /nonexistent/eval is not a directory"),
    ],
)
def test_bad_arguments_fail_cleanly(
    shapes_pool: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    base = ["train-dfn", str(shapes_pool), "--out", str(out), "--holdout", "40", "--no-progress"]
    if "--model" not in args:
        base += ["--model", TINY]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.startswith("error: ")
    assert not out.exists()


def test_bad_data_and_existing_output_fail_cleanly(tmp_path: Path, shapes_pool: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["train-dfn", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "holds no shards" in result.output
    result = runner.invoke(app, ["train-dfn", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in result.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(
            app, ["train-dfn", str(shapes_pool), "--out", str(taken), "--model", TINY, *extra]
        )
        assert result.exit_code == 2 and str(taken) in result.output
    assert (taken / "notes.txt").read_text() == "mine"


def test_trains_on_a_run_subset(shapes_pool: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=shapes_pool, run=run))
    select_subset(SelectConfig(run=run, name="red", where="text LIKE '%red%'"))
    kept = pq.read_table(run / "subsets" / "red" / "manifest.parquet").num_rows
    with pytest.raises(UserError, match="is a run; name the subset"):
        train_clip(_config(run, tmp_path / "o1"))
    result = train_clip(
        _config(run, tmp_path / "o2", subset="red", steps=2, batch_size=8, holdout=4)
    )
    data = result.record["data"]
    assert data["kind"] == "subset" and data["pairs"] == kept and data["skipped"] == {}
    same = train_clip(
        _config(run / "subsets" / "red", tmp_path / "o3", steps=2, batch_size=8, holdout=4)
    )
    assert same.record["data"]["pairs"] == kept


def test_eval_set_loads_and_bad_eval_sets_name_the_file(tmp_path: Path) -> None:
    example = load_eval_set(EXAMPLE_EVAL)
    assert len(example.classnames) == 24 and len(example) == 48
    assert all(0 <= label < 24 for label in example.labels)

    def broken(edit) -> Path:
        root = write_shapes_eval_set(tmp_path / f"e{len(list(tmp_path.iterdir()))}", per_class=1)
        edit(root)
        return root

    def set_json(payload):
        return lambda r: (r / "eval.json").write_text(json.dumps(payload))

    cases = [
        (set_json({"classnames": ["a"]}), "'templates' must be a non-empty list"),
        (set_json({"classnames": ["a"], "templates": ["a photo"]}), "has no '{}'"),
        (lambda r: (r / "eval.json").write_text("{not json"), "eval.json: not valid JSON"),
        (lambda r: (r / "labels.csv").write_text("file,class\n"), "header must be 'image,label'"),
        (
            lambda r: (r / "labels.csv").write_text("image,label\nimages/00000.jpg,99\n"),
            "label 99 is out of range",
        ),
        (lambda r: (r / "images" / "00000.jpg").unlink(), "00000.jpg is missing"),
        (lambda r: (r / "labels.csv").unlink(), "has no labels.csv"),
    ]
    for edit, message in cases:
        with pytest.raises(
            UserError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")
        ):
            load_eval_set(broken(edit))


def test_metrics_and_schedule() -> None:
    features = torch.eye(4)
    assert recall_at_1(features, features) == {"image_to_text_r1": 1.0, "text_to_image_r1": 1.0}
    shifted = recall_at_1(features, features.roll(1, dims=0))
    assert shifted == {"image_to_text_r1": 0.0, "text_to_image_r1": 0.0}
    text = torch.tensor([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])  # 2 classes x 2 templates
    classes = class_embeddings(text, n_classes=2, n_templates=2)
    images = torch.tensor([[1.0, 0.1], [0.2, 1.0], [0.9, 0.0]])
    assert zero_shot_top1(images, classes, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert cosine_lr(0, 1.0, warmup=4, total=20) == 0.25
    assert cosine_lr(3, 1.0, warmup=4, total=20) == 1.0
    assert cosine_lr(12, 1.0, warmup=4, total=20) == pytest.approx(0.5)
    assert cosine_lr(20, 1.0, warmup=4, total=20) == pytest.approx(0.0)
    assert checkpoint_path(Path("d")) == Path("d/checkpoints/last.pt")


def test_run_length_from_steps_epochs_or_samples(tmp_path: Path) -> None:
    from curate.train.loop import _resolve

    def resolve(**kw) -> dict:
        return _resolve(TrainConfig(data=tmp_path, out=tmp_path / "o", batch_size=32, **kw), 320)

    assert resolve(epochs=2, holdout=40)["total_steps"] == 2 * (280 // 32)
    assert resolve(holdout=40)["total_steps"] == 280 // 32  # one epoch by default
    assert resolve(samples=100, accum=2)["total_steps"] == 1  # 64 pairs per step
    defaults = resolve(steps=50)
    assert (defaults["holdout"], defaults["warmup"], defaults["lr"]) == (32, 5, 5e-4)
    assert resolve(steps=50, init="x:y")["lr"] == 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's error")
def test_cuda_without_a_gpu_is_a_clear_error(shapes_pool: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train-dfn",
            str(shapes_pool),
            "--out",
            str(tmp_path / "o"),
            "--model",
            TINY,
            "--device",
            "cuda",
            "--no-progress",
        ],
    )
    assert result.exit_code == 2 and "no CUDA device is visible" in result.output
    assert not (tmp_path / "o").exists()


def test_quick_gelu_of_the_init_is_recorded_in_the_output(
    shapes_pool: Path, tmp_path: Path
) -> None:
    from curate.models.directory import save_model_directory

    init = load_model(ModelSpec(TINY, random_init=True, quick_gelu=True))
    config = {**open_clip.get_model_config(TINY), "quick_gelu": True}
    save_model_directory(init.model, config, tmp_path / "init")
    result = train_clip(
        _config(shapes_pool, tmp_path / "ft", init=str(tmp_path / "init"), steps=1, batch_size=8)
    )
    saved = json.loads((result.out / "open_clip_config.json").read_text())
    assert saved["model_cfg"]["quick_gelu"] is True and result.record["model"]["quick_gelu"]
    assert load_model(ModelSpec(str(result.out))).quick_gelu is True
