"""The one mechanism for stages that work shard by shard: plan, skip finished, execute,
atomic outputs, completion records, stats that add up."""
