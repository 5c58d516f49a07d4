"""batch_pipeline: background LLM work through providers' Batch APIs, with nothing lost.

Public names load on first use, so `import batch_pipeline.local_api` stays light and the
core never pulls in Dagster: `BatchPipelineComponent` comes from the Dagster layer only when
asked for.
"""

from typing import TYPE_CHECKING

from batch_pipeline.core._lazy_exports import lazy_exports

__version__ = "0.1.0"

_PUBLIC = {
    "Partition": "batch_pipeline.core.partition",
    "PartitionStatus": "batch_pipeline.core.pipeline",
    "Pipeline": "batch_pipeline.core.pipeline",
    "PipelineError": "batch_pipeline.core.pipeline",
    "PollReport": "batch_pipeline.core.pipeline",
    "RequestsSummary": "batch_pipeline.core.pipeline",
    "ResultsSummary": "batch_pipeline.core.pipeline",
    "SubmitSummary": "batch_pipeline.core.pipeline",
    "load_pipeline": "batch_pipeline.core.pipeline",
    "read_results": "batch_pipeline.core.pipeline",
    "PipelineSpec": "batch_pipeline.core.spec",
    "SpecError": "batch_pipeline.core.spec",
    "RowStatus": "batch_pipeline.core.types",
    "BatchPipelineComponent": "batch_pipeline.dagster",
}

# The core's names: `from batch_pipeline import *` in a notebook does not import Dagster
# (`batch_pipeline.BatchPipelineComponent` still loads it when named).
__all__ = [
    "Partition",
    "PartitionStatus",
    "Pipeline",
    "PipelineError",
    "PipelineSpec",
    "PollReport",
    "RequestsSummary",
    "ResultsSummary",
    "RowStatus",
    "SpecError",
    "SubmitSummary",
    "__version__",
    "load_pipeline",
    "read_results",
]

if TYPE_CHECKING:
    from batch_pipeline.core.partition import Partition
    from batch_pipeline.core.pipeline import (
        PartitionStatus,
        Pipeline,
        PipelineError,
        PollReport,
        RequestsSummary,
        ResultsSummary,
        SubmitSummary,
        load_pipeline,
        read_results,
    )
    from batch_pipeline.core.spec import PipelineSpec, SpecError
    from batch_pipeline.core.types import RowStatus
    from batch_pipeline.dagster import BatchPipelineComponent  # noqa: F401 - not in __all__


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
