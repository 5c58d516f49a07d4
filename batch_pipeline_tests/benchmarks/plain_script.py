"""The end-to-end baseline: what a team writes by hand with the openai SDK, for one partition.

Read the day's rows with pandas, write request files (`json.dumps` per row, 50,000 lines a
file), upload them, create the batches, poll each batch until all are done, download the
output and error files, `json.loads` every line, merge with the rows, write Parquet.

    python -m batch_pipeline_tests.benchmarks.plain_script SOURCE OUT --base-url URL
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
import pandas as pd

from batch_pipeline_tests.benchmarks import fixtures

TERMINAL = ("completed", "failed", "expired", "cancelled")


def write_requests(rows: pd.DataFrame, folder: Path, partition: str) -> list[Path]:
    """Request files of at most 50,000 lines, one `json.dumps` per row."""
    paths: list[Path] = []
    handle = None
    for number, row in enumerate(rows.itertuples(index=False)):
        if number % fixtures.MAX_REQUESTS_PER_FILE == 0:
            if handle is not None:
                handle.close()
            paths.append(folder / f"requests-{len(paths):03d}.jsonl")
            handle = paths[-1].open("w", encoding="utf-8")
        values = row._asdict()
        handle.write(
            json.dumps(fixtures.plain_request(partition, values))  # type: ignore[union-attr]
            + "\n"
        )
    if handle is not None:
        handle.close()
    return paths


def outcome(line: dict[str, Any]) -> dict[str, Any]:
    """The columns one output or error line gives its row."""
    response, error = line.get("response"), line.get("error")
    if response and 200 <= response["status_code"] < 300:
        body = response["body"]
        return {
            "custom_id": line["custom_id"],
            "status": "succeeded",
            "response_text": body["choices"][0]["message"]["content"],
            "input_tokens": body["usage"]["prompt_tokens"],
            "output_tokens": body["usage"]["completion_tokens"],
        }
    error = error or (response or {}).get("body", {}).get("error") or {}
    return {
        "custom_id": line["custom_id"],
        "status": "failed",
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--partition", default=fixtures.DAY)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(base_url=args.base_url, api_key=fixtures.API_KEY)

    rows = pd.read_parquet(args.source)
    rows = rows[rows["created_at"].dt.strftime("%Y-%m-%d") == args.partition]
    batch_ids = []
    for path in write_requests(rows, args.out, args.partition):
        with path.open("rb") as handle:
            uploaded = client.files.create(file=(path.name, handle), purpose="batch")
        batch_ids.append(
            client.batches.create(
                input_file_id=uploaded.id, endpoint=fixtures.ENDPOINT, completion_window="24h"
            ).id
        )
    while True:
        time.sleep(args.poll_interval)
        batches = [client.batches.retrieve(batch_id) for batch_id in batch_ids]
        if all(batch.status in TERMINAL for batch in batches):
            break

    found = []
    for batch in batches:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = client.files.content(file_id).content
                found.extend(outcome(json.loads(line)) for line in content.splitlines() if line)
    rows = rows.assign(custom_id=args.partition + ":" + rows[fixtures.KEY])
    joined = rows.merge(pd.DataFrame(found), on="custom_id", how="left")
    joined.to_parquet(args.out / "results.parquet", index=False)
    print(f"{len(joined):,} rows: {joined['status'].value_counts().to_dict()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
