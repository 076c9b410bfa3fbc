"""DataComp's image-based clustering filter against an independent re-statement of DataComp's
algorithm (mlfoundations/datacomp 4a8df19, baselines/apply_filter.py) on generated metadata."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import faiss
import fasttext
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from py3langid.langid import classify
from typer.testing import CliRunner

from curate.cli import app
from curate.cluster.caption import fasttext_token_count
from curate.cluster.datacomp_files import load_matrix
from curate.io.uids import save_uid_file
from curate.io.workspace import RunPaths
from tests.generators.datacomp import write_datacomp_metadata

runner = CliRunner()
DIM = 12
PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("datacomp") / "metadata"
    write_datacomp_metadata(folder, num_files=3, rows_per_file=40, seed=3, embed_dim_b32=8,
                            embed_dim_l14=DIM)
    return folder


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, metadata: Path) -> Path:
    run = tmp_path_factory.mktemp("cluster") / "run"
    assert cli("ingest", str(metadata), "--run", str(run)).exit_code == 0
    return run


@pytest.fixture()
def run(tmp_path: Path, ingested: Path) -> Path:
    """A private copy of the ingested run (the tests write tables into it)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ingested, copy)
    return copy


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Centroids [6, DIM] and reference embeddings near centroids 0, 2 and 4 (targets)."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    centroids = rng.normal(size=(6, DIM)).astype(np.float32)
    reference = (centroids[[0, 2, 4, 0]] + 0.01 * rng.normal(size=(4, DIM))).astype(np.float32)
    np.save(folder / "centroids.npy", centroids)
    np.save(folder / "reference.npy", reference)
    torch.save(centroids, folder / "centroids.pt", pickle_protocol=4)  # DataComp's own call
    torch.save({"image_features": torch.from_numpy(reference)}, folder / "in1k.pt")
    return {"centroids": folder / "centroids.npy", "reference": folder / "reference.npy",
            "centroids_pt": folder / "centroids.pt", "reference_pt": folder / "in1k.pt"}


def cli(*args: str) -> object:
    return runner.invoke(app, list(args))


def datacomp_caption_mask(df: pd.DataFrame) -> np.ndarray:
    """DataComp's caption_filter with py3langid standing in for lid.176 (the run's default)."""
    words = df.text.apply(lambda x: len(fasttext.tokenize(x)))
    chars = df.text.apply(len)
    english = np.array([classify(x)[0] == "en" for x in df.text.values])
    return (english & (words > 1) & (chars > 5)).to_numpy()


def datacomp_image_based(folder: Path, centroids: np.ndarray, reference: np.ndarray,
                         scores: float | None = None) -> np.ndarray:
    """DataComp's load_uids_with_image_filter re-stated in NumPy: target ids = unique argmax of
    reference @ centroids.T; per metadata file the caption mask, argmax of the float32 L/14
    image embeddings against the centroids, keep uids whose centroid is a target."""
    targets = np.unique(np.argmax(reference @ centroids.T, axis=1))
    kept = []
    for parquet in sorted(folder.glob("*.parquet")):
        df = pd.read_parquet(parquet, columns=["uid", "text", "clip_l14_similarity_score"])
        embedding = np.load(parquet.with_suffix(".npz"))["l14_img"].astype(np.float32)
        if scores is not None:
            index = (df.clip_l14_similarity_score >= scores).to_numpy()
            df, embedding = df[index], embedding[index]
        mask = datacomp_caption_mask(df)
        labels = np.argmax(embedding[mask] @ centroids.T, axis=1)
        kept += [u for u, label in zip(df.uid[mask], labels, strict=True) if label in targets]
    uids = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in kept], np.dtype("u8,u8"))
    uids.sort()
    return uids


def test_token_count_is_fasttexts() -> None:
    for text in ["a b", "one", "a\nb", "\n", "x\t\ty\r z", "naïve\u00a0café", "a\x00b", "", " a "]:
        assert fasttext_token_count(text) == len(fasttext.tokenize(text)), repr(text)


def test_image_based_selects_datacomps_uids_byte_for_byte(
        run: Path, metadata: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    result = cli("cluster", str(run), "--centroids", str(inputs["centroids"]), "--reference",
                 str(inputs["reference"]), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["targets"] == 3 and summary["clusters"] == 6
    assert cli("select", str(run), "--out", "ib", "--filter", "image_based").exit_code == 0
    expected = datacomp_image_based(metadata, np.load(inputs["centroids"]),
                                    np.load(inputs["reference"]))
    assert 0 < len(expected) < 120 and summary["kept"] == len(expected)
    ours = (RunPaths(run).subset_dir("ib") / "uids.npy").read_bytes()
    save_uid_file(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "datacomp.npy", expected)  # apply_filter's own np.save of sorted uids
    assert ours == (tmp_path / "expected.npy").read_bytes()
    assert ours == (tmp_path / "datacomp.npy").read_bytes()
    # every pool row has one row with a status, a cluster and a reason when dropped
    table = pq.read_table(RunPaths(run).scores_dir("image_based")).to_pandas()
    assert len(table) == 120 and set(table.status) == {"ok"}
    assert table.image_based_cluster.between(0, 5).all()
    assert (table.image_based_reason.isna() == table.image_based_keep).all()

    # image_based_intersect_clip_score: top 30% of L/14 scores over the pool, then image_based
    assert cli("select", str(run), "--out", "both", "--by", "clip_l14_similarity_score",
               "--fraction", "0.3", "--filter", "image_based", "--uids-only").exit_code == 0
    scores = pd.concat(pd.read_parquet(p, columns=["clip_l14_similarity_score"])
                       for p in sorted(metadata.glob("*.parquet")))
    values = scores.clip_l14_similarity_score.values
    threshold = -np.sort(-values)[int(len(values) * 0.3)]
    both = datacomp_image_based(metadata, np.load(inputs["centroids"]),
                                np.load(inputs["reference"]), scores=threshold)
    save_uid_file(tmp_path / "both.npy", both)
    assert (RunPaths(run).subset_dir("both") / "uids.npy").read_bytes() == \
        (tmp_path / "both.npy").read_bytes()


def test_datacomps_pt_files_give_the_same_table(run: Path, inputs: dict[str, Path]) -> None:
    assert np.array_equal(load_matrix(inputs["centroids_pt"], "centroids"),
                          np.load(inputs["centroids"]))
    for name, centroids, reference in (("npy", "centroids", "reference"),
                                       ("pt", "centroids_pt", "reference_pt")):
        result = cli("cluster", str(run), "--name", name, "--centroids", str(inputs[centroids]),
                     "--reference", str(inputs[reference]))
        assert result.exit_code == 0, result.output
    npy = pq.read_table(RunPaths(run).scores_dir("npy")).column("npy_keep")
    pt = pq.read_table(RunPaths(run).scores_dir("pt")).column("pt_keep")
    assert npy.to_pylist() == pt.to_pylist()


def test_computed_centroids_are_datacomps_kmeans_deterministic_and_reused(
        run: Path, metadata: Path, inputs: dict[str, Path]) -> None:
    args = ("--clusters", "4", "--seed", "1", "--reference", str(inputs["reference"]), "--json")
    first = json.loads(cli("cluster", str(run), *args).output)
    assert first["centroids"] == "computed" and not first["reused"]
    centroids = np.load(RunPaths(run).root / "clusters" / "image_based" / "centroids.npy")
    # DataComp's train_kmeans on the caption-filtered rows, in pool order
    rows = []
    for parquet in sorted(metadata.glob("*.parquet")):
        df = pd.read_parquet(parquet, columns=["text"])
        embedding = np.load(parquet.with_suffix(".npz"))["l14_img"].astype(np.float32)
        rows.append(embedding[datacomp_caption_mask(df)])
    clustering = faiss.Clustering(DIM, 4)
    clustering.niter, clustering.seed, clustering.max_points_per_centroid = 20, 1, 10_000_000
    clustering.train(np.concatenate(rows), faiss.IndexFlatL2(DIM))
    expected = faiss.vector_float_to_array(clustering.centroids).reshape(4, DIM)
    assert np.array_equal(centroids, expected)

    again = json.loads(cli("cluster", str(run), *args).output)
    assert again["reused"] and again["kept"] == first["kept"]
    # another target set: the table is rebuilt, the centroids reused
    other = json.loads(cli("cluster", str(run), "--clusters", "4", "--seed", "1",
                           "--target-clusters", str(_ids(run, [1])), "--overwrite",
                           "--json").output)
    assert other["centroids"] == "reused" and other["targets"] == 1
    # another seed in another table: computed again, same seed gives the same centroids
    cli("cluster", str(run), "--name", "seed1", *args)
    assert np.array_equal(np.load(run / "clusters" / "seed1" / "centroids.npy"), centroids)


def _ids(run: Path, ids: list[int]) -> Path:
    path = run.parent / "targets.npy"
    np.save(path, np.array(ids, np.int64))
    return path


def _one_line_error(result: object, *needles: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = result.output.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output  # type: ignore
    for needle in needles:
        assert needle in lines[0], lines[0]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_bad_centroid_files_are_refused_in_one_line(
        run: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    wrong_dim = tmp_path / "wrong.npy"
    np.save(wrong_dim, np.ones((4, DIM + 1), np.float32))
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    text = tmp_path / "centroids.txt"
    text.write_text("1 2 3\n")
    hostile = tmp_path / "hostile.pt"
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("hostile/data.pkl", pickle.dumps(_Payload(marker), protocol=4))
    reference = str(inputs["reference"])
    for path, needle in ((wrong_dim, "dimension 13"), (objects, "not a plain"),
                         (text, "not a centroids file"), (hostile, "not a centroids file")):
        _one_line_error(cli("cluster", str(run), "--centroids", str(path), "--reference",
                            reference), str(path), needle)
    assert not marker.exists()
    _one_line_error(cli("cluster", str(run), "--centroids", str(inputs["centroids"]),
                        "--target-clusters", str(_ids(run, [0, 9]))), "[0, 6)")
    _one_line_error(cli("cluster", str(run), "--reference", reference), "--clusters K")


def test_missing_embeddings_and_missing_table_say_how_to_make_them(
        run_dir: Path, inputs: dict[str, Path]) -> None:
    _one_line_error(cli("cluster", str(run_dir), "--centroids", str(inputs["centroids"]),
                        "--reference", str(inputs["reference"])),
                    "clip_l14", "--save-embeddings")
    _one_line_error(cli("select", str(run_dir), "--out", "x", "--filter", "image_based"),
                    "filter-pool cluster")


def test_the_recipe_runs_both_baselines(metadata: Path, inputs: dict[str, Path],
                                        tmp_path: Path) -> None:
    result = cli("run", str(PIPELINES / "datacomp_image_based.toml"), "--no-progress",
                 "--set", f"pool={metadata}", "--set", f"out={tmp_path / 'out'}",
                 "--set", f"centroids={inputs['centroids_pt']}",
                 "--set", f"reference={inputs['reference']}")
    assert result.exit_code == 0, result.output
    subsets = RunPaths(tmp_path / "out" / "run").subset_dir
    expected = datacomp_image_based(metadata, np.load(inputs["centroids"]),
                                    np.load(inputs["reference"]))
    save_uid_file(tmp_path / "expected.npy", expected)
    assert (subsets("image_based") / "uids.npy").read_bytes() == \
        (tmp_path / "expected.npy").read_bytes()
    kept_both = len(np.load(subsets("image_based_intersect_clip_score") / "uids.npy"))
    assert 0 < kept_both <= len(expected)
