import random
from datetime import date

import numpy as np
import orjson
import pyarrow as pa
import pytest

from batch_pipeline.core._hashing import keyed_hashes
from batch_pipeline.core._json_escape import json_escape
from batch_pipeline.core._key_set import KeySet, _in_run
from batch_pipeline.core.custom_id import custom_id_for
from batch_pipeline.core.requests import (
    REJECTED_SCHEMA,
    RejectCode,
    RequestBuilder,
    estimate_request_tokens,
    source_columns,
)
from batch_pipeline.core.spec import PipelineSpec, SpecError
from batch_pipeline.core.tokens import count_tokens

PARTITION = "2024-05-01"


def make_builder(tmp_path, limits=None, **request):
    request = {"model": "gpt-4o-mini", "prompt": "Review: {text}", **request}
    data = {
        "name": "t",
        "source": {"path": "src", "key": "id", "partition_column": "day"},
        "request": request,
    }
    if limits:
        data["limits"] = limits
    return RequestBuilder(PipelineSpec.from_dict(data, base_dir=tmp_path))


def parsed_lines(built):
    lines = built.lines.to_pylist()
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    return [orjson.loads(line) for line in lines]


def rejections(built):
    return [(row["key"], row["code"], row["reason"]) for row in built.rejected.to_pylist()]


def test_chat_body_with_system_and_params(tmp_path):
    builder = make_builder(
        tmp_path,
        system="You label {lang} reviews.",
        params={"temperature": 0, "max_tokens": 5},
    )
    built = builder.build(
        pa.record_batch({"id": [7], "text": ["Great!"], "lang": ["en"]}), PARTITION
    )
    assert parsed_lines(built) == [
        {
            "custom_id": "2024-05-01:7",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You label en reviews."},
                    {"role": "user", "content": "Review: Great!"},
                ],
                "temperature": 0,
                "max_tokens": 5,
            },
        }
    ]
    assert built.custom_ids.to_pylist() == ["2024-05-01:7"]
    assert built.keys.to_pylist() == ["7"]


def test_chat_body_without_system(tmp_path):
    built = make_builder(tmp_path).build(pa.record_batch({"id": [1], "text": ["ok"]}), PARTITION)
    assert parsed_lines(built)[0]["body"] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Review: ok"}],
    }


def test_responses_body(tmp_path):
    builder = make_builder(
        tmp_path,
        endpoint="/v1/responses",
        model="gpt-5-mini",
        system="Be brief.",
        params={"max_output_tokens": 50},
    )
    (line,) = parsed_lines(builder.build(pa.record_batch({"id": ["a"], "text": ["x"]}), PARTITION))
    assert line["url"] == "/v1/responses"
    assert line["body"] == {
        "model": "gpt-5-mini",
        "input": "Review: x",
        "instructions": "Be brief.",
        "max_output_tokens": 50,
    }


def test_responses_body_without_instructions(tmp_path):
    builder = make_builder(tmp_path, endpoint="/v1/responses")
    (line,) = parsed_lines(builder.build(pa.record_batch({"id": ["a"], "text": ["x"]}), PARTITION))
    assert line["body"] == {"model": "gpt-4o-mini", "input": "Review: x"}


def test_embeddings_body(tmp_path):
    builder = make_builder(
        tmp_path,
        endpoint="/v1/embeddings",
        model="text-embedding-3-small",
        prompt="{text}",
        params={"dimensions": 256},
    )
    (line,) = parsed_lines(builder.build(pa.record_batch({"id": [1], "text": ["hi"]}), PARTITION))
    assert line == {
        "custom_id": "2024-05-01:1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": "hi", "dimensions": 256},
    }


def test_embeddings_refuse_a_system_text(tmp_path):
    with pytest.raises(SpecError, match=r"request\.system"):
        make_builder(tmp_path, endpoint="/v1/embeddings", system="no")


def test_template_renders_values_like_str_and_dates_in_iso(tmp_path):
    builder = make_builder(tmp_path, prompt="{{literal}} {n}/{x}/{d}/{flag}/{n}")
    batch = pa.record_batch(
        {
            "id": [1],
            "n": [42],
            "x": [2.5],
            "d": pa.array([date(2024, 5, 1)], pa.date32()),
            "flag": [True],
        }
    )
    (line,) = parsed_lines(builder.build(batch, PARTITION))
    assert line["body"]["messages"][0]["content"] == "{literal} 42/2.5/2024-05-01/True/42"


def test_values_needing_json_escapes_round_trip(tmp_path):
    texts = [
        'say "hi"\\ then\nnew line\ttab\r\x00\x01\x1f\x7f',
        "emoji 😀 and 日本語 and \u2028",
        "{not a placeholder}",
    ]
    builder = make_builder(tmp_path, system='Rules: "quote" \\ back\nslash')
    built = builder.build(pa.record_batch({"id": [1, 2, 3], "text": texts}), PARTITION)
    lines = parsed_lines(built)
    assert [line["body"]["messages"][1]["content"] for line in lines] == [
        f"Review: {text}" for text in texts
    ]
    assert lines[0]["body"]["messages"][0]["content"] == 'Rules: "quote" \\ back\nslash'


def test_long_and_odd_keys_get_hashed_custom_ids(tmp_path):
    keys = ["plain", "with space", "x" * 100]
    built = make_builder(tmp_path).build(
        pa.record_batch({"id": keys, "text": ["t"] * 3}), PARTITION
    )
    expected = [custom_id_for(PARTITION, key) for key in keys]
    assert [line["custom_id"] for line in parsed_lines(built)] == expected


def test_null_key_is_rejected(tmp_path):
    built = make_builder(tmp_path).build(
        pa.record_batch({"id": [1, None], "text": ["a", "b"]}), PARTITION
    )
    assert len(built) == 1
    assert built.rejected.to_pylist() == [
        {
            "row_number": 1,
            "key": None,
            "custom_id": None,
            "code": RejectCode.NULL_KEY,
            "reason": "key column 'id' is null",
        }
    ]


def test_duplicate_keys_are_rejected_after_the_first_across_batches(tmp_path):
    builder = make_builder(tmp_path)
    first = builder.build(pa.record_batch({"id": [1, 2, 1], "text": ["a", "b", "c"]}), PARTITION)
    second = builder.build(pa.record_batch({"id": [3, 2], "text": ["d", "e"]}), PARTITION)
    assert [line["body"]["messages"][0]["content"] for line in parsed_lines(first)] == [
        "Review: a",
        "Review: b",
    ]
    assert [row["row_number"] for row in first.rejected.to_pylist()] == [2]
    assert [row["row_number"] for row in second.rejected.to_pylist()] == [4]
    for built, key in ((first, "1"), (second, "2")):
        ((rejected_key, code, reason),) = rejections(built)
        assert (rejected_key, code) == (key, RejectCode.DUPLICATE_KEY)
        assert "key column 'id'" in reason
    # A new partition starts afresh.
    again = builder.build(pa.record_batch({"id": [1], "text": ["a"]}), "2024-05-02")
    assert len(again) == 1
    assert again.rejected.num_rows == 0


@pytest.mark.parametrize("max_run", [None, 64])
def test_duplicate_detection_matches_a_set_over_many_batches(tmp_path, monkeypatch, max_run):
    if max_run:  # small runs: remembered keys spread over many of them
        monkeypatch.setattr(KeySet, "_MAX_RUN", max_run)
    rng = random.Random(3)
    builder = make_builder(tmp_path)
    seen, expected, got = set(), [], []
    for _ in range(40):  # enough batches for the remembered keys to be merged several times
        keys = [
            rng.choice([None, *(f"k{rng.randint(0, 400)}" for _ in range(9))]) for _ in range(25)
        ]
        for key in keys:
            expected.append(key is not None and key in seen)
            seen.add(key)
        built = builder.build(pa.record_batch({"id": keys, "text": ["t"] * len(keys)}), PARTITION)
        codes = {row["row_number"]: row["code"] for row in built.rejected.to_pylist()}
        got += [
            codes.get(row) == RejectCode.DUPLICATE_KEY for row in range(len(got), len(got) + 25)
        ]
    assert got == expected


def test_a_batch_of_repeated_keys_only_is_followed_by_a_normal_one(tmp_path):
    builder = make_builder(tmp_path)
    builder.build(pa.record_batch({"id": [1, 2], "text": ["a", "b"]}), PARTITION)
    repeats = builder.build(pa.record_batch({"id": [2, 1], "text": ["c", "d"]}), PARTITION)
    assert len(repeats) == 0 and repeats.rejected.num_rows == 2
    after = builder.build(pa.record_batch({"id": [3, 1], "text": ["e", "f"]}), PARTITION)
    assert [key for key, _, _ in rejections(after)] == ["1"]
    assert after.keys.to_pylist() == ["3"]


@pytest.mark.parametrize("filter_bits", [None, 6])
def test_duplicate_detection_of_odd_keys_across_batches(monkeypatch, filter_bits):
    """Nulls, empty and non-ASCII keys, keys alike but for one byte far in, or for a trailing
    NUL, keys whose length is a multiple of the word: each batch against a set."""
    if filter_bits:  # a bitmap full at once: every key is searched for in the runs
        monkeypatch.setattr(KeySet, "_FILTER_BITS", filter_bits)
    long = "x" * 300
    alike = [
        "", "a", "a\0", "a\0\0", "\0", "abcdefgh", "abcdefgh\0", "abcdefghi", "é", "e\u0301",
        "日本語", long, long + "y", long[:-1] + "y", "y" + long[1:], "😀", "k" * 64, "k" * 65,
    ]  # fmt: skip
    rng = random.Random(11)
    seen, keys = KeySet(), alike + [f"key-{i}" for i in range(200)]
    remembered: set[str] = set()
    for _ in range(30):
        batch = [rng.choice([None, *keys]) for _ in range(rng.randint(1, 60))]
        expected = []
        for key in batch:
            expected.append(key is not None and key in remembered)
            if key is not None:
                remembered.add(key)
        array = pa.array(batch, rng.choice([pa.string(), pa.large_string()]))
        assert seen.repeated(array).tolist() == expected


def test_key_hashes_depend_only_on_the_bytes():
    seeds = np.arange(1, 9, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    values = ["", "a", "a\0", "abcdefgh", "abcdefghi", "z" * 100, "z" * 99 + "y", "日本"]
    whole = keyed_hashes(pa.array(["pad", *values, "pad"], pa.string()), seeds)
    sliced = keyed_hashes(pa.array(["pad", *values, "pad"], pa.large_binary()).slice(1, 8), seeds)
    alone = [keyed_hashes(pa.array([value]), seeds) for value in values]
    for hashes in whole:
        assert len(set(hashes[1:-1].tolist())) == len(values)  # all distinct
    for which in range(2):
        assert whole[which][1:-1].tolist() == sliced[which].tolist()
        assert [single[which][0] for single in alone] == sliced[which].tolist()
    other = keyed_hashes(pa.array(values), seeds[::-1].copy())  # other seeds, other hashes
    assert not set(other[0].tolist()) & set(sliced[0].tolist())


def test_remembered_keys_tell_apart_keys_sharing_their_first_hash():
    run = (np.array([5, 7, 7, 9], np.uint64), np.array([1, 2, 3, 4], np.uint64))
    first = np.array([7, 7, 7, 9, 6], np.uint64)
    second = np.array([3, 2, 8, 4, 1], np.uint64)
    assert _in_run(run, first, second).tolist() == [True, True, False, True, False]


def test_null_empty_and_blank_placeholder_values_are_rejected_naming_the_column(tmp_path):
    builder = make_builder(tmp_path, system="Language: {lang}")
    batch = pa.record_batch(
        {
            "id": [1, 2, 3, 4, 5],
            "text": ["ok", None, "", " \t\n", "ok"],
            "lang": ["en", "en", "en", "en", None],
        }
    )
    built = builder.build(batch, PARTITION)
    assert built.keys.to_pylist() == ["1"]
    assert rejections(built) == [
        ("2", RejectCode.NULL_VALUE, "column 'text' is null"),
        ("3", RejectCode.EMPTY_VALUE, "column 'text' is empty"),
        ("4", RejectCode.EMPTY_VALUE, "column 'text' is empty"),
        ("5", RejectCode.NULL_VALUE, "column 'lang' is null"),
    ]
    assert built.rejected.schema == REJECTED_SCHEMA


def test_text_that_cannot_be_encoded_is_rejected(tmp_path):
    texts = pa.array([b"fine", b"bad \xff byte", "lone \ud800".encode("utf-8", "surrogatepass")])
    built = make_builder(tmp_path).build(
        pa.record_batch({"id": [1, 2, 3], "text": texts}), PARTITION
    )
    assert built.keys.to_pylist() == ["1"]
    assert [(key, code) for key, code, _ in rejections(built)] == [
        ("2", RejectCode.INVALID_TEXT),
        ("3", RejectCode.INVALID_TEXT),
    ]
    assert "column 'text' is not valid UTF-8" in rejections(built)[0][2]


def test_invalid_utf8_inside_a_string_column_is_rejected(tmp_path):
    raw = pa.array([b"ok", b"\xc3\x28"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), 2, raw.buffers())  # unchecked, as parquet may give
    built = make_builder(tmp_path).build(pa.record_batch({"id": [1, 2], "text": text}), PARTITION)
    assert built.keys.to_pylist() == ["1"]
    assert rejections(built)[0][:2] == ("2", RejectCode.INVALID_TEXT)


def test_rows_above_the_context_window_are_rejected_after_an_exact_count(tmp_path):
    builder = make_builder(tmp_path, context_window=40, params={"max_tokens": 10})
    short = "fine"
    # 88 bytes cannot be shown to fit by the byte bound, but they make only 14 tokens.
    repetitive = "a" * 80
    long = " ".join(f"word{i}" for i in range(60))
    built = builder.build(
        pa.record_batch({"id": [1, 2, 3], "text": [short, repetitive, long]}), PARTITION
    )
    assert built.keys.to_pylist() == ["1", "2"]
    ((key, code, reason),) = rejections(built)
    assert (key, code) == ("3", RejectCode.CONTEXT_WINDOW_EXCEEDED)
    assert "columns 'text'" in reason
    assert "context window of gpt-4o-mini: 40 tokens less 10 reserved for output" in reason
    # The row counted exactly carries its exact count as its estimate.
    exact = count_tokens(f"Review: {repetitive}", "gpt-4o-mini") + builder.overhead
    assert int(built.estimated_input_tokens[1]) == exact


def test_a_row_of_hundreds_of_thousands_of_tokens_is_rejected_by_name_not_the_build(tmp_path):
    """A row far beyond the window (300,000 tokens, over a million characters) is one
    rejected row: counting it must not fail the batch it came in."""
    builder = make_builder(tmp_path)
    huge = "ab " * 400_000
    built = builder.build(pa.record_batch({"id": [1, 2], "text": ["fine", huge]}), PARTITION)
    assert built.keys.to_pylist() == ["1"]
    ((key, code, reason),) = rejections(built)
    assert (key, code) == ("2", RejectCode.CONTEXT_WINDOW_EXCEEDED)
    assert f"input of {400_000 + 3 + builder.overhead} tokens" in reason


def test_a_request_line_above_the_file_byte_limit_is_rejected(tmp_path):
    builder = make_builder(tmp_path, limits={"max_bytes_per_file": 1024})
    built = builder.build(pa.record_batch({"id": [1, 2], "text": ["ok", "x" * 2000]}), PARTITION)
    assert built.keys.to_pylist() == ["1"]
    ((key, code, reason),) = rejections(built)
    assert (key, code) == ("2", RejectCode.REQUEST_TOO_LARGE)
    assert "limits.max_bytes_per_file (1024)" in reason


def test_under_a_token_budget_counts_are_exact_and_a_request_above_it_is_rejected(tmp_path):
    builder = make_builder(tmp_path, limits={"enqueued_tokens": 40})
    ids = " ".join(f"{n:08d}" for n in range(10))  # 40 bytes: "10" tokens by bytes / 4
    built = builder.build(pa.record_batch({"id": [1, 2], "text": ["fine", ids]}), PARTITION)
    assert built.keys.to_pylist() == ["1"]
    exact = count_tokens("Review: fine", "gpt-4o-mini") + builder.overhead
    assert built.estimated_input_tokens.tolist() == [exact]
    ((key, code, reason),) = rejections(built)
    assert (key, code) == ("2", RejectCode.TOKEN_BUDGET_EXCEEDED)
    count = count_tokens(f"Review: {ids}", "gpt-4o-mini") + builder.overhead
    assert count > 40 and f"input of {count} tokens" in reason
    assert "more than limits.enqueued_tokens (40)" in reason


@pytest.mark.parametrize("system", ["Label the review. 東京 café", "Label {lang} reviews."])
def test_exact_counts_are_the_sum_of_each_filled_message_whatever_the_column_types(
    tmp_path, system
):
    builder = make_builder(
        tmp_path, limits={"enqueued_tokens": 10_000}, system=system, prompt="{title}: {text}"
    )
    rows = [("en", "Fine", "works 1234 5678"), ("de", "Gut", "läuft"), ("ja", "良い", "動きます")]
    langs, titles, texts = (list(column) for column in zip(*rows, strict=True))
    batch = pa.record_batch(
        {
            "id": pa.array([1, 2, 3]),
            "lang": pa.array(langs, pa.large_string()),
            "title": pa.array(titles, pa.string()),
            "text": pa.array(texts, pa.large_string()),
        }
    )
    built = builder.build(batch, PARTITION)
    expected = [
        count_tokens(system.format(lang=lang), "gpt-4o-mini")
        + count_tokens(f"{title}: {text}", "gpt-4o-mini")
        + builder.overhead
        for lang, title, text in rows
    ]
    assert built.estimated_input_tokens.tolist() == expected
    assert [line["body"]["messages"][0]["content"] for line in parsed_lines(built)] == [
        system.format(lang=lang) for lang in langs
    ]


def test_estimates_are_a_quarter_of_the_input_bytes_plus_framing(tmp_path):
    builder = make_builder(tmp_path, system="Sys")
    built = builder.build(pa.record_batch({"id": [1], "text": ["abcdefgh"]}), PARTITION)
    input_bytes = len("Sys") + len("Review: abcdefgh")
    assert built.estimated_input_tokens.tolist() == [-(-input_bytes // 4) + builder.overhead]


def test_placeholder_naming_no_column_is_a_spec_error_listing_the_columns(tmp_path):
    builder = make_builder(tmp_path, prompt="{txt}")
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pytest.raises(SpecError, match=r"request.prompt: placeholder \{txt\} .*'id', 'text'"):
        builder.check_schema(schema)
    with pytest.raises(SpecError, match=r"placeholder \{txt\}"):
        builder.build(pa.record_batch({"id": [1], "text": ["a"]}), PARTITION)


def test_missing_key_column_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match=r"source.key: column 'id'"):
        make_builder(tmp_path).check_schema(pa.schema([("text", pa.string())]))


def test_format_specs_in_placeholders_are_refused(tmp_path):
    with pytest.raises(SpecError, match=r"\{text!r\} at character 1 .*has a format spec"):
        make_builder(tmp_path, prompt="{text!r}")


def test_json_in_a_prompt_is_written_with_doubled_braces(tmp_path):
    builder = make_builder(tmp_path, prompt='Answer as {{"label": "..."}} for: {text}')
    built = builder.build(pa.record_batch({"id": [1], "text": ["late parcel"]}), PARTITION)
    (line,) = parsed_lines(built)
    assert line["body"]["messages"][0]["content"] == 'Answer as {"label": "..."} for: late parcel'
    assert builder.columns == ["id", "text"]


@pytest.mark.parametrize(
    ("request_texts", "message"),
    [
        (
            {"prompt": 'Answer as {"label": "x"}: {text}'},
            r'request.prompt: \{"label": "x"\} at character 11',
        ),
        ({"prompt": "Review { {text}"}, r"request.prompt: a single '\{' at character 8"),
        ({"prompt": "{text} }"}, r"request.prompt: a single '\}' at character 8"),
        ({"prompt": "{} {text}"}, r"request.prompt: \{\} at character 1"),
        (
            {"system": "Reply {", "prompt": "{text}"},
            r"request.system: a single '\{' at character 7",
        ),
    ],
)
def test_a_brace_that_is_no_placeholder_is_a_spec_error_naming_text_and_place(
    tmp_path, request_texts, message
):
    with pytest.raises(SpecError, match=message) as error:
        make_builder(tmp_path, **request_texts)
    assert "write {{ and }} for literal braces" in str(error.value)


def test_builder_reads_only_the_key_and_placeholder_columns(tmp_path):
    builder = make_builder(tmp_path, system="{lang}", prompt="{text} {lang}")
    assert builder.columns == ["id", "lang", "text"]


def test_iterating_built_requests_gives_id_line_and_estimate(tmp_path):
    built = make_builder(tmp_path).build(pa.record_batch({"id": [1], "text": ["a"]}), PARTITION)
    ((custom_id, line, tokens),) = list(built)
    assert custom_id == "2024-05-01:1"
    assert orjson.loads(line)["custom_id"] == custom_id
    assert tokens == int(built.estimated_input_tokens[0])


def test_estimates_of_existing_lines_match_the_builder(tmp_path):
    builder = make_builder(tmp_path, system="Sys {lang}")
    built = builder.build(
        pa.record_batch({"id": [1, 2], "text": ["abc", "longer text"], "lang": ["en", "fr"]}),
        PARTITION,
    )
    requests = [orjson.loads(line) for line in built.lines.to_pylist()]
    assert estimate_request_tokens(requests).tolist() == built.estimated_input_tokens.tolist()


def test_json_escape_equals_orjson_on_random_text():
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x30)] + list('aé日\\"') + ["😀", "\u2028", "\x7f"]
    for _ in range(200):
        values = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(1, 12))
        ]
        array = pa.array(values, rng.choice([pa.string(), pa.large_string()]))
        if len(values) > 2:  # sliced arrays have offsets that do not start at 0
            array, values = array.slice(1, len(values) - 2), values[1:-1]
        assert json_escape(array).to_pylist() == [orjson.dumps(v)[1:-1] for v in values]


def test_source_columns_are_the_columns_a_build_reads(tmp_path):
    builder = make_builder(
        tmp_path, prompt="{title}: {text} ({title})", system="Label {lang} text; {id} is the key."
    )
    assert source_columns(builder.spec) == builder.columns == ["id", "lang", "title", "text"]
