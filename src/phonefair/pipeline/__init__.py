"""Running phonefair from a configuration: the stage cache, the stage registry and the workflows.

``run(config)`` goes corpus → groups → extract (per encoder) → probe → analyze → report through one
:class:`~phonefair.audit.Audit`; ``demo``, ``extract_shard`` / ``merge_shards``, ``finetune`` and ``compare`` are the
other workflows. See docs/usage.md.
"""

from phonefair.pipeline.stages import DEFAULT_STAGES, StageFunctions
from phonefair.pipeline.workflows import (STAGES, RunResult, compare, demo, extract_shard, finetune, merge_shards,
                                     run)

__all__ = ["DEFAULT_STAGES", "STAGES", "RunResult", "StageFunctions", "compare", "demo", "extract_shard",
           "finetune", "merge_shards", "run"]
