"""The core never imports Dagster: notebooks and scripts use it without Dagster's import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test imports in a fresh interpreter

CORE_MODULES = (
    "batch_pipeline",
    "batch_pipeline.core",
    "batch_pipeline.core.pipeline",
    "batch_pipeline.core.backends.openai",
    "batch_pipeline.local_api.server",
)


def imported_modules(statement: str) -> set[str]:
    """The modules `statement` imports in a fresh interpreter (from `-X importtime`)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # Lines look like "import time:   123 |   456 |     package.module"
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


def is_dagster(module: str) -> bool:
    top = module.split(".")[0]
    return top == "dagster" or top.startswith("dagster_") or module == "batch_pipeline.dagster"


def test_the_core_never_imports_dagster() -> None:
    modules = imported_modules("; ".join(f"import {m}" for m in CORE_MODULES))
    assert set(CORE_MODULES) <= modules
    assert not sorted(m for m in modules if is_dagster(m))


def test_the_dagster_layer_does_import_dagster() -> None:
    assert any(is_dagster(m) for m in imported_modules("import batch_pipeline.dagster"))


def test_a_star_import_of_the_package_takes_the_core_alone() -> None:
    modules = imported_modules("from batch_pipeline import *; assert callable(load_pipeline)")
    assert not sorted(m for m in modules if is_dagster(m))


def test_the_tokenizer_is_imported_only_when_tokens_are_counted() -> None:
    """Its import alone takes about a third of a second: a CLI call or a Dagster run that
    counts no token does not pay for it."""
    assert "bpe_openai" not in imported_modules("; ".join(f"import {m}" for m in CORE_MODULES))
    counted = imported_modules(
        "from batch_pipeline.core.tokens import count_tokens; "
        "assert count_tokens('hello world', 'gpt-4o-mini') == 2"
    )
    assert "bpe_openai" in counted
