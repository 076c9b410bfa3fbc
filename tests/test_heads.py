"""Learned heads: train-head separates planted labels on held-out rows; the LAION aesthetic
layout and linear heads load from plain state dicts and score through `score --kind head`;
pickles, unknown layouts, wrong widths, bad labels and missing embeddings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from curate.cli import app
from curate.heads.model import load_head
from curate.heads.train import roc_auc, split_uids
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.embeddings import open_embeddings
from curate.io.pool_table import read_pool_part
from curate.io.workspace import RunPaths
from curate.tables import connect
from tests.generators.datacomp import write_datacomp_metadata

runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DataComp metadata, 2 files x 200 rows: b32 embeddings of width 16, l14 of width 768."""
    out = tmp_path_factory.mktemp("dc") / "meta"
    write_datacomp_metadata(out, num_files=2, rows_per_file=200, seed=3, embed_dim_b32=16)
    return out


@pytest.fixture()
def run(tmp_path: Path, metadata: Path) -> Path:
    target = tmp_path / "run"
    ingest_pool(IngestConfig(pool=metadata, run=target))
    return target


def _pool_embeddings(run: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Every pool row's uid and (float32) image embedding, in pool order."""
    uids = np.concatenate([read_pool_part(p, ["uid"]).column("uid").to_numpy(
        zero_copy_only=False) for p in RunPaths(run).pool_parts()])
    rows = np.concatenate([np.asarray(part.load(), dtype=np.float32)
                           for part in open_embeddings(run, name)])
    return uids, rows


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _planted(run: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uids and a projection on a planted direction of the clip_b32 embeddings (+ noise)."""
    uids, rows = _pool_embeddings(run, "clip_b32")
    rng = np.random.default_rng(seed)
    direction = _unit(rng.normal(size=(1, rows.shape[1])))[0]
    projection = _unit(rows) @ direction
    return uids, projection + rng.normal(0, 0.03 * projection.std(), len(projection))


def _scores(run: Path, name: str) -> dict[str, tuple[float | None, str]]:
    rows = connect(run).execute(f"SELECT uid, {name}_score, {name}_status FROM samples")
    return {uid: (score, status) for uid, score, status in rows.fetchall()}


def test_a_trained_head_separates_held_out_labels(run: Path, tmp_path: Path) -> None:
    uids, signal = _planted(run)
    labelled = np.arange(len(uids)) < 320  # 80 rows stay unlabelled
    names = np.where(signal > np.median(signal), "good", "bad")
    table = pa.table({"uid": [*uids[labelled], "f" * 32], "label": [*names[labelled], "bad"]})
    labels = tmp_path / "labels.csv"
    pacsv.write_csv(table, labels)
    head = tmp_path / "good.safetensors"
    result = cli("train-head", run, "--labels", labels, "--embeddings", "clip_b32", "--out",
                 head, "--epochs", 150, "--lr", 0.01, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["head"]["report"]
    assert report["matched_rows"] == 320 and report["unmatched_labels"] == 1
    assert report["holdout_rows"] == 64 and report["train_rows"] == 256
    held_auc = report["holdout"]["roc_auc"]
    assert held_auc > 0.9 and report["holdout"]["accuracy"] > 0.8

    # the report is the saved head's numbers on the held-out uids only
    loaded = load_head(head)
    assert loaded.info.positive == "good" and loaded.info.embeddings == "clip_b32"
    _, rows = _pool_embeddings(run, "clip_b32")
    targets = (names[labelled] == "good").astype(float)
    held = split_uids(uids[labelled], targets, 0.2, 0)
    mask = np.isin(uids[labelled], list(held))
    probabilities, usable = loaded.score(rows[labelled])
    assert usable.all() and mask.sum() == 64
    assert roc_auc(targets[mask], probabilities[mask]) == pytest.approx(held_auc, abs=1e-9)
    assert roc_auc(targets[~mask], probabilities[~mask]) != pytest.approx(held_auc, abs=1e-6)

    # the same request reuses the file; the head scores as a scorer and selects by threshold
    again = cli("train-head", run, "--labels", labels, "--embeddings", "clip_b32", "--out",
                head, "--epochs", 150, "--lr", 0.01, "--json")
    assert again.exit_code == 0 and json.loads(again.output)["reused"] is True
    scored = cli("score", run, "--kind", "head", "--head", head, "--name", "good", "--workers", 0)
    assert scored.exit_code == 0, scored.output
    got = _scores(run, "good")
    probabilities_all, _ = loaded.score(rows)
    assert len(got) == len(uids)
    assert all(status == "ok" for _, status in got.values())
    assert np.allclose([got[u][0] for u in uids], probabilities_all, atol=1e-6)
    selected = cli("select", run, "--out", "good", "--by", "good_score", "--threshold", 0.5)
    assert selected.exit_code == 0, selected.output
    kept = np.load(RunPaths(run).subset_dir("good") / "uids.npy", allow_pickle=False)
    assert len(kept) == int((probabilities_all >= 0.5).sum())
    positive = signal > np.median(signal)
    assert positive[probabilities_all >= 0.5].mean() > 0.85


def test_regression_labels_give_a_correlation(run: Path, tmp_path: Path) -> None:
    uids, signal = _planted(run, seed=1)
    labels = tmp_path / "values.parquet"
    pq.write_table(pa.table({"uid": uids, "value": 4.0 + 10.0 * signal}), labels)
    head = tmp_path / "value.safetensors"
    result = cli("train-head", run, "--labels", labels, "--embeddings", "clip_b32", "--out",
                 head, "--type", "mlp", "--hidden", "32", "--epochs", 150, "--lr", 0.01,
                 "--json")
    assert result.exit_code == 0, result.output
    held = json.loads(result.output)["head"]["report"]["holdout"]
    assert held["pearson"] > 0.9 and held["spearman"] > 0.9 and held["mse"] >= 0
    assert load_head(head).info.architecture == "mlp"


class LaionMLP(nn.Module):
    """improved-aesthetic-predictor's layout, restated: no activations, dropouts between."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def _plain_laion(state: dict[str, torch.Tensor], rows: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(_unit(rows.astype(np.float64))).float()
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x[:, 0].numpy()


def test_a_laion_state_dict_scores_through_score(run: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = LaionMLP().state_dict()
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7)
                                   for p in ("weight", "bias"))
    pth = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, pth)
    # a row without an embedding gets a status, not a score
    first = RunPaths(run).embeddings_dir("clip_l14") / "part-00000.image.npy"
    array = np.load(first, allow_pickle=False)
    array[5] = np.nan
    np.save(first, array)
    uids, rows = _pool_embeddings(run, "clip_l14")

    result = cli("score", run, "--kind", "head", "--head", pth, "--embeddings", "clip_l14",
                 "--name", "aesthetic", "--workers", 0)
    assert result.exit_code == 0, result.output
    got = _scores(run, "aesthetic")
    expected = _plain_laion(state, rows[np.arange(len(rows)) != 5])
    ok_uids = [u for i, u in enumerate(uids) if i != 5]
    assert got[uids[5]] == (None, "missing_embedding")
    assert np.allclose([got[u][0] for u in ok_uids], expected, atol=1e-5)
    record = json.loads((RunPaths(run).scores_dir("aesthetic") / "_scorer.json").read_text())
    assert record["head"]["architecture"] == "laion_aesthetic" and len(record["head_sha256"]) == 64

    # reruns resume; another head under the same name is refused
    assert json.loads(cli("score", run, "--kind", "head", "--head", pth, "--embeddings",
                          "clip_l14", "--name", "aesthetic", "--workers", 0, "--json"
                          ).output)["samples_scored"] == 0
    linear = nn.Linear(768, 1)
    linear_file = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    torch.save(linear.state_dict(), linear_file)
    refused = cli("score", run, "--kind", "head", "--head", linear_file, "--embeddings",
                  "clip_l14", "--name", "aesthetic", "--workers", 0)
    assert refused.exit_code == 2 and "--overwrite" in refused.output

    # a linear head from a saved file, and the LAION weights as safetensors, score too
    assert cli("score", run, "--kind", "head", "--head", linear_file, "--embeddings",
               "clip_l14", "--name", "linear", "--workers", 0).exit_code == 0
    plain = _unit(rows[np.arange(len(rows)) != 5]) @ linear.weight.detach().numpy()[0] \
        + float(linear.bias.detach())
    linear_got = _scores(run, "linear")
    assert np.allclose([linear_got[u][0] for u in ok_uids], plain, atol=1e-5)
    safetensors_file = tmp_path / "aesthetic.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors_file))
    loaded = load_head(safetensors_file)
    assert loaded.info.architecture == "laion_aesthetic"
    assert np.allclose(loaded.score(rows[:4])[0], _plain_laion(state, rows[:4]), atol=1e-5)

    # the head's scores are a score column like any other
    threshold = float(np.median(expected))
    selected = cli("select", run, "--out", "pretty", "--by", "aesthetic_score", "--threshold",
                   threshold)
    assert selected.exit_code == 0, selected.output
    kept = np.load(RunPaths(run).subset_dir("pretty") / "uids.npy", allow_pickle=False)
    assert len(kept) == int((expected >= threshold).sum())


def test_pickles_unknown_layouts_and_wrong_widths_are_refused(run: Path, tmp_path: Path
                                                               ) -> None:
    pickled = tmp_path / "module.pth"
    torch.save(LaionMLP(), pickled)
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(4, 768)}, unknown)
    narrow = tmp_path / "b32_linear.pth"
    torch.save(nn.Linear(512, 1).state_dict(), narrow)
    for head, words in ((pickled, "pickled"), (unknown, "unknown head layout"),
                        (narrow, "dimension 768")):
        result = cli("score", run, "--kind", "head", "--head", head, "--embeddings",
                     "clip_l14", "--name", "bad", "--workers", 0)
        assert result.exit_code == 2, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1
    saving = cli("score", run, "--kind", "head", "--head", narrow, "--embeddings", "clip_b32",
                 "--name", "bad", "--save-embeddings", "--workers", 0)
    assert saving.exit_code == 2 and "--save-embeddings" in saving.output
    assert not RunPaths(run).scores_dir("bad").exists()


def test_missing_embeddings_say_how_to_make_them(run_dir: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("uid,label\nabc,1\n")
    head = tmp_path / "lin.pth"
    torch.save(nn.Linear(8, 1).state_dict(), head)
    for args in (("train-head", run_dir, "--labels", labels, "--embeddings", "dfn", "--out",
                  tmp_path / "h.safetensors"),
                 ("score", run_dir, "--kind", "head", "--head", head, "--embeddings", "dfn",
                  "--name", "lin", "--workers", 0)):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "--save-embeddings" in result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("content", "words"), [
    ("uid,score\nabc,1\n", "exactly one of the columns"),
    ("name,label\nabc,1\n", "no 'uid' column"),
    ("uid,value\nabc,high\n", "must be numeric"),
    ("uid,label\nabc,1\ndef,0\n", "none of its 2 uids"),
    ("uid,label\nabc,1\nabc,0\n", "labelled more than once"),
    ("uid,label\nabc,a\ndef,b\nghi,c\n", "binary labels only"),
])
def test_bad_labels_are_one_line(run: Path, tmp_path: Path, content: str, words: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    result = cli("train-head", run, "--labels", labels, "--embeddings", "clip_b32", "--out",
                 tmp_path / "h.safetensors")
    assert result.exit_code == 2, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1


def test_the_heads_recipe(metadata: Path, tmp_path: Path) -> None:
    out = tmp_path / "heads"
    out.mkdir()
    torch.manual_seed(1)
    aesthetic = tmp_path / "aesthetic.pth"
    torch.save(LaionMLP().state_dict(), aesthetic)
    probe = tmp_path / "probe"
    ingest_pool(IngestConfig(pool=metadata, run=probe))
    uids, signal = _planted(probe)
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"uid": uids, "label": signal > np.median(signal)}), labels)
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "heads.toml"
    args = ["run", recipe, "--set", f"pool={metadata}", "--set", f"out={out}", "--set",
            f"labels={labels}", "--set", "label_embeddings=clip_b32", "--set",
            f"aesthetic_head={aesthetic}", "--set", "aesthetic_threshold=0.0"]
    result = cli(*args, "--no-progress")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.strip().splitlines()[:-1]] == ["ran"] * 6
    run = out / "run"
    kept = np.load(RunPaths(run).subset_dir("labels_positive") / "uids.npy", allow_pickle=False)
    assert 0.3 * len(uids) < len(kept) < 0.7 * len(uids)
    assert (RunPaths(run).subset_dir("aesthetic") / "uids.npy").is_file()
    again = cli(*args, "--no-progress")  # everything is reused
    assert again.exit_code == 0, again.output
    assert [line.split()[0] for line in again.output.strip().splitlines()[:-1]] == ["done"] * 6
