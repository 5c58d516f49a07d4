"""Echo-responder throughput of the local Batch API (a script, not a test).

Run: python -m batch_pipeline_tests.local_api_tests.bench_echo_throughput [N] [BATCHES]
Uploads BATCHES files of N chat requests, creates the batches at once, and reports the
requests per second from the first create to the last batch completed (validation,
answering with exact token counts, and writing the output files all included).
"""

from __future__ import annotations

import sys
import tempfile
import time

import orjson
from openai import OpenAI

from batch_pipeline.local_api import run_local_batch_api


def _input_file(n: int, tag: str) -> bytes:
    lines = []
    for i in range(n):
        lines.append(
            orjson.dumps(
                {
                    "custom_id": f"{tag}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "gpt-4o-mini",
                        "messages": [
                            {
                                "role": "system",
                                "content": "Classify the sentiment as pos/neg/neutral.",
                            },
                            {
                                "role": "user",
                                "content": f"Review {i}: the product arrived on time and "
                                f"works great, thanks! Order #{i * 7919}.",
                            },
                        ],
                        "max_tokens": 50,
                    },
                }
            )
        )
    return b"\n".join(lines) + b"\n"


def main(n: int = 50_000, batches: int = 1) -> None:
    with tempfile.TemporaryDirectory() as state, run_local_batch_api(state) as url:
        client = OpenAI(base_url=url, api_key="unused")
        files = [
            client.files.create(file=(f"b{k}.jsonl", _input_file(n, f"b{k}")), purpose="batch")
            for k in range(batches)
        ]
        start = time.perf_counter()
        ids = [
            client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
            for f in files
        ]
        pending = set(ids)
        while pending:
            for batch_id in list(pending):
                batch = client.batches.retrieve(batch_id)
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    assert batch.status == "completed", batch
                    pending.discard(batch_id)
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        total = n * batches
        print(
            f"{total} requests in {batches} batch(es): {elapsed:.2f} s, "
            f"{total / elapsed:,.0f} requests/s"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
