"""A labels table for train-head: ``uid, label`` (binary classification: 0/1, true/false or
two class names) or ``uid, value`` (regression), from parquet or csv; one-line errors naming
the file and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import UserError

TASKS = ("auto", "classification", "regression")


@dataclass(frozen=True)
class Labels:
    """Unique uids with one numeric target each (0/1 for classification)."""

    path: Path
    uids: pa.StringArray
    targets: np.ndarray  # float64
    task: str  # classification | regression
    column: str  # label | value
    positive: str | None = None  # classification: the class whose target is 1
    negative: str | None = None


def _read_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise UserError(f"{path}: no such labels file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            return pacsv.read_csv(
                path, parse_options=pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv"
                                                       else ","),
                convert_options=pacsv.ConvertOptions(column_types={"uid": pa.string()}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: unreadable labels table ({str(exc).splitlines()[0]})") from None
    raise UserError(f"{path}: labels must be a .parquet, .csv or .tsv file")


def _class_targets(path: Path, column: pa.ChunkedArray, positive: str | None
                   ) -> tuple[np.ndarray, str, str]:
    """0/1 targets of a binary label column and its (positive, negative) class names. 0/1 and
    true/false are read as such; other values are class names, the positive one given or else
    the last in sorted order (stated in the report)."""
    kind = column.type
    if pa.types.is_floating(kind):
        values = column.to_numpy()
        if not np.all(np.isin(values, (0.0, 1.0))):
            raise UserError(f"{path}: label holds numbers other than 0 and 1; for a numeric "
                            "target name the column 'value' (regression)")
    names = [str(v).lower() if isinstance(v, bool) else str(v) for v in column.to_pylist()]
    if pa.types.is_floating(kind):
        names = [str(int(float(v))) for v in names]
    classes = sorted(set(names))
    if len(classes) != 2:
        raise UserError(f"{path}: binary labels only, got {len(classes)} classes "
                        f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    if positive is None:
        positive = "1" if classes == ["0", "1"] else "true" if classes == ["false", "true"] \
            else classes[1]
    if positive not in classes:
        raise UserError(f"{path}: --positive '{positive}' is not one of the classes "
                        f"{', '.join(classes)}")
    negative = classes[0] if classes[1] == positive else classes[1]
    return np.array([n == positive for n in names], dtype=np.float64), positive, negative


def read_labels(path: Path | str, task: str = "auto", positive: str | None = None) -> Labels:
    """The labels table at ``path``, checked: a uid column, exactly one of label / value, no
    nulls, no repeated uid, binary classes or numeric values."""
    path = Path(path)
    if task not in TASKS:
        raise UserError(f"--task must be one of {', '.join(TASKS)}, got '{task}'")
    table = _read_table(path)
    names = set(table.column_names)
    if "uid" not in names:
        raise UserError(f"{path}: no 'uid' column (has {', '.join(table.column_names)})")
    targets = [c for c in ("label", "value") if c in names]
    if len(targets) != 1:
        raise UserError(f"{path}: needs exactly one of the columns 'label' (classification) or "
                        f"'value' (regression); has {', '.join(table.column_names)}")
    column_name = targets[0]
    uids, column = table.column("uid"), table.column(column_name)
    if not (pa.types.is_string(uids.type) or pa.types.is_large_string(uids.type)):
        raise UserError(f"{path}: uid must be text, got {uids.type}")
    if table.num_rows == 0:
        raise UserError(f"{path}: no labelled rows")
    for name, values in (("uid", uids), (column_name, column)):
        if values.null_count:
            raise UserError(f"{path}: {values.null_count} rows have no {name}")
    unique = pc.unique(uids)
    if len(unique) != table.num_rows:
        counts = pc.value_counts(uids)
        repeated = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
        raise UserError(f"{path}: uid {repeated} is labelled more than once "
                        f"({table.num_rows - len(unique)} repeats); give each uid one label")
    if task == "auto":
        task = "classification" if column_name == "label" else "regression"
    uid_array = pc.cast(uids, pa.string()).combine_chunks()
    if task == "regression":
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise UserError(f"{path}: {column_name} must be numeric for regression, got "
                            f"{column.type}")
        values = column.to_numpy().astype(np.float64)
        if not np.isfinite(values).all():
            raise UserError(f"{path}: {column_name} holds NaN or infinite values")
        return Labels(path, uid_array, values, "regression", column_name)
    if column_name != "label":
        raise UserError(f"{path}: classification needs a 'label' column; 'value' is for "
                        "regression (--task regression or auto)")
    if not (pa.types.is_boolean(column.type) or pa.types.is_integer(column.type)
            or pa.types.is_floating(column.type) or pa.types.is_string(column.type)
            or pa.types.is_large_string(column.type)):
        raise UserError(f"{path}: label must be 0/1, true/false or class names, got "
                        f"{column.type}")
    values, pos, neg = _class_targets(path, column, positive)
    return Labels(path, uid_array, values, "classification", column_name, pos, neg)
