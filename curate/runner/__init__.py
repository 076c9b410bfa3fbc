"""The one mechanism for stages that work shard by shard: plan, skip finished, execute,
atomic outputs, completion records, stats that add up, one progress bar, one summary.

A stage describes itself with a ``ShardedStage`` and calls ``run_sharded``; its shard function
writes the shard's outputs (atomically), and the runner writes the completion record last.
"""

from curate.runner.commands import declare_sharded_stage, sharded_commands
from curate.runner.records import read_record, record_path, write_record
from curate.runner.run import Shard, ShardedStage, run_sharded
from curate.runner.stats import ShardStats, Stats
from curate.runner.summary import StageSummary

__all__ = [
    "Shard",
    "ShardStats",
    "ShardedStage",
    "StageSummary",
    "Stats",
    "declare_sharded_stage",
    "read_record",
    "record_path",
    "run_sharded",
    "sharded_commands",
    "write_record",
]
