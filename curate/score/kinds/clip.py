"""The ``clip`` scorer: image-text cosine similarity of an open_clip model (a DFN)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from curate.errors import UserError
from curate.executor import current_task_threads
from curate.models import ModelError
from curate.models.spec import check_weights, resolve_model_spec
from curate.score.registry import DECODED, register_scorer
from curate.score.scorer import ScorerConfig, get_scorer
from curate.score.shard import ClipShardScorer

if TYPE_CHECKING:
    from curate.score.stage import ScoreConfig


@register_scorer("clip")
class ClipKind:
    """Decodes each shard's images and captions and scores them with ``--model``."""

    reads = DECODED

    def describe(self, config: ScoreConfig) -> dict[str, Any]:
        if config.model is None:
            raise UserError("the clip scorer needs --model")
        try:
            resolved = resolve_model_spec(config.model)
            check_weights(config.model)
        except ModelError as exc:
            raise UserError(str(exc)) from exc
        return {
            "model": config.model.id,
            "model_name": config.model.model,
            "pretrained": config.model.pretrained,
            "random_init": config.model.random_init,
            "weights": resolved.weights,
            "quick_gelu": resolved.quick_gelu,
            "precision": config.precision,
        }

    def load(self, config: ScoreConfig, slot: int) -> ClipShardScorer:
        scorer_config = ScorerConfig(
            spec=config.model,
            device=config.device,
            threads=current_task_threads(),
            precision=config.precision,
            exact_shortcuts=not config.plain_encoders,
            decoder=config.decoder,
        )
        return ClipShardScorer(get_scorer(scorer_config, slot=slot))
