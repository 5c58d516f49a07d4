"""`BatchResultsIOManager`: hands a pipeline's results to the assets downstream of them.

A downstream asset declares `ins={"answers": dg.AssetIn(["ticket_triage", "results"])}` and
receives the results of its partition (or of the partitions it maps to) as a pandas
DataFrame, read from the Parquet where the pipeline wrote it (a local folder or an object
store). Input metadata `{"format": "arrow"}` gives an Arrow table, `{"format": "polars"}` a
Polars DataFrame where Polars is installed. The `results` step writes its Parquet itself:
the IO manager stores nothing.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from batch_pipeline.core.spec import PipelineSpec

FORMATS = ("pandas", "arrow", "polars")


def results_io_manager_key(spec: PipelineSpec) -> str:
    """The resource key of the pipeline's results IO manager."""
    return f"{spec.name}_results_io_manager"


class BatchResultsIOManager(dg.IOManager):
    """Loads the results of `spec`'s pipeline for a downstream asset; stores nothing."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Nothing to store: the results step has written the Parquet itself."""

    def load_input(self, context: dg.InputContext) -> Any:
        """The results of the partitions the input maps to (all of them for an
        unpartitioned downstream asset), in the format its metadata asks for."""
        wanted = (context.definition_metadata or {}).get("format", "pandas")
        if wanted not in FORMATS:
            raise ValueError(
                f"input {context.name}: format {wanted!r} is not one of {', '.join(FORMATS)}"
            )
        partitions = list(context.asset_partition_keys) if context.has_asset_partitions else None
        from batch_pipeline.core.results import read_results_table, results_frame
        from batch_pipeline.core.storage import storage_for

        storage = storage_for(self.spec.pipeline_root, self.spec.output.storage_options)
        table = read_results_table(storage, partitions, strict=True)
        context.log.debug(
            f"{table.num_rows} result rows of {self.spec.name} for "
            f"{', '.join(partitions) if partitions else 'every partition'}"
        )
        if wanted == "arrow":
            return table
        if wanted == "polars":
            return _polars(context.name).from_arrow(table)
        return results_frame(table)


def _polars(input_name: str) -> Any:
    try:
        import polars
    except ImportError:
        raise ValueError(
            f"input {input_name}: format polars needs Polars installed (pip install polars)"
        ) from None
    return polars


def results_io_manager(spec: PipelineSpec) -> dict[str, dg.IOManagerDefinition]:
    """The results IO manager under its key, bound to the `results` asset, so the asset
    brings it wherever it goes (its own Definitions, a merged code location, `materialize`)."""
    manager = dg.IOManagerDefinition.hardcoded_io_manager(BatchResultsIOManager(spec))
    return {results_io_manager_key(spec): manager}
