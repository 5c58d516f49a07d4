"""The one layout of a pipeline's storage root: the key of every file it stores.

Keys are relative, `/`-separated, and the same on a local folder and an object store:

    requests/partition={P}/gen={G}/rejected.parquet                  rows refused before submission
    requests/partition={P}/gen={G}/attempt={A}/shard-00000.jsonl     request lines
    requests/partition={P}/gen={G}/attempt={A}/shard-00000.ids.parquet  their ids and tokens
    requests/partition={P}/gen={G}/attempt={A}/manifest.json         written last
    requests/partition={P}/gen={G}/attempt={A}/manifest-s00000.json  retries of one shard
    batches/partition={P}/gen={G}/attempt={A}/shard-00000/output.jsonl    downloaded copies
    batches/partition={P}/gen={G}/attempt={A}/shard-00000/errors.jsonl
    batches/partition={P}/gen={G}/attempt={A}/shard-00000/outcomes.parquet one row per request
    results/partition={P}/part-0.parquet                             Hive style, for readers

Intermediates are what a day needs only while it is in flight and its results are written:
the request shards with their ids files, and everything under `batches/`. Manifests, rejected
rows and results are kept for good.

No other module spells a key; each asks this one.
"""

from __future__ import annotations

from typing import Literal

REQUESTS = "requests"
BATCHES = "batches"
RESULTS = "results"
PARTITION_KEY = "partition"

BatchFile = Literal["output", "errors"]
BATCH_FILES: tuple[BatchFile, ...] = ("output", "errors")
_SHARD_FILES = (".jsonl", ".ids.parquet")  # a request shard and its ids file


def _partition_dir(top: str, partition: str) -> str:
    return f"{top}/{PARTITION_KEY}={partition}"


def generation_dir(partition: str, generation: int) -> str:
    """The folder of one build (generation) of a partition's requests."""
    return f"{_partition_dir(REQUESTS, partition)}/gen={generation}"


def attempt_dir(partition: str, generation: int, attempt: int) -> str:
    """The folder of one attempt's request shards and manifests."""
    return f"{generation_dir(partition, generation)}/attempt={attempt}"


def shard_path(partition: str, generation: int, attempt: int, index: int) -> str:
    """A JSONL request shard."""
    return f"{attempt_dir(partition, generation, attempt)}/shard-{index:05d}.jsonl"


def shard_ids_path(path: str) -> str:
    """The file beside a shard holding its requests' custom_ids and estimated input tokens in
    line order (Parquet), so that collecting its batch need not read the shard again to know
    what it asked for, nor a retry parse its lines to estimate their tokens."""
    return f"{path.removesuffix('.jsonl')}.ids.parquet"


def manifest_path(
    partition: str, generation: int, attempt: int, first_index: int | None = None
) -> str:
    """`manifest.json` of an attempt; retry shards made from one earlier shard get their own
    `manifest-s{first_index}.json`, so collectors of different shards never write one file."""
    name = "manifest.json" if first_index is None else f"manifest-s{first_index:05d}.json"
    return f"{attempt_dir(partition, generation, attempt)}/{name}"


def rejected_path(partition: str, generation: int) -> str:
    """The rows of a generation refused before submission (Parquet)."""
    return f"{generation_dir(partition, generation)}/rejected.parquet"


def batch_dir(partition: str, generation: int, attempt: int, index: int) -> str:
    """Where a shard's downloaded output/error files and its outcomes live."""
    return (
        f"{_partition_dir(BATCHES, partition)}/gen={generation}/attempt={attempt}/shard-{index:05d}"
    )


def batch_file_path(folder: str, name: BatchFile) -> str:
    """A batch's downloaded output or error file, in its `batch_dir`."""
    return f"{folder}/{name}.jsonl"


def outcomes_path(folder: str) -> str:
    """A shard's outcomes (Parquet, one row per request), in its `batch_dir`."""
    return f"{folder}/outcomes.parquet"


def partition_dirs(partition: str) -> tuple[str, str]:
    """The folders that hold a partition's requests and its batches' files, all generations."""
    return _partition_dir(REQUESTS, partition), _partition_dir(BATCHES, partition)


def intermediate_generation(key: str) -> int | None:
    """The generation of an intermediate file (a request shard or its ids file, or a file
    of a batch: downloaded copies and outcomes); None for a file kept for good (manifests,
    rejected rows, results) or any key this layout does not name."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] not in (REQUESTS, BATCHES):
        return None
    key_name, _, value = parts[2].partition("=")
    if key_name != "gen" or not value.isdigit() or not parts[1].startswith(f"{PARTITION_KEY}="):
        return None
    name = parts[-1]
    if parts[0] == REQUESTS and not (name.startswith("shard-") and name.endswith(_SHARD_FILES)):
        return None
    return int(value)


def results_dir(partition: str | None = None) -> str:
    """The results folder: every partition's, or one partition's."""
    return RESULTS if partition is None else _partition_dir(RESULTS, partition)


def results_path(partition: str, part: int = 0) -> str:
    """A partition's results file, in the Hive layout that pandas and DuckDB read whole."""
    return f"{results_dir(partition)}/part-{part}.parquet"


def results_partition(relative: str) -> str | None:
    """The partition of a results file from its key below the results folder
    (`partition={P}/part-0.parquet`); None for any other key. Hidden files (`.name`, `_name`)
    are not results, as pandas, pyarrow and DuckDB skip them too."""
    folder, _, name = relative.rpartition("/")
    key, sep, value = folder.partition("=")
    if "/" in folder or key != PARTITION_KEY or not sep or not name.endswith(".parquet"):
        return None
    return None if name.startswith((".", "_")) else value
