"""Declarative recipes (``pipelines/*.toml``): stages in order, resumable, recorded in the run.

``curate.pipeline`` imports the stages; no stage imports it. The toy world registers its own
stage kinds (``curate.toyworld.stages``), which ``filter-pool run`` loads.
"""

from curate.pipeline import builtin  # noqa: F401  (registers the engine's stage kinds)
from curate.pipeline.recipe import RecipeError, load_recipe, parse_assignment
from curate.pipeline.run import RECIPES_DIR, RecipeResult, StageReport, run_recipe
from curate.pipeline.stages import StageOutcome, list_stage_kinds, register_stage

__all__ = [
    "RECIPES_DIR",
    "RecipeError",
    "RecipeResult",
    "StageOutcome",
    "StageReport",
    "list_stage_kinds",
    "load_recipe",
    "parse_assignment",
    "register_stage",
    "run_recipe",
]
