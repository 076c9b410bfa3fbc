"""Named sample filters (a registry) and their evaluation over a run's ``samples`` view.

    from curate.filters import parse_filter_spec, evaluate_filters, list_filters
    table = evaluate_filters(con, [parse_filter_spec("caption_length:min_words=3")])

Built in: caption_length, image_size, aspect_ratio, language, basic (DataComp's basic
filter), text_match, threshold, fraction. A filter is a pure ``mask(batch, params)``; where
the rule can be said in SQL it also is, and evaluation runs that SQL in DuckDB.
"""

import importlib
import pkgutil

from curate.filters.builtin import fraction_threshold, score_column
from curate.filters.evaluate import METADATA_KEY, evaluate_filters
from curate.filters.registry import (
    Filter,
    FilterCatalog,
    FilterSpec,
    Param,
    ResolvedFilter,
    describe_filters,
    get_filter,
    list_filters,
    parse_filter_spec,
    register_composite,
    register_filter,
)
from curate.filters.text_match import class_pattern, load_classes

for _module in pkgutil.iter_modules(__path__):  # every module registers its filters: a new
    importlib.import_module(f"{__name__}.{_module.name}")  # filter is one new file

__all__ = [
    "METADATA_KEY",
    "Filter",
    "FilterCatalog",
    "FilterSpec",
    "Param",
    "ResolvedFilter",
    "class_pattern",
    "describe_filters",
    "evaluate_filters",
    "fraction_threshold",
    "get_filter",
    "list_filters",
    "load_classes",
    "parse_filter_spec",
    "register_composite",
    "register_filter",
    "score_column",
]
