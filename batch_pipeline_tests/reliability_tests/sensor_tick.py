"""One evaluation of a sensor in a process of its own, as Dagster's daemon has a code server
evaluate it:

    python -m batch_pipeline_tests.reliability_tests.sensor_tick MODULE SENSOR

It loads `defs` from MODULE, evaluates SENSOR once against the instance DAGSTER_HOME describes,
and prints the run requests as JSON: `[{"partition": ..., "assets": ["a/b"], "run_key": ...}]`.
"""

from __future__ import annotations

import importlib
import json
import sys

import dagster as dg


def main(argv: list[str] | None = None) -> int:
    module, sensor_name = argv if argv is not None else sys.argv[1:]
    defs = importlib.import_module(module).defs
    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.DagsterInstance.get() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    requests = [
        {
            "partition": request.partition_key,
            "assets": [key.to_user_string() for key in request.asset_selection or []],
            "run_key": request.run_key,
        }
        for request in result.run_requests or []
    ]
    print(json.dumps(requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
