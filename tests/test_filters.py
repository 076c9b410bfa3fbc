"""Filters: DataComp boundaries, SQL == Python, fraction == DataComp's rule, parsing, language
(py3langid and a tiny trained fastText model), text_match, evaluation over a samples view."""

from __future__ import annotations

import json
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from curate.errors import UserError
from curate.filters import (
    METADATA_KEY,
    FilterSpec,
    evaluate_filters,
    get_filter,
    list_filters,
    parse_filter_spec,
)
from curate.filters.sqltext import WHITESPACE
from curate.io.schema import POOL_SCHEMA

SCORE_FIELDS = [("dfn_score", pa.float32()), ("dfn_status", pa.string()),
                ("dfn_error", pa.string())]
VOCAB = ["a", "dog", "photo", "Straße", "é", "e\u0301", "👍🏽", "x", "tench", "goldfish"]
SIDES = [None, 0, 1, 66, 67, 199, 200, 201, 600, 601, 1000]


def samples_table(rows: dict[str, list]) -> pa.Table:
    """A samples table: the pool columns and a dfn scorer's; unspecified columns are null."""
    n = len(next(iter(rows.values())))
    schema = pa.schema(list(POOL_SCHEMA) + SCORE_FIELDS)
    columns = {f.name: rows.get(f.name, [None] * n) for f in schema}
    if "uid" not in rows:
        columns["uid"] = [f"{i:032x}" for i in range(n)]
    return pa.table(columns, schema=schema)


def connect(table: pa.Table) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("_arrow_samples", table)
    con.execute("CREATE TABLE samples AS SELECT * FROM _arrow_samples")
    return con


def generated(n: int = 3000, seed: int = 0) -> pa.Table:
    """Captions with every kind of whitespace, sizes at the boundaries, scores with ties."""
    rng = np.random.default_rng(seed)
    texts: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            texts.append(None)
            continue
        words = rng.choice(VOCAB, size=rng.integers(0, 6)).tolist()
        seps = rng.choice(list(WHITESPACE) + [" "] * 20, size=len(words) + 1).tolist()
        texts.append(seps[0] * int(rng.integers(0, 2)) + "".join(
            w + s for w, s in zip(words, seps[1:], strict=True)))
    def sides() -> list[int | None]:
        return [SIDES[i] for i in rng.integers(0, len(SIDES), size=n)]
    scores = np.round(rng.normal(0.25, 0.05, size=n), 2).astype(np.float32).tolist()
    for i in rng.choice(n, size=n // 10, replace=False):
        scores[i] = None
    return samples_table({"text": texts, "width": sides(), "height": sides(),
                          "original_width": sides(), "original_height": sides(),
                          "dfn_score": scores})


def by_sql(con: duckdb.DuckDBPyConnection, spec: FilterSpec) -> np.ndarray:
    sql = spec.resolve(con).sql
    assert sql is not None
    return np.array([r[0] for r in con.execute(f"SELECT {sql} FROM samples").fetchall()])


def by_python(con: duckdb.DuckDBPyConnection, table: pa.Table, spec: FilterSpec) -> np.ndarray:
    return spec.resolve(con).mask(table)


def both(rows: dict[str, list], spec: FilterSpec) -> list[bool]:
    """The filter over ``rows`` in SQL and in Python; they must agree."""
    table = samples_table(rows)
    con = connect(table)
    python = by_python(con, table, spec)
    if spec.resolve(con).sql is not None:
        assert by_sql(con, spec).tolist() == python.tolist()
    return python.tolist()


def test_whitespace_is_what_str_split_splits_on() -> None:
    spaces = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert spaces == WHITESPACE


def test_caption_length_datacomp_boundaries() -> None:
    texts = ["two words", "one two three", "a b c", "a b cd", None, "", "   ",
             " a\u3000b\u00a0cd ", "a\u200bbb cc", "e\u0301 b c"]
    assert both({"text": texts}, FilterSpec("caption_length")) == [
        False, True, False, True, False, False, False, True, False, True]
    assert both({"text": ["ab", "", None]}, FilterSpec("caption_length", {
        "min_words": 0, "min_chars": 0})) == [True, True, False]


def test_image_size_boundaries_and_fallback() -> None:
    rows = {"original_width": [199, 200, 1000, None, None, 500, None],
            "original_height": [500, 200, 199, None, 300, None, None],
            "width": [None, None, None, 250, 100, 300, None],
            "height": [None, None, None, 200, 400, 300, None]}
    assert both(rows, FilterSpec("image_size")) == [False, True, False, True, False, True, False]


def test_aspect_ratio_three_exactly_is_kept() -> None:
    rows = {"original_width": [600, 601, 200, 200, 0, 0, None, 300],
            "original_height": [200, 200, 600, 601, 5, 0, None, 300]}
    assert both(rows, FilterSpec("aspect_ratio")) == [
        True, False, True, False, False, False, False, True]
    assert both({"original_width": [400], "original_height": [200]},
                FilterSpec("aspect_ratio", {"max_ratio": 1.5})) == [False]


SQL_SPECS = [
    "caption_length", "caption_length:min_words=0", "caption_length:min_words=1,min_chars=0",
    "caption_length:min_words=2", "caption_length:min_words=5,min_chars=12", "image_size",
    "image_size:min_side=0", "image_size:min_side=67", "aspect_ratio", "aspect_ratio:max_ratio=1",
    "aspect_ratio:max_ratio=2.5", "threshold:column=dfn,min=0.25", "threshold:column=dfn_score,"
    "min=-inf", "fraction:column=dfn,fraction=0.3",
]


@pytest.mark.parametrize("text", SQL_SPECS)
def test_sql_and_python_agree_on_generated_data(text: str) -> None:
    table = generated()
    con = connect(table)
    spec = parse_filter_spec(text)
    python = by_python(con, table, spec)
    assert by_sql(con, spec).tolist() == python.tolist()
    assert 0 < python.sum() < len(python) or text.endswith("min_side=0")


def datacomp_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """DataComp's get_threshold over the non-null scores, then keep score >= threshold."""
    values = scores[~np.isnan(scores)]
    n = int(len(values) * fraction)
    threshold = -np.sort(-values)[min(n, len(values) - 1)]
    return scores >= threshold


@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_fraction_is_datacomp_rule_with_ties(fraction: float) -> None:
    table = generated(seed=1)
    con = connect(table)
    scores = table.column("dfn_score").to_numpy(zero_copy_only=False).astype(np.float64)
    expected = datacomp_fraction(scores, fraction)
    spec = FilterSpec("fraction", {"column": "dfn_score", "fraction": fraction})
    result = evaluate_filters(con, [spec])
    assert result.column(spec.label).to_pylist() == expected.tolist()
    assert by_python(con, table, spec).tolist() == expected.tolist()
    if fraction < 1:  # ties are kept, so at least int(N * F) samples survive
        assert expected.sum() >= int((~np.isnan(scores)).sum() * fraction)
    record = json.loads(result.schema.metadata[METADATA_KEY])[0]
    assert record["resolved"]["count"] == int((~np.isnan(scores)).sum())


def test_fraction_with_nan_and_no_scores() -> None:
    con = connect(samples_table({"dfn_score": [0.5, float("nan"), None, 0.2, 0.5]}))
    spec = FilterSpec("fraction", {"column": "dfn", "fraction": 0.5})
    assert evaluate_filters(con, [spec]).column(1).to_pylist() == [True, False, False, False,
                                                                   True]
    empty = connect(samples_table({"dfn_score": [None, None]}))
    assert evaluate_filters(empty, [spec]).column(1).to_pylist() == [False, False]


def test_threshold_keeps_at_least_min_and_drops_null_and_nan() -> None:
    rows = {"dfn_score": [0.28, 0.2799, None, float("nan"), 1.0]}
    assert both(rows, FilterSpec("threshold", {"column": "dfn", "min": 0.28})) == [
        True, False, False, False, True]


def test_unknown_or_bad_column_names_the_score_columns() -> None:
    con = connect(samples_table({"dfn_score": [0.1]}))
    with pytest.raises(UserError, match="unknown column 'clip'; score columns: dfn_score"):
        FilterSpec("threshold", {"column": "clip", "min": 0.1}).resolve(con)
    with pytest.raises(UserError, match="'text' is VARCHAR"):
        FilterSpec("fraction", {"column": "text", "fraction": 0.1}).resolve(con)


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected NAME"),
    (":min_words=1", "expected NAME"),
    ("nosuch", "unknown filter 'nosuch'; known filters: aspect_ratio"),
    ("caption_lenght", "did you mean caption_length"),
    ("caption_length:", "'' is not key=value"),
    ("caption_length:min_words", "'min_words' is not key=value"),
    ("caption_length:min_words=abc", "min_words must be an integer, got 'abc'"),
    ("caption_length:min_words=-1", "min_words must be between 0 and 100"),
    ("caption_length:min_word=3", "no parameter 'min_word'; parameters: min_words, min_chars"),
    ("caption_length:min_words=1,min_words=2", "min_words given twice"),
    ("aspect_ratio:max_ratio=0.5", "max_ratio must be >= 1.0"),
    ("aspect_ratio:max_ratio=nan", "max_ratio must be >= 1.0"),
    ("fraction:column=dfn", "fraction needs fraction"),
    ("fraction:column=dfn,fraction=0", r"must be in \(0, 1\]"),
    ("fraction:column=dfn,fraction=1.5", r"must be in \(0, 1\]"),
    ("threshold:min=0.2", "threshold needs column"),
    ("text_match:classes=/no/such/file.txt", "classes must name an existing file"),
    ("language:fasttext_model=/no/such.bin", "fasttext_model must name an existing file"),
])
def test_parse_errors_are_one_line_user_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        parse_filter_spec(text)
    assert "\n" not in str(info.value)


def test_spec_labels_values_and_registry() -> None:
    spec = parse_filter_spec(" caption_length : min_chars=6, min_words=3 ")
    assert spec.label == "caption_length(min_words=3, min_chars=6)"
    assert spec == FilterSpec("caption_length", {"min_words": 3, "min_chars": "6"})
    assert len({spec, FilterSpec("caption_length", {"min_chars": 6, "min_words": 3})}) == 1
    assert FilterSpec("caption_length").label == "caption_length"
    assert FilterSpec("aspect_ratio", {"max_ratio": 2}).label == "aspect_ratio(max_ratio=2.0)"
    assert FilterSpec("image_size").values == {"min_side": 200}
    names = [f.name for f in list_filters()]
    assert names == sorted(names) and {"basic", "caption_length", "image_size", "aspect_ratio",
                                       "language", "text_match", "threshold",
                                       "fraction"} <= set(names)
    param = get_filter("caption_length").params[0]
    assert (param.name, param.type_name, param.default) == ("min_words", "int", 3)
    assert all(f.description for f in list_filters())


CAPTIONS = {
    "en": ["A golden retriever puppy playing in the snow",
           "Fresh vegetables for sale at the farmers market"],
    "de": ["Ein kleiner Hund spielt im Schnee vor dem Haus",
           "Frisches Gemüse auf dem Wochenmarkt in der Stadt"],
    "fr": ["Un petit chien joue dans la neige devant la maison",
           "Des légumes frais au marché du village"],
    "es": ["Un perro pequeño juega en la nieve frente a la casa",
           "Verduras frescas en el mercado del pueblo"],
}


@pytest.mark.parametrize("lang", sorted(CAPTIONS))
def test_language_with_the_packaged_model(lang: str) -> None:
    texts = [t for ts in CAPTIONS.values() for t in ts] + [None]
    con = connect(samples_table({"text": texts}))
    spec = FilterSpec("language", {"lang": lang})
    kept = evaluate_filters(con, [spec]).column(spec.label)
    assert [t for t, k in zip(texts, kept.to_pylist(), strict=True) if k] == CAPTIONS[lang]


def test_language_unknown_code() -> None:
    with pytest.raises(UserError, match="no language 'xx'"):
        FilterSpec("language", {"lang": "xx"}).resolve()


@pytest.fixture(scope="module")
def fasttext_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny supervised fastText language-ID model trained here (no download)."""
    fasttext = pytest.importorskip("fasttext")
    words = {"en": ["the", "cat", "sat", "on", "a", "mat", "with", "my", "dog", "in"],
             "de": ["der", "die", "das", "und", "mit", "einem", "hund", "im", "haus", "katze"],
             "fr": ["le", "la", "les", "et", "avec", "une", "chien", "dans", "maison", "chat"]}
    rng = np.random.default_rng(0)
    directory = tmp_path_factory.mktemp("fasttext")
    lines = [f"__label__{lang} " + " ".join(rng.choice(words[lang], size=6))
             for _ in range(20) for lang in words]
    (directory / "train.txt").write_text("\n".join(lines) + "\n")
    model = fasttext.train_supervised(str(directory / "train.txt"), epoch=50, lr=0.5, dim=8,
                                      minCount=1, bucket=1000, minn=0, maxn=0, thread=1,
                                      verbose=0)
    model.save_model(str(directory / "lid.bin"))
    return str(directory / "lid.bin")


def test_language_with_a_fasttext_model(fasttext_model: str) -> None:
    texts = ["the dog sat on a mat", "der hund und die katze", "le chien et la maison",
             "the cat\nwith my dog", None]
    con = connect(samples_table({"text": texts}))
    for lang, expected in [("en", [True, False, False, True, False]),
                           ("de", [False, True, False, False, False]),
                           ("fr", [False, False, True, False, False])]:
        spec = FilterSpec("language", {"lang": lang, "fasttext_model": fasttext_model})
        assert evaluate_filters(con, [spec]).column(spec.label).to_pylist() == expected
    with pytest.raises(UserError, match="no language 'es'"):
        FilterSpec("language", {"lang": "es", "fasttext_model": fasttext_model}).resolve()


def test_text_match_whole_words(tmp_path) -> None:
    texts = ["a goldfish in a bowl", "goldfishes", "GOLDFISH!", "the great   white\tshark",
             "greatwhite shark", "tench.", "my_tench", "a go-kart race", "Tenchs", None,
             "(goldfish)", "2goldfish"]
    assert both({"text": texts}, FilterSpec("text_match")) == [
        True, False, True, True, False, True, False, True, False, False, True, False]
    classes = tmp_path / "classes.txt"
    classes.write_text("red car\n\ncar\nCafé\n")
    assert both({"text": ["a RED  car", "cars", "café au lait", "cafés", "caR"]},
                FilterSpec("text_match", {"classes": str(classes)})) == [
        True, False, True, False, True]


def test_basic_is_datacomp_and_names_the_first_failing_rule() -> None:
    english = "A golden retriever puppy playing in the snow"
    rows = {"text": [english, "two words", CAPTIONS["de"][0], english, english, None],
            "original_width": [300, 100, 300, 300, 900, 300],
            "original_height": [300, 300, 300, 150, 200, 300]}
    con = connect(samples_table(rows))
    result = evaluate_filters(con, [FilterSpec("basic")], reasons=True)
    assert result.column("basic").to_pylist() == [True, False, False, False, False, False]
    assert result.column("reason").to_pylist() == [
        None, "basic/caption_length", "basic/language", "basic/image_size", "basic/aspect_ratio",
        "basic/caption_length"]


def test_basic_min_side_lowers_only_the_image_size_rule() -> None:
    english = "A golden retriever puppy playing in the snow"
    rows = {"text": [english, english, "two words"], "original_width": [120, 60, 120],
            "original_height": [90, 90, 90]}
    con = connect(samples_table(rows))
    result = evaluate_filters(con, [parse_filter_spec("basic:min_side=80")], reasons=True)
    assert result.column("basic(min_side=80)").to_pylist() == [True, False, False]
    assert result.column("reason").to_pylist() == [
        None, "basic(min_side=80)/image_size(min_side=80)", "basic(min_side=80)/caption_length"]


def test_basic_with_fasttext(fasttext_model: str) -> None:
    rows = {"text": ["the cat sat on a mat", "der hund mit einem haus"],
            "original_width": [300, 300], "original_height": [300, 300]}
    con = connect(samples_table(rows))
    spec = FilterSpec("basic", {"fasttext_model": fasttext_model})
    assert evaluate_filters(con, [spec]).column(spec.label).to_pylist() == [True, False]


def test_evaluate_columns_order_where_and_streaming() -> None:
    table = generated(n=2500, seed=3)
    con = connect(table)
    specs = [parse_filter_spec(t) for t in ("caption_length", "image_size", "text_match",
                                            "fraction:column=dfn,fraction=0.5", "image_size")]
    where = "dfn_score > 0.25 AND text LIKE '%dog%'"
    result = evaluate_filters(con, specs, where=where, batch_size=700, reasons=True)
    labels = ["caption_length", "image_size", "text_match", specs[3].label]
    assert result.column_names == ["uid", *labels, "where", "reason"]
    assert result.column("uid").to_pylist() == table.column("uid").to_pylist()
    for spec in specs[:4]:
        assert result.column(spec.label).to_pylist() == by_python(con, table, spec).tolist()
    expected_where = con.execute(f"SELECT coalesce({where}, false) FROM samples").fetchall()
    assert result.column("where").to_pylist() == [r[0] for r in expected_where]
    sql_only = evaluate_filters(con, [s for s in specs if s.name != "text_match"], where=where,
                                reasons=True)
    assert sql_only.column("image_size").equals(result.column("image_size"))
    failing = {r for r in result.column("reason").to_pylist() if r}
    assert failing <= set(labels)
    kept = np.all([result.column(label).to_numpy(zero_copy_only=False) for label in labels], 0)
    assert [r is None for r in result.column("reason").to_pylist()] == kept.tolist()


def test_evaluate_errors_and_empty_samples() -> None:
    con = connect(samples_table({"text": ["a b c d"]}))
    with pytest.raises(UserError, match="--where 'nosuch > 1'"):
        evaluate_filters(con, [], where="nosuch > 1")
    with pytest.raises(UserError, match="not a condition"):
        evaluate_filters(con, [], where="dfn_score")
    with pytest.raises(UserError, match="one condition"):
        evaluate_filters(con, [], where="true) FROM samples; SELECT (1")
    slim = duckdb.connect()
    slim.execute("CREATE TABLE samples AS SELECT 'x' AS uid, 'a b c d' AS text")
    with pytest.raises(UserError, match="needs column.*original_width"):
        evaluate_filters(slim, [FilterSpec("image_size")])
    empty = connect(samples_table({"text": []}))
    for specs in ([FilterSpec("image_size")], [FilterSpec("basic")]):
        result = evaluate_filters(empty, specs, where="true", reasons=True)
        assert result.num_rows == 0
        assert result.column_names == ["uid", specs[0].label, "where", "reason"]


@pytest.mark.parametrize("sql_type", ["FLOAT", "DOUBLE", "INTEGER", "UBIGINT", "DECIMAL(9,3)"])
def test_fraction_threshold_is_datacomps_index_for_every_column_type(sql_type: str) -> None:
    """int(N * F) of the non-null values sorted descending, whether NumPy holds the column
    (partition in place) or DuckDB orders it (DECIMAL); nulls and NaN are not among the N."""
    from curate.filters.builtin import fraction_threshold

    rng = np.random.default_rng(3)
    values = rng.integers(0, 5000, 997).astype(float)
    if "INT" not in sql_type:
        values /= 8  # exact in binary and in three decimals
    con = duckdb.connect()
    con.execute(f"CREATE TABLE samples (s {sql_type})")
    rows = [(float(v),) for v in values] + [(None,)]
    if sql_type in ("FLOAT", "DOUBLE"):
        rows.append((float("nan"),))
    con.executemany("INSERT INTO samples VALUES (?)", rows)
    for fraction in (0.0, 0.1, 0.3, 0.999, 1.0):
        value, total, index = fraction_threshold(con, "s", fraction)
        ordered = -np.sort(-values)
        assert total == len(values) and index == int(len(values) * fraction)
        assert value == ordered[min(index, len(values) - 1)]
