"""Dagster definitions of the demo pipeline with its source table and its output in object
storage and its ledger in PostgreSQL, for runs and sensor ticks that share no disk. Where the
store, the Batch API and the ledger are comes from the environment, as each container of a
deployment gets it:

    dg launch -m batch_pipeline_tests.reliability_tests.s3_definitions --job ... --partition ...
"""

from __future__ import annotations

import os

from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.dagster import build_batch_pipeline_defs
from batch_pipeline_tests.reliability_tests.helpers import API_URL_ENV, ROOT_ENV, demo_on_store

defs = build_batch_pipeline_defs(
    spec=PipelineSpec.from_dict(demo_on_store(os.environ[ROOT_ENV], os.environ[API_URL_ENV]))
)
