"""Zero-shot eval sets: class names, prompt templates and labeled images in a directory.

Layout (documented in ``data/README.md``; ``data/example_eval/`` is a small example)::

    EVAL/
      eval.json    {"name": "...", "classnames": ["red circle", ...],
                    "templates": ["a photo of a {}."]}
      labels.csv   header ``image,label``; ``image`` relative to EVAL, ``label`` an index into
                   classnames
      images/      the image files
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from curate.errors import UserError

EVAL_FILE = "eval.json"
LABELS_FILE = "labels.csv"
LABELS_HEADER = ["image", "label"]


@dataclass(frozen=True)
class EvalSet:
    """A validated zero-shot eval set."""

    root: Path
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    images: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.images)


def _string_list(config: dict, key: str, path: Path) -> tuple[str, ...]:
    values = config.get(key)
    if not isinstance(values, list) or not values:
        raise UserError(f"{path}: '{key}' must be a non-empty list of strings")
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise UserError(f"{path}: every entry of '{key}' must be a non-empty string")
    return tuple(values)


def _read_config(path: Path) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if not path.is_file():
        raise UserError(f"eval set {path.parent} has no {EVAL_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object with classnames and templates")
    classnames = _string_list(config, "classnames", path)
    templates = _string_list(config, "templates", path)
    for template in templates:
        if "{}" not in template:
            raise UserError(f"{path}: template {template!r} has no '{{}}' for the class name")
    return str(config.get("name") or path.parent.name), classnames, templates


def _read_labels(root: Path, n_classes: int) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    path = root / LABELS_FILE
    if not path.is_file():
        raise UserError(f"eval set {root} has no {LABELS_FILE}")
    images: list[Path] = []
    labels: list[int] = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != LABELS_HEADER:
            raise UserError(f"{path}: header must be 'image,label', got {header!r}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise UserError(f"{path}, line {line}: expected 2 fields, got {len(row)}")
            image, label_text = row[0].strip(), row[1].strip()
            try:
                label = int(label_text)
            except ValueError:
                raise UserError(
                    f"{path}, line {line}: label {label_text!r} is not an integer"
                ) from None
            if not 0 <= label < n_classes:
                raise UserError(
                    f"{path}, line {line}: label {label} is out of range (0..{n_classes - 1})"
                )
            image_path = root / image
            if not image_path.is_file():
                raise UserError(f"{path}, line {line}: image file {image_path} is missing")
            images.append(image_path)
            labels.append(label)
    if not images:
        raise UserError(f"{path}: no labeled images")
    return tuple(images), tuple(labels)


def load_eval_set(path: Path | str) -> EvalSet:
    """Read and validate an eval set directory; a UserError names the file and the problem."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"eval set {root} is not a directory")
    name, classnames, templates = _read_config(root / EVAL_FILE)
    images, labels = _read_labels(root, len(classnames))
    return EvalSet(root, name, classnames, templates, images, labels)
