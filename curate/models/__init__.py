"""Filter-network models: open_clip specs, packaged tiny configs, loading."""

from curate.models.spec import (
    LoadedModel,
    ModelCatalog,
    ModelError,
    ModelSpec,
    describe_models,
    list_packaged_configs,
    load_model,
    parse_model_spec,
)

__all__ = [
    "LoadedModel",
    "ModelCatalog",
    "ModelError",
    "ModelSpec",
    "describe_models",
    "list_packaged_configs",
    "load_model",
    "parse_model_spec",
]
