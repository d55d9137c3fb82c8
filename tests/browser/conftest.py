"""Browser tests: the dashboard in real headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright's async API; `playwright install` is never needed).

The web app runs in this process on a fresh PostgreSQL database with the session's
ClickHouse, its own Kafka topic and analytics worker; proxies run as child processes
following PostgreSQL, exactly as in production. Every page visited is saved as a PNG at
1280x800 and at 390x844 under tests/browser/screenshots/ for review.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Page, async_playwright, expect

from tests.integration.control import ControlPlane, PgProxy
from tests.servers import analytics_worker

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
SIZES = ((1280, 800), (390, 844))
EXPECTED_4XX = "Failed to load resource: the server responded with a status of 4"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def benv(redis_url, kafka_brokers, clickhouse_url):
    suffix = uuid.uuid4().hex[:8]
    return {"REDIS_URL": redis_url, "KAFKA_BROKERS": kafka_brokers,
            "KAFKA_TOPIC": f"browser-events-{suffix}", "CLICKHOUSE_URL": clickhouse_url,
            "CLICKHOUSE_DATABASE": f"rg_browser_{suffix}", "RATEGUARD_ENV": "development",
            "KAFKA_LINGER_MS": "5", "ANALYTICS_BATCH_SECONDS": "0.2",
            "ANALYTICS_GROUP": f"browser-{suffix}", "UPSTREAM_CONNECT_TIMEOUT": "2"}


@pytest_asyncio.fixture(scope="session")
async def banalytics(benv):
    async with analytics_worker(benv) as worker:
        yield worker


@pytest_asyncio.fixture(scope="session")
async def dashboard(new_database, banalytics, benv):
    """The web app (pages + management API) on a fresh database; last_used_at moves
    every second."""
    plane = ControlPlane(await new_database(), banalytics.clickhouse,
                         benv["CLICKHOUSE_DATABASE"], usage_interval=1)
    await plane.start()
    yield plane
    await plane.stop()


@pytest.fixture(scope="session")
def start_proxy(dashboard, benv, workdir):
    """start_proxy() -> a `rateguard proxy` process following the dashboard's database."""
    started: list[PgProxy] = []

    def start() -> PgProxy:
        proxy = PgProxy(dashboard.database_url, benv, workdir,
                        f"browser-proxy-{uuid.uuid4().hex[:6]}")
        started.append(proxy.start())
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def screenshots():
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest_asyncio.fixture(scope="session")
async def browser():
    assert Path(CHROMIUM).exists(), \
        "Debian's chromium is needed: apt-get install -y chromium (scripts/test.sh does it)"
    playwright = await async_playwright().start()
    chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                                headless=True)
    expect.set_options(timeout=10_000)
    yield chromium
    await chromium.close()
    await playwright.stop()


@pytest_asyncio.fixture
async def page(browser, dashboard):
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800}, base_url=dashboard.url,
        permissions=["clipboard-read", "clipboard-write"])
    context.set_default_timeout(10_000)
    tab = await context.new_page()
    problems: list[str] = []
    # Refused form submissions answer 4xx on purpose; anything else logged as an error
    # (a script error, a CSP violation, a missing asset) fails the test.
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" and not
           m.text.startswith(EXPECTED_4XX) else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.problems = problems
    yield tab
    await context.close()
    assert not problems, f"the browser reported errors: {problems}"


WIDEST = """() => {
  const clipped = e => { for (let p = e.parentElement; p; p = p.parentElement) {
    if (getComputedStyle(p).overflowX !== 'visible') return true; } return false; };
  return Array.from(document.querySelectorAll('body *'))
    .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1
            && !clipped(e))
    .slice(0, 8).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
      + (typeof e.className === 'string' && e.className ? '.' + e.className.split(' ').join('.') : '')
      + ' ' + Math.round(e.getBoundingClientRect().right));
}"""


async def shoot(page: Page, name: str, folder: Path) -> None:
    """Save the page at desktop and phone sizes; fail on horizontal overflow."""
    for width, height in SIZES:
        await page.set_viewport_size({"width": width, "height": height})
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if overflow > 0:
            culprits = await page.evaluate(WIDEST)
            raise AssertionError(f"{name} at {width}px is {overflow}px wider than the "
                                 f"window; widest elements: {culprits}")
        await page.screenshot(path=str(folder / f"{name}-{width}x{height}.png"),
                              full_page=True)
    await page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})
