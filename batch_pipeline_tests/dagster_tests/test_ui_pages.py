"""What a data engineer reads in the Dagster UI after the demo, in headless Chromium: the
`results` page of a day with failures, the failed-share check of that day, the sensor page
while a rebuilt day is in flight, and the asset graph of the judge over the triage answers.

The demo's runs are recorded in a Dagster home of the test's own; `dagster-webserver` and
`dagster-daemon` (which ticks the sensor) serve it on a free port. With
BATCH_PIPELINE_SCREENSHOTS=docs, each page's screenshot replaces the one the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from batch_pipeline.dagster.assets import REBUILD_TAG
from batch_pipeline.demo import (
    DEMO_API_URL_ENV,
    DEMO_DAYS,
    DEMO_DIR_ENV,
    QUIET_RUN_CONFIG,
    run_demo,
)
from batch_pipeline.local_api.server import run_local_batch_api
from batch_pipeline_tests.dagster_tests.dagster_commands import BIN, free_port, webserver_command

# The demo, two Dagster processes and a browser: slow to start on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FAILED_DAY = DEMO_DAYS[2]  # 8 of its 100 rows fail with invalid_request: above the 5% limit
IN_FLIGHT_DAY = DEMO_DAYS[1]  # rebuilt; its <<hang>> row keeps the batch open for an hour
LOCATION = "batch_pipeline.definitions"
DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS_ENV = "BATCH_PIPELINE_SCREENSHOTS"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
STARTUP_SECONDS = 180.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (`.ci/run` installs them)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skip: an extra of the test set-up)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def ui() -> Iterator[str]:
    """The Dagster UI's address, over a home holding the demo's runs, with the daemon ticking
    the sensor while one day, rebuilt, is in flight on a local Batch API."""
    # a folder named after the project, since its path shows in the screenshots
    root = Path(tempfile.mkdtemp(prefix="batch_pipeline_ui_"))
    home, demo = root / "dagster_home", root / "demo"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert run_demo(demo, dagster_home=home, echo=False).summary.loc[FAILED_DAY, "failed"] > 0
    (root / "workspace.yaml").write_text(f"load_from:\n  - python_module: {LOCATION}\n")
    with (
        run_local_batch_api(root / "batch_api", port=0, completion_window_seconds=3600) as api,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, value in {
            "DAGSTER_HOME": str(home),
            DEMO_DIR_ENV: str(demo),
            DEMO_API_URL_ENV: api,
        }.items():
            env.setenv(name, value)
        _rebuild_in_flight(IN_FLIGHT_DAY)
        port = free_port()
        processes = [
            _start(root, [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
            _start(root, webserver_command(port)),
        ]
        try:
            address = f"http://127.0.0.1:{port}"
            _wait_for(f"{address}/server_info", processes, root)
            yield address
        finally:
            for process in processes:
                os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each page's screenshot goes: docs/ when asked, else the test's own folder."""
    if os.environ.get(SCREENSHOTS_ENV) == "docs":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, wide enough for the metadata tables."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1600,1000"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_results_page_of_a_day_with_failures(
    ui: str, browser: WebDriver, screenshots: Path
) -> None:
    browser.set_window_size(1600, 1800)
    _open(browser, f"{ui}/assets/ticket_triage/results?view=partitions&partition={FAILED_DAY}")
    _wait_for_text(browser, "saved_percent")
    # short labels, numbers a person reads at a glance, and USD in the label
    assert _metadata(browser, "failed") == "8"
    assert re.fullmatch(r"0\.\d+", _metadata(browser, "cost_usd"))
    assert float(_metadata(browser, "live_cost_usd")) > float(_metadata(browser, "cost_usd"))
    assert _metadata(browser, "saved_percent") == "50"
    page = _page_text(browser)
    assert "batch_pipeline/" not in page
    assert page.count("part-0.parquet") == 1  # one path
    assert _metadata(browser, "path").endswith(f"partition={FAILED_DAY}/part-0.parquet")
    # the failures table: status, error code, rows, one sample message
    failures = _table_rows(browser, "failures")
    assert failures[0] == ["status", "error_code", "rows", "sample_message"]
    assert failures[1][:3] == ["failed", "invalid_request", "8"] and failures[1][3]
    # rows without an answer come first in the preview
    preview = _table_rows(browser, "preview")
    assert preview[0][:2] == ["ticket_id", "status"]
    assert [row[1] for row in preview[1:]] == ["failed"] * 5
    assert browser.save_screenshot(str(screenshots / "ui-results.png"))


def test_the_failed_share_check_says_its_limit_and_what_failed(
    ui: str, browser: WebDriver, screenshots: Path
) -> None:
    browser.set_window_size(1600, 1000)
    check = "failed_share_within_limit"
    _open(browser, f"{ui}/assets/ticket_triage/results?view=checks&checkDetail={check}")
    _wait_for_text(browser, "At most 5.0% of the day's rows end without an answer")
    _click_last(browser, "Partitions")
    _click_last(browser, FAILED_DAY)
    _wait_for_text(browser, "8 of 100 rows without an answer (8.0%), above the limit of 5.0%")
    assert _metadata(browser, "failed_share") == "0.08"
    assert _metadata(browser, "unanswered_rows") == "8"
    failures = _table_rows(browser, "failures")
    assert failures[1][:3] == ["failed", "invalid_request", "8"]
    page = _page_text(browser)
    for constant in ("max_failed_share", "generation", "repeated_sample"):
        assert constant not in page
    assert browser.save_screenshot(str(screenshots / "ui-failed-share-check.png"))


def test_the_sensor_page_says_what_it_waits_for(
    ui: str, browser: WebDriver, screenshots: Path
) -> None:
    browser.set_window_size(1600, 1000)
    waiting = (
        rf"Polled: .*\. Waiting: 1 batch in flight for {IN_FLIGHT_DAY} \(attempt 1 of 3, "
        r"\d+ of \d+ requests done, expires \d{4}-\d\d-\d\d \d\d:\d\d UTC\)\."
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:  # the daemon's first tick comes a little after it starts
        _open(browser, f"{ui}/locations/{LOCATION}/sensors/ticket_triage_batch_sensor")
        ticks = browser.find_elements(By.XPATH, _latest_tick_tag())
        if ticks or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert ticks, _page_text(browser)
    ActionChains(browser).move_to_element(ticks[0]).perform()
    tooltip = WebDriverWait(browser, 20).until(
        lambda b: next(
            (e.text for e in b.find_elements(By.XPATH, "//*[starts-with(text(), 'Polled: ')]")),
            None,
        )
    )
    assert re.match(waiting, tooltip), tooltip
    cursor = _metadata(browser, "Cursor")
    assert re.search(r"polled_at=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cursor), cursor
    assert browser.save_screenshot(str(screenshots / "ui-sensor.png"))


def test_the_asset_graph_shows_the_judge_downstream_of_the_triage_results(
    ui: str, browser: WebDriver, screenshots: Path
) -> None:
    browser.set_window_size(1600, 1000)
    _open(
        browser,
        f"{ui}/assets/ticket_triage_judge/results?view=lineage&lineageScope=upstream"
        "&lineageDepth=5",
    )
    _wait_for_text(browser, "ticket_triage_judge")
    time.sleep(3)  # the graph lays itself out
    page = _page_text(browser)
    for pipeline in ("ticket_triage", "ticket_triage_judge"):
        assert pipeline in page.split(), page
    assert browser.save_screenshot(str(screenshots / "ui-asset-graph.png"))


# -- set-up ----------------------------------------------------------------------------------


def _rebuild_in_flight(day: str) -> None:
    """Submit the day again as a new generation through the UI's definitions."""
    from batch_pipeline.definitions import ui_demo_defs

    defs = ui_demo_defs()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("ticket_triage_submit_job").execute_in_process(
            partition_key=day,
            instance=instance,
            tags={REBUILD_TAG: "true"},
            run_config=QUIET_RUN_CONFIG,
        )
    assert result.success


def _start(root: Path, command: list[str]) -> subprocess.Popen:
    """A Dagster command in its own process group (stopped as a whole, code servers too)."""
    log = (root / f"{Path(command[0]).name}.log").open("w")
    return subprocess.Popen(
        command,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(url: str, processes: list[subprocess.Popen], root: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            break
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    logs = {path.name: path.read_text()[-3000:] for path in root.glob("*.log")}
    raise AssertionError(f"the Dagster UI did not start: {logs}")


# -- reading a page ---------------------------------------------------------------------------


def _open(browser: WebDriver, url: str) -> None:
    """Open `url`, dismissing the UI's one-time welcome dialog if it shows."""
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda b: "Automation" in _page_text(b))
    time.sleep(2)
    for button in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        button.click()


def _page_text(browser: WebDriver) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def _wait_for_text(browser: WebDriver, text: str) -> None:
    WebDriverWait(browser, 60).until(lambda b: text in _page_text(b), f"no {text!r} on the page")


def _click_last(browser: WebDriver, text: str) -> None:
    """Click the last element reading `text` (tabs and lists come after the page's header)."""
    found = browser.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
    assert found, f"no {text!r} to click"
    browser.execute_script("arguments[0].click()", found[-1])
    time.sleep(2)


def _metadata(browser: WebDriver, label: str) -> str:
    """The text in the cell beside the metadata label `label`."""
    cell = browser.find_element(
        By.XPATH, f"//td[normalize-space()='{label}']/following-sibling::td[1]"
    )
    return cell.text.strip()


def _table_rows(browser: WebDriver, label: str) -> list[list[str]]:
    """The header and rows of the table shown beside the metadata label `label`."""
    table = browser.find_element(
        By.XPATH, f"//td[normalize-space()='{label}']/following-sibling::td[1]//table"
    )
    return [
        [cell.text.strip() for cell in row.find_elements(By.XPATH, "./th|./td")]
        for row in table.find_elements(By.XPATH, ".//tr")
    ]


def _latest_tick_tag() -> str:
    """The tag of the sensor's latest tick, whose tooltip is the tick's skip reason."""
    return (
        "//td[normalize-space()='Latest tick']/following-sibling::td"
        "//*[normalize-space(text())='0 runs requested']"
    )
