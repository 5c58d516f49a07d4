"""The demo pipeline for the Dagster UI (loaded by workspace.yaml, and by `dg dev`).

Run the local Batch API beside it: `batch-pipeline serve --port 8780 --state-dir
demo_output/batch_api`. A code server imports this module on every run launch, so it writes
nothing: the sample table and the spec are written to ./demo_output/ui (or
$BATCH_PIPELINE_DEMO_DIR) by the first step that runs.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from batch_pipeline.dagster import BatchBackendResource, build_batch_pipeline_defs
from batch_pipeline.demo import SERVE_URL, demo_backend_config, ui_demo_specs, write_demo


class DemoBackendResource(BatchBackendResource):
    """The local Batch API, and the demo folder a step writes before it first reads it."""

    demo_dir: str = Field(description="Folder of the sample table and the spec.")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        write_demo(Path(self.demo_dir), base_url=self.base_url or SERVE_URL)
        super().setup_for_execution(context)


def ui_demo_defs() -> dg.Definitions:
    """The demo's Definitions (the plain pipeline, the structured one, Claude's, and the judge
    over the plain one's results), built without writing a file."""
    return dg.Definitions.merge(
        *(
            build_batch_pipeline_defs(
                spec=spec,
                backend=DemoBackendResource(
                    **demo_backend_config(spec), demo_dir=str(spec.base_dir)
                ),
            )
            for spec in ui_demo_specs()
        )
    )


defs = ui_demo_defs()
