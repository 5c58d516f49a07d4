"""A shard's outcomes judged against the pipeline's output schema: answers that fit get their
typed `output_<property>` columns; answers that do not are kept and explained, never dropped.

A succeeded row whose answer
- was refused by the model (`message.refusal`, a `refusal` content part, Anthropic's
  `stop_reason: refusal`) ends `failed` with error_code `refusal`;
- was cut short (`finish_reason: length`, a response `status: incomplete`, Anthropic's
  `stop_reason: max_tokens`) ends `failed` with `truncated`;
- is not JSON, or is JSON that breaks the schema, ends `failed` with `invalid_output` and the
  JSON path and rule at fault in error_message.
Its response_text stays, its output columns are null. Only `invalid_output` may be retried,
and only as `retry.invalid_output_attempts` allows.

Refusals and cut-short answers are found without parsing every body: a refused answer has no
text, and a cut-short one says `"length"` or `"incomplete"` in its body outside any string
(a quote inside a JSON string is escaped, so those words with their quotes cannot come from
the text); an Anthropic message says so in `"stop_reason":"..."` (a tool call's input is
not a string, so its words may match too: such a body is parsed for nothing, no more).
Only those few bodies are parsed, one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from batch_pipeline.core.output_columns import output_fields, parse_outputs
from batch_pipeline.core.output_schema import OutputSchema
from batch_pipeline.core.spec import PipelineSpec
from batch_pipeline.core.types import Endpoint, PipelineError, RowStatus

if TYPE_CHECKING:  # a DataFrame only where one is given: pandas loads then
    import pandas as pd

MODELS_COLUMN = "output"


def with_models(frame: pd.DataFrame, as_models: bool | type, spec: PipelineSpec) -> pd.DataFrame:
    """`frame` (results) with, as `as_models` asks, an `output` column: each succeeded row's
    answer (its response_text) validated into the pydantic model (`as_models` itself, or the
    class the spec's output schema was given as), None on the other rows."""
    if as_models is False:
        return frame
    model = as_models if isinstance(as_models, type) else None
    if model is None and spec.output_schema is not None:
        model = spec.output_schema.model
    if model is None or not issubclass(model, BaseModel):
        raise PipelineError(
            f"{spec.name}: as_models needs a pydantic model: give request.output_schema as a "
            "model class, or pass the class as as_models="
        )
    succeeded = frame["status"] == RowStatus.SUCCEEDED.value
    models = [
        model.model_validate_json(text) if ok else None
        for ok, text in zip(succeeded, frame["response_text"], strict=True)
    ]
    import pandas as pd

    return frame.assign(**{MODELS_COLUMN: pd.Series(models, index=frame.index, dtype=object)})


class OutputErrorCode:
    """The error codes of answers that do not fit the output schema."""

    INVALID_OUTPUT = "invalid_output"
    REFUSAL = "refusal"
    TRUNCATED = "truncated"


# One RE2 pass over the bodies (faster than a substring search per word); the bodies are
# orjson's compact JSON.
_CUT_SHORT = '"(?:length|incomplete)"'
_CUT_SHORT_BY_ENDPOINT = {Endpoint.MESSAGES.value: '"stop_reason":"(?:max_tokens|refusal)"'}
_NO_TEXT = "$: the answer holds no text"


def judge_outcomes(
    outcomes: pa.Table, schema: OutputSchema, endpoint: str, *, retry_invalid: bool
) -> pa.Table:
    """`outcomes` (`OUTCOME_SCHEMA` columns) with the answers judged and the typed output
    columns appended; `retry_invalid`: whether an `invalid_output` row may be sent again."""
    count = outcomes.num_rows
    succeeded = pc.equal(outcomes["status"], RowStatus.SUCCEEDED.value).to_numpy(
        zero_copy_only=False
    )
    texts = outcomes["response_text"].combine_chunks()
    codes = np.full(count, None, dtype=object)
    messages = np.full(count, None, dtype=object)
    _judge_bodies(outcomes, texts, succeeded, endpoint, codes, messages)
    to_parse = succeeded & (codes == None)  # noqa: E711 (an object array, compared element-wise)
    values, errors = parse_outputs(
        pc.if_else(pa.array(to_parse), texts, pa.scalar(None, texts.type)), schema.root
    )
    invalid = to_parse & errors.is_valid().to_numpy(zero_copy_only=False)
    no_text = to_parse & texts.is_null().to_numpy(zero_copy_only=False)
    codes[invalid | no_text] = OutputErrorCode.INVALID_OUTPUT
    messages[invalid] = np.asarray(errors.filter(pa.array(invalid)).to_pylist(), dtype=object)
    messages[no_text] = _NO_TEXT
    failed = succeeded & (codes != None)  # noqa: E711
    if failed.any():
        outcomes = _with_failures(outcomes, failed, codes, messages, retry_invalid)
        values = pc.if_else(pa.array(failed), pa.scalar(None, values.type), values)
    # flatten: each column null where its row is (a struct's fields do not say so alone)
    for field, column in zip(output_fields(schema), values.flatten(), strict=True):
        outcomes = outcomes.append_column(field, column)
    return outcomes


def _judge_bodies(
    outcomes: pa.Table,
    texts: pa.Array,
    succeeded: np.ndarray,
    endpoint: str,
    codes: np.ndarray,
    messages: np.ndarray,
) -> None:
    """Find refused and cut-short answers: parse the bodies of answers without text, or whose
    body may say they were cut short."""
    bodies = outcomes["response_json"].combine_chunks()
    suspect = texts.is_null().to_numpy(zero_copy_only=False)
    pattern = _CUT_SHORT_BY_ENDPOINT.get(endpoint, _CUT_SHORT)
    cut_short = pc.match_substring_regex(bodies, pattern).fill_null(False)
    suspect |= cut_short.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(succeeded & suspect)
    for row, body in zip(rows.tolist(), bodies.take(pa.array(rows)).to_pylist(), strict=True):
        verdict = _verdict(endpoint, body)
        if verdict is not None:
            codes[row], messages[row] = verdict


def _verdict(endpoint: str, body: str | None) -> tuple[str, str] | None:
    """(code, message) of a refused or cut-short answer; None for any other."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    try:
        if endpoint == Endpoint.RESPONSES.value:
            return _responses_verdict(parsed)
        if endpoint == Endpoint.MESSAGES.value:
            return _messages_verdict(parsed)
        return _chat_verdict(parsed)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _chat_verdict(body: dict[str, Any]) -> tuple[str, str] | None:
    choice = body["choices"][0]
    refusal = (choice.get("message") or {}).get("refusal")
    if refusal:
        return OutputErrorCode.REFUSAL, f"the model refused: {refusal}"
    if choice.get("finish_reason") == "length":
        return OutputErrorCode.TRUNCATED, (
            "the answer was cut short (finish_reason: length); allow more output tokens"
        )
    return None


def _responses_verdict(body: dict[str, Any]) -> tuple[str, str] | None:
    for item in body.get("output") or ():
        for part in item.get("content") or ():
            if part.get("type") == "refusal":
                return OutputErrorCode.REFUSAL, f"the model refused: {part.get('refusal')}"
    if body.get("status") == "incomplete":
        reason = (body.get("incomplete_details") or {}).get("reason") or "no reason given"
        return OutputErrorCode.TRUNCATED, (
            f"the answer was cut short (status: incomplete, {reason}); allow more output tokens"
        )
    return None


def _messages_verdict(body: dict[str, Any]) -> tuple[str, str] | None:
    reason = body.get("stop_reason")
    if reason == "refusal":
        texts = [b.get("text") for b in body.get("content") or () if b.get("type") == "text"]
        said = "".join(filter(None, texts)) or "no reason given"
        return OutputErrorCode.REFUSAL, f"the model refused (stop_reason: refusal): {said}"
    if reason == "max_tokens":
        return OutputErrorCode.TRUNCATED, (
            "the answer was cut short (stop_reason: max_tokens); allow more output tokens"
        )
    return None


def _with_failures(
    outcomes: pa.Table,
    failed: np.ndarray,
    codes: np.ndarray,
    messages: np.ndarray,
    retry_invalid: bool,
) -> pa.Table:
    """The outcomes with the failed answers' status, code, message and retry flag set."""
    mask = pa.array(failed)
    retryable = failed & (codes == OutputErrorCode.INVALID_OUTPUT) & retry_invalid
    replaced = {
        "status": pc.if_else(mask, RowStatus.FAILED.value, outcomes["status"].combine_chunks()),
        "retryable": pc.or_(outcomes["retryable"].combine_chunks(), pa.array(retryable)),
        "error_code": pc.if_else(
            mask, pa.array(codes.tolist(), pa.string()), outcomes["error_code"].combine_chunks()
        ),
        "error_message": pc.if_else(
            mask,
            pa.array(messages.tolist(), pa.string()),
            outcomes["error_message"].combine_chunks(),
        ),
    }
    for name, column in replaced.items():
        index = outcomes.schema.get_field_index(name)
        outcomes = outcomes.set_column(index, outcomes.schema.field(index), column)
    return outcomes
