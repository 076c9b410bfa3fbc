"""Compare training sets by fitted scaling curves: ``filter-pool compare`` (see stage.py).

Only names live here, so that readers of ``RUN/compare/`` (the report) load no torch.
"""

COMPARE_DIR = "compare"  # RUN/compare/NAME/
COMPARE_JSON = "compare.json"
COMPARE_PARQUET = "compare.parquet"
COMPARE_PNG = "compare.png"
