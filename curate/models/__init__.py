"""Filter-network models: open_clip specs, packaged tiny configs, loading."""

from curate.models.precision import use_ieee_fp32
from curate.models.spec import (
    LoadedModel,
    ModelCatalog,
    ModelError,
    ModelSpec,
    describe_models,
    list_packaged_configs,
    load_model,
    parse_model_spec,
    weight_bytes,
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
    "use_ieee_fp32",
    "weight_bytes",
]
