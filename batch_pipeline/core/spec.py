"""The pipeline spec: the public contract users write in YAML (or build in Python).

Unknown keys and wrong types are refused with a `SpecError` that names the key.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batch_pipeline.core._spec_base import (
    ENV_NAME,
    STORAGE_OPTIONS_HELP,
    SpecError,
    _env_name,
    _Section,
    _url_from_env,
)
from batch_pipeline.core.batch_caps import OPENAI_CAPS, batch_caps
from batch_pipeline.core.cron import cron_errors
from batch_pipeline.core.output_forms import FORM_KEYS, OUTPUT_FORMS, takes_output_schema
from batch_pipeline.core.output_schema import OutputSchema, OutputSchemaError, load_output_schema
from batch_pipeline.core.partition import Partitioning, PartitionKind
from batch_pipeline.core.spec_request import RequestSpec
from batch_pipeline.core.spec_source import SourceSpec
from batch_pipeline.core.storage_uri import check_options, is_remote, join, local_path_of
from batch_pipeline.core.types import Endpoint

# How long the ledger's database may be away before a step gives up (ledger.reconnect_seconds).
DEFAULT_RECONNECT_SECONDS = 300.0

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class BackendSpec(_Section):
    provider: Literal["local", "openai", "azure", "anthropic"] = Field(
        default="local",
        description="Which Batch API: local (the service `batch-pipeline serve` starts), "
        "openai, azure or anthropic.",
    )
    base_url: str | None = Field(
        default=None,
        description="The API's URL ending in /v1; by default the provider's (local: "
        "http://127.0.0.1:8780/v1).",
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="The NAME of the environment variable holding the key, never the key.",
    )
    azure_endpoint: str | None = Field(
        default=None, description="Azure OpenAI's resource URL (provider azure)."
    )
    api_version: str | None = Field(
        default=None, description="Azure OpenAI's API version, e.g. 2024-10-21 (provider azure)."
    )
    organization: str | None = Field(default=None, description="The OpenAI organization id.")
    project: str | None = Field(default=None, description="The OpenAI project id.")
    request_timeout_seconds: float = Field(
        default=60.0, description="How long one call to the API may take."
    )
    max_retries: int = Field(
        default=3, description="Retries of a call that failed for a reason worth retrying."
    )
    unreachable_after_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a run waits on a Batch API that gives no answer at all before "
        "it stops with an error naming the URL; a first call that cannot connect stops at once.",
    )

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_a_name(cls, value: str) -> str:
        if not ENV_NAME.fullmatch(value):
            raise ValueError("must be the name of an environment variable, not a key")
        return value

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_read_as_a_date(cls, value: Any) -> Any:
        """YAML reads an unquoted `2024-10-21` as a date: it is meant as the version's text."""
        if isinstance(value, date) and not isinstance(value, datetime):
            return value.isoformat()
        return value

    @model_validator(mode="after")
    def _azure_needs_endpoint(self) -> BackendSpec:
        if self.provider == "azure" and not (self.azure_endpoint and self.api_version):
            raise ValueError("provider azure needs azure_endpoint and api_version")
        return self


class LimitsSpec(_Section):
    max_requests_per_file: int = Field(
        default=OPENAI_CAPS.max_requests,
        ge=1,
        description="Most requests in one shard (one batch); by default the provider's cap: "
        "50,000 on OpenAI, 100,000 on Azure and Anthropic.",
    )
    max_bytes_per_file: int = Field(
        default=OPENAI_CAPS.default_bytes,
        ge=1024,
        description="Most bytes in one shard; by default a margin below the provider's cap "
        "(200 MB on OpenAI and Azure, 256 MB on Anthropic).",
    )
    enqueued_tokens: int | None = Field(
        default=None,
        ge=1,
        description="The organization's enqueued-token limit for the model: batches beyond "
        "it wait, rather than fail.",
    )

    @property
    def counts_tokens_exactly(self) -> bool:
        """Whether each request's input tokens are counted exactly, not estimated: under an
        enqueued-token budget, since the provider fails a batch past its limit, and an
        estimate from bytes runs low for digits, ids and CJK text."""
        return self.enqueued_tokens is not None

    def for_provider(self, provider: str) -> LimitsSpec:
        """These limits on `provider`: a limit the spec leaves out is the provider's default;
        ValueError for one past the provider's cap."""
        caps = batch_caps(provider)
        given = self.model_fields_set
        for name, cap, what in (
            ("max_requests_per_file", caps.max_requests, "requests"),
            ("max_bytes_per_file", caps.max_bytes, "bytes"),
        ):
            if name in given and getattr(self, name) > cap:
                raise ValueError(
                    f"{name} {getattr(self, name)} is more than provider {provider} takes in "
                    f"one batch ({cap} {what})"
                )
        defaults = {
            "max_requests_per_file": caps.max_requests,
            "max_bytes_per_file": caps.default_bytes,
        }
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update({k: v for k, v in defaults.items() if k not in given})
        # Constructed, not copied: the limits the spec gave stay the only ones it set.
        return type(self).model_construct(_fields_set=set(given), **values)


class RetrySpec(_Section):
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts of a request that failed or expired."
    )
    invalid_output_attempts: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Attempts of a request whose answer does not fit the output schema "
        "(error_code invalid_output); 1, the default, sends it once. At most max_attempts.",
    )


class OutputSpec(_Section):
    dir: str = Field(
        default="out",
        description="Where requests, batch files and results go: a local folder or an "
        "object store's URI (s3://, gs://, az://, abfs://, file://).",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description=STORAGE_OPTIONS_HELP)
    keep_provider_files: bool = Field(
        default=False,
        description="Keep a batch's input, output and error files on the provider; by "
        "default they are deleted once the batch's outcomes are stored locally.",
    )
    compression: Literal["snappy", "zstd", "lz4", "gzip", "none"] = Field(
        default="snappy",
        description="Parquet codec of the results: snappy writes fastest; zstd makes files "
        "about a third smaller and takes twice as long.",
    )
    keep_intermediates_days: float = Field(
        default=7,
        ge=0,
        description="Days a collected partition keeps its intermediates (request shards, "
        "batch outcome files) once its results are written; then `batch-pipeline gc` or the "
        "Dagster sensor removes them. 0 removes them as soon as the results are written.",
    )

    @field_validator("storage_options")
    @classmethod
    def _options_fit_the_store(cls, options: dict[str, Any], info: ValidationInfo) -> Any:
        check_options(info.data.get("dir") or "", options)
        return options


class LedgerSpec(_Section):
    url: str | None = Field(
        default=None, description="SQLAlchemy URL of the ledger's database, with no password."
    )
    url_env: str | None = Field(
        default=None,
        description="The NAME of an environment variable holding the ledger's URL.",
    )
    reconnect_seconds: float = Field(
        default=DEFAULT_RECONNECT_SECONDS,
        ge=0,
        description="How long an outage of the ledger's PostgreSQL (a restart, a managed "
        "database's failover) may last before a run stops with an error: meanwhile each "
        "ledger transaction that the outage cut is run again, whole, with growing pauses. "
        "Only connection failures of a database this process has reached are retried; "
        "0 turns it off. SQLite is never retried.",
    )

    _check_env = field_validator("url_env")(_env_name)

    @model_validator(mode="after")
    def _at_most_one_url(self) -> LedgerSpec:
        if self.url is not None and self.url_env is not None:
            raise ValueError("give at most one of url and url_env")
        return self


class ModelPrice(_Section):
    """USD per million tokens at live prices; the Batch API charges half of it."""

    input: float = Field(ge=0, description="USD per million input tokens.")
    output: float = Field(default=0.0, ge=0, description="USD per million output tokens.")


class PartitionsSpec(_Section):
    kind: PartitionKind = Field(
        default=PartitionKind.DAILY,
        description="How rows are split: daily, weekly or monthly by the partition column's "
        "day (keys YYYY-MM-DD of the first day), or none: one partition, `all`, of every row.",
    )
    start: date | None = Field(
        default=None,
        description="The first partition's first day (a weekly pipeline's weeks begin on its "
        "weekday; a monthly one's start is the 1st of a month). Dagster needs it.",
    )
    end: date | None = Field(default=None, description="The last day covered (inclusive).")

    @model_validator(mode="before")
    @classmethod
    def _kind_alone(cls, value: Any) -> Any:
        """`partitions: weekly` is short for `partitions: {kind: weekly}`."""
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("start")
    @classmethod
    def _start_fits_the_kind(cls, start: date | None, info: ValidationInfo) -> date | None:
        kind = info.data.get("kind")
        if start is not None and kind is PartitionKind.NONE:
            raise ValueError("partitions none covers the whole source: give no start")
        if start is not None and kind is PartitionKind.MONTHLY and start.day != 1:
            raise ValueError(f"monthly partitions start on the 1st of a month, not {start}")
        return start

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: date | None, info: ValidationInfo) -> date | None:
        if end is not None and info.data.get("kind") is PartitionKind.NONE:
            raise ValueError("partitions none covers the whole source: give no end")
        start = info.data.get("start")
        if end is not None and start is not None and end < start:
            raise ValueError(f"{end} is before partitions.start {start}")
        return end

    @property
    def partitioning(self) -> Partitioning:
        """The partitions these settings describe, which parse and bound partition keys."""
        return Partitioning(self.kind, self.start, self.end)


class ScheduleSpec(_Section):
    cron: str = Field(default="0 1 * * *", description="When the nightly run starts.")
    timezone: str = Field(
        default="UTC", description="The cron's and the days' IANA time zone, e.g. Europe/Paris."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        errors = cron_errors(value)
        if errors:
            raise ValueError(f"{value!r} is not a cron expression: {'; '.join(errors)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone (e.g. 'UTC', 'Europe/Paris')"
            ) from None
        return value


class ChecksSpec(_Section):
    max_failed_share: float = Field(
        default=0.05, ge=0, le=1, description="The share of failed rows the results check allows."
    )


class PipelineSpec(_Section):
    """One pipeline: where rows come from, what to ask, where the Batch API is, where results go."""

    name: str
    source: SourceSpec
    request: RequestSpec
    backend: BackendSpec = Field(default_factory=BackendSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec, validate_default=True)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    ledger: LedgerSpec = Field(default_factory=LedgerSpec)
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="Per-model price overrides, USD per 1M tokens."
    )
    partitions: PartitionsSpec = Field(
        default_factory=PartitionsSpec,
        description="daily (the default), weekly, monthly or none, with start and end.",
    )
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    base_dir: Path = Field(
        default_factory=Path.cwd,
        exclude=True,
        description="Relative paths are resolved against this folder (the YAML file's).",
    )
    _output_schema: OutputSchema | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _output_schema_fits(self) -> PipelineSpec:
        """Read and check `request.output_schema` once, before anything is built."""
        value = self.request.output_schema
        if value is None:
            return self
        endpoint = self.request.endpoint
        if not takes_output_schema(endpoint):
            raise ValueError(
                f"request.output_schema: {endpoint} answers take no output schema; remove it "
                f"or use {' or '.join(OUTPUT_FORMS)}"
            )
        clash = FORM_KEYS[endpoint.value] & self.request.params.keys()
        if clash:
            raise ValueError(
                f"request.params: {sorted(clash)} are set from request.output_schema; remove them"
            )
        try:
            self._output_schema = load_output_schema(
                value, base_dir=self.base_dir, default_name=self.name
            )
        except OutputSchemaError as exc:
            lines = "".join(f"\n  request.output_schema {line}" for line in exc.problems)
            raise ValueError(f"request.output_schema cannot be used:{lines}") from None
        return self

    @field_validator("limits")
    @classmethod
    def _limits_of_the_provider(cls, limits: LimitsSpec, info: ValidationInfo) -> LimitsSpec:
        """The shard limits within (and by default at) the provider's batch caps."""
        backend = info.data.get("backend")
        return limits if backend is None else limits.for_provider(backend.provider)

    @property
    def output_schema(self) -> OutputSchema | None:
        """The checked output schema, if the request declares one."""
        return self._output_schema

    @model_validator(mode="after")
    def _messages_go_to_anthropic(self) -> PipelineSpec:
        """Anthropic's batches take Messages API requests only, and those need max_tokens."""
        messages = self.request.endpoint is Endpoint.MESSAGES
        if (self.backend.provider == "anthropic") != messages:
            raise ValueError(
                "backend.provider anthropic and request.endpoint /v1/messages go together: "
                f"provider {self.backend.provider} cannot take {self.request.endpoint.value}"
            )
        if messages and "max_tokens" not in self.request.params:
            raise ValueError(
                "request.params.max_tokens: the Messages API needs max_tokens in every request"
            )
        return self

    @field_validator("partitions", mode="before")
    @classmethod
    def _default_partitions(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _partition_column_when_partitioned(self) -> PipelineSpec:
        if self.source.partition_column is None and self.partitioning.kind != PartitionKind.NONE:
            raise ValueError(
                f"source.partition_column: required key is missing ({self.partitioning.kind} "
                "partitions split rows by its days; `partitions: none` needs none)"
            )
        return self

    @property
    def partitioning(self) -> Partitioning:
        """How this pipeline's rows are split into partitions, and their bounds."""
        return self.partitions.partitioning

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError("must match [a-z][a-z0-9_]* (it is used in asset keys and paths)")
        return name

    @model_validator(mode="after")
    def _remote_output_needs_a_shared_ledger(self) -> PipelineSpec:
        if is_remote(self.output.dir) and (
            not (self.ledger.url or self.ledger.url_env) or _is_sqlite(self.ledger.url)
        ):
            raise ValueError(
                f"output.dir {self.output.dir} is object storage, so the ledger must be "
                "PostgreSQL, which every process reaches: set ledger.url or ledger.url_env"
            )
        return self

    def resolve(self, path: str | Path) -> Path:
        """A spec path made absolute against the spec's folder."""
        candidate = Path(local_path_of(str(path))).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate).resolve()

    def location(self, path: str) -> str:
        """A spec location as given for an object store's URI, else its absolute path."""
        return path.rstrip("/") if is_remote(path) else str(self.resolve(path))

    @property
    def pipeline_root(self) -> str:
        """`{output.dir}/{name}` as a path or an object store's URI: the storage root of
        requests, batch files and results."""
        return join(self.location(self.output.dir), self.name)

    @property
    def pipeline_dir(self) -> Path:
        """`{output.dir}/{name}` where `output.dir` is a local folder (and the default
        ledger's folder); ValueError for an object store, which has no local folder."""
        if is_remote(self.output.dir):
            raise ValueError(f"output.dir {self.output.dir} is not a local folder")
        return self.resolve(self.output.dir) / self.name

    @property
    def ledger_url(self) -> str:
        """`ledger.url`, or the variable `ledger.url_env` names, else SQLite in the
        pipeline's folder."""
        if self.ledger.url:
            return self.ledger.url
        if self.ledger.url_env:
            url = _url_from_env(self.ledger.url_env, "ledger.url_env")
            if is_remote(self.output.dir) and _is_sqlite(url):
                raise SpecError(
                    f"ledger.url_env: {self.ledger.url_env} names a SQLite database, but "
                    f"output.dir {self.output.dir} is object storage: use PostgreSQL"
                )
            return url
        return f"sqlite:///{self.pipeline_dir / 'ledger.sqlite'}"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base_dir: Path | None = None) -> PipelineSpec:
        """Validate a mapping (parsed YAML, Component attributes) into a spec."""
        if not isinstance(data, dict):
            raise SpecError(f"a pipeline spec is a mapping of keys, not {type(data).__name__}")
        try:
            return cls.model_validate({**data, "base_dir": base_dir or Path.cwd()})
        except ValidationError as exc:
            raise SpecError(_describe(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineSpec:
        """Read a spec file; its relative paths are relative to the file's folder."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read the pipeline spec {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{path} is not valid YAML: {exc}") from None
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    @classmethod
    def of(cls, spec: str | Path | PipelineSpec | dict[str, Any]) -> PipelineSpec:
        """A spec from a spec file's path, a mapping, or a spec (as it is)."""
        if isinstance(spec, PipelineSpec):
            return spec
        return cls.from_dict(spec) if isinstance(spec, dict) else cls.from_yaml(spec)


def _is_sqlite(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith("sqlite")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "spec"
        if not error["loc"] and error["type"] == "value_error":  # names its own keys
            problems.append(error["msg"].removeprefix("Value error, "))
        elif error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif error["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            problems.append(message if key == "spec" else f"{key}: {message}")
    return "invalid pipeline spec: " + "; ".join(problems)
