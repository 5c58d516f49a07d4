"""The demo pipeline for `dagster dev` (loaded by workspace.yaml).

Run the local Batch API beside it: `batch-pipeline serve --port 8780 --state-dir
demo_output/batch_api`. The sample table and the spec are written to ./demo_output/ui (or
$BATCH_PIPELINE_DEMO_DIR) the first time this module loads.
"""

from batch_pipeline.dagster import build_batch_pipeline_defs
from batch_pipeline.demo import ui_demo_spec

defs = build_batch_pipeline_defs(spec=ui_demo_spec())
