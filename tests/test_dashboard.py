"""The dashboard in a real headless Chromium, against a real `corral run`.

Debian's chromium (`/usr/bin/chromium`, which .ci/run installs), driven by
playwright for Python: playwright never downloads a browser here. Each test
starts its own corral (web, a process group, two jobs) and its own browser,
and leaves neither behind: the browser is closed, and the harness checks
that no process of corral's tree is left.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import Corral

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
ADMIN_TOKEN = "admin-token-for-the-dashboard-tests"
READ_TOKEN = "read-only-token-for-the-dashboard-tests"
WAIT = 20_000  # ms a page has to show what a test waits for
LOG_LINES_KEPT = 500  # the page's bound (MAX_LOG_LINES in dashboard.js)

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    status = 500 if scope["path"] == "/fail" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})
"""

TASKS = """
def ok():
    print("all good", flush=True)


def broken():
    print("about to fail", flush=True)
    raise ValueError("disk full")
"""

SYSTEM = """
[web]
app = "app:app"
port = 0
workers = 2

[processes.consumer]
command = "sleep 3600"
replicas = 2
stop_timeout = "2s"

[jobs.ok]
call = "tasks:ok"
every = "1h"

[jobs.broken]
call = "tasks:broken"
every = "1h"
"""


@pytest.fixture(autouse=True)
def _no_control_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_CONTROL", "CORRAL_TOKEN", "CORRAL_READ_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless Debian chromium, closed after the test."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Dashboard:
    """A running corral serving its dashboard, and how to reach it."""

    def __init__(self, server: Corral, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.url = server.wait_for(r"dashboard on (http://\S+/):", timeout=20)[1]

    def login_link(self, *flags: str) -> str:
        """What `corral dashboard` prints, run where corral runs."""
        done = subprocess.run(
            [sys.executable, "-m", "corral", "dashboard", "--no-browser", *flags],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def open(self, browser: Browser, token: str = ADMIN_TOKEN) -> Page:
        """A new browser context logged in with `token` through the page's form."""
        page = browser.new_context().new_page()
        page.goto(self.url)
        page.fill("#token", token)
        page.click("#login-form button")
        expect(page.locator("#dashboard")).to_be_visible(timeout=WAIT)
        return page

    def row(self, page: Page, name: str, pid: int | None = None) -> Any:
        selector = f'#processes tr[data-process="{name}"]'
        row = page.locator(selector)
        if pid is not None:
            pid_cell = page.locator('td[data-col="pid"]', has_text=re.compile(f"^{pid}$"))
            row = row.filter(has=pid_cell)
        return row

    def status(self) -> dict[str, Any]:
        return self.server.status()

    def pids(self, group: str) -> dict[str, int]:
        return {
            row["name"]: row["pid"]
            for row in self.status()["processes"]
            if row["group"] == group and row["pid"] is not None and row["kind"] != "zygote"
        }


def _write(directory: Path, system: str = SYSTEM) -> Path:
    for name, text in {"corral.toml": system, "app.py": APP, "tasks.py": TASKS}.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return directory


@pytest.fixture
def running(corral: Callable[..., Corral], tmp_path: Path) -> Iterator[Dashboard]:
    """corral running SYSTEM with the dashboard on a free port, every process up."""
    _write(tmp_path)
    env = {"CORRAL_TOKEN": ADMIN_TOKEN, "CORRAL_READ_TOKEN": READ_TOKEN}
    server = corral("run", "--control", "127.0.0.1:0", cwd=tmp_path, env=env)
    dashboard = Dashboard(server, tmp_path)
    server.wait_workers(2)
    server.wait_status("consumers up", lambda s: len(_live(s, "consumer")) == 2)
    yield dashboard
    assert server.stop() == 0


def _live(status: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [r for r in status["processes"] if r["group"] == group and r["pid"] is not None]


def _shown(page: Page) -> set[tuple[str, str]]:
    """(name, pid) of every process row the page shows."""
    rows = page.eval_on_selector_all(
        "#processes tbody tr[data-process]",
        "rows => rows.map(r => [r.dataset.process, r.querySelector('[data-col=pid]').textContent])",
    )
    return {(name, pid) for name, pid in rows}


def _served(page: Page) -> int:
    """The requests the page shows for the web workers, summed."""
    cells = page.eval_on_selector_all(
        '#processes tr[data-process^="web."] [data-col="requests"]',
        "cells => cells.map(c => c.textContent)",
    )
    return sum(int(n) for n in cells if n.isdigit())


def _until(what: str, probe: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {value!r})")
        time.sleep(0.1)


def _action(page: Page, what: str) -> Any:
    """The page's entry for the action `what`, once it has its result."""
    entry = page.locator("#activity li", has_text=what).first
    expect(entry).to_have_class(re.compile(r"\b(done|failed)\b"), timeout=60_000)
    return entry


# -- what the page shows ------------------------------------------------------------------


def test_every_process_and_job_appears_after_a_one_time_login(running, browser):
    link = running.login_link()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?code=[\w-]{20,}", link), link
    page = browser.new_context().new_page()
    page.goto(link)
    expect(page.locator("#dashboard")).to_be_visible(timeout=WAIT)
    assert page.url == running.url  # the code is gone from the address bar
    # The code was good once: a second visit asks for a token.
    again = browser.new_context().new_page()
    again.goto(link)
    expect(again.locator("#login")).to_be_visible(timeout=WAIT)
    expect(again.locator("#login-error")).to_contain_text("expired or was used")

    def same_as_status() -> bool:
        status = running.status()
        wanted = {(r["name"], str(r["pid"])) for r in status["processes"]}
        return _shown(page) == wanted

    _until("the page lists every process of `corral status`", same_as_status)
    names = {name for name, _ in _shown(page)}
    assert {"manager", "web.zygote", "web.1", "web.2", "consumer.1", "consumer.2"} <= names
    assert "jobs.zygote" in names
    for job, schedule in (("ok", "every 3600s"), ("broken", "every 3600s")):
        row = page.locator(f'#jobs tr[data-job="{job}"]')
        expect(row.locator('[data-col="schedule"]')).to_have_text(schedule)
        expect(row.locator('[data-col="next"]')).to_have_text(re.compile(r"^in \d"))
    expect(page.locator("#role")).to_have_text("admin")

    # Requests show in the charts' series and, access lines, in the log.
    base = running.server.url()
    for _ in range(20):
        httpx.get(f"{base}/from-the-test", timeout=10)
    expect(page.locator("#log")).to_contain_text('"GET /from-the-test HTTP/1.1" 200', timeout=WAIT)
    expect(page.locator("#now-rate")).not_to_have_text(re.compile(r"^(0\.0)?$"), timeout=WAIT)
    _until("the page counts the requests", lambda: _served(page) >= 20)


def test_a_restart_from_the_page_replaces_the_process(running, browser):
    page = running.open(browser)
    old = running.pids("web")["web.2"]
    running.row(page, "web.2", old).get_by_role("button", name="Restart").click()
    entry = _action(page, "restart web.2")
    expect(entry).to_have_class(re.compile(r"\bdone\b"))
    new = running.pids("web")["web.2"]
    assert new != old
    expect(entry).to_contain_text(f"was pid {old}, now pid {new}")
    expect(running.row(page, "web.2", new).locator('[data-col="state"]')).to_have_text("ready")
    _until("the old web.2 gone", lambda: not psutil.pid_exists(old) or _zombie(old))
    assert running.server.wait_workers(2)["web.2"] == new
    running.server.wait_for(r'control: admin \(dashboard\): POST /restart \{"target": "web\.2"\}')


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_scale_from_the_page_changes_the_count(running, browser):
    page = running.open(browser)
    page.fill('input[data-scale="web"]', "3")
    page.locator('.group[data-group="web"]').get_by_role("button", name="Scale").click()
    expect(_action(page, "scale web to 3")).to_have_class(re.compile(r"\bdone\b"))
    expect(running.row(page, "web.3").locator('[data-col="state"]')).to_have_text("ready")
    assert set(running.server.wait_workers(3)) == {"web.1", "web.2", "web.3"}

    page.fill('input[data-scale="consumer"]', "1")
    page.locator('.group[data-group="consumer"]').get_by_role("button", name="Scale").click()
    expect(_action(page, "scale consumer to 1")).to_have_class(re.compile(r"\bdone\b"))
    running.server.wait_status("one consumer", lambda s: len(_live(s, "consumer")) == 1)
    expect(running.row(page, "consumer.2")).to_have_count(0, timeout=WAIT)


def test_run_now_adds_a_run_to_the_jobs_history(running, browser):
    page = running.open(browser)
    history = page.locator('#jobs tr[data-job="ok"] .run')
    expect(history).to_have_count(0)
    page.locator('#jobs tr[data-job="ok"]').get_by_role("button", name="Run now").click()
    expect(_action(page, "run ok now")).to_contain_text("run #1: ok")
    expect(history).to_have_count(1)
    expect(history.first).to_have_class(re.compile(r"\bok\b"))
    expect(page.locator('#jobs tr[data-job="ok"] [data-col="counts"]')).to_have_text("1 / 0")
    job = next(j for j in running.status()["jobs"] if j["name"] == "ok")
    assert (job["runs"], job["failures"], job["last_run"]["result"]) == (1, 0, "ok")
    history.first.click()  # its output, on demand
    expect(page.locator("#run-text")).to_have_text("all good")


def test_a_failed_job_shows_its_traceback(running, browser):
    page = running.open(browser)
    page.locator('#jobs tr[data-job="broken"]').get_by_role("button", name="Run now").click()
    expect(_action(page, "run broken now")).to_have_class(re.compile(r"\bfailed\b"))
    failure = page.locator('#jobs tr[data-failure="broken"] pre.traceback')
    expect(failure).to_contain_text("Traceback (most recent call last):", timeout=WAIT)
    expect(failure).to_contain_text('raise ValueError("disk full")')
    expect(failure).to_contain_text("ValueError: disk full")
    assert "about to fail" not in failure.inner_text()  # the traceback, not the whole output
    page.locator('#jobs tr[data-job="broken"] .run.failed').first.click()
    expect(page.locator("#run-text")).to_contain_text("about to fail")
    expect(page.locator("#run-title")).to_contain_text("failed: exit code 1")


# -- who may do what ----------------------------------------------------------------------


def test_the_read_only_token_sees_everything_but_cannot_act(running, browser):
    page = running.open(browser, READ_TOKEN)
    expect(page.locator("#role")).to_have_text("read-only")
    expect(running.row(page, "consumer.1")).to_have_count(1, timeout=WAIT)
    expect(page.locator("#log")).to_contain_text("listening on", timeout=WAIT)  # logs too
    for name in ("Restart", "Scale", "Run now", "Reload", "Reload everything"):
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
    before = running.pids("consumer")
    # The page's own script, with the read-only session cookie, is refused.
    answers = page.evaluate(
        """async () => {
            const calls = [["/restart", {target: "consumer.1"}], ["/scale", {counts: {web: 3}}],
                           ["/jobs/ok/run", {}], ["/reload", {}], ["/stop", {}]];
            const answers = [];
            for (const [path, body] of calls) {
                const r = await fetch(path, {method: "POST", body: JSON.stringify(body),
                                             headers: {"content-type": "application/json"}});
                answers.push([r.status, (await r.json()).error]);
            }
            return answers;
        }"""
    )
    assert answers == [[403, "the read-only token cannot change anything"]] * 5
    running.server.wait_for(r"control: read-only \(dashboard\): POST /restart refused")
    time.sleep(1)  # what a restart would have done by now: a new consumer.1
    assert running.pids("consumer") == before
    assert len(running.pids("web")) == 2
    assert next(j for j in running.status()["jobs"] if j["name"] == "ok")["runs"] == 0
    assert running.server.proc.poll() is None
    assert READ_TOKEN not in running.server.output and ADMIN_TOKEN not in running.server.output


def test_a_cross_origin_post_is_refused(running, browser):
    page = running.open(browser)
    context = page.context
    cookie = next(c for c in context.cookies() if c["name"].startswith("corral-session-"))
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert page.evaluate("document.cookie") == ""  # no script of the page can read it
    before = running.pids("consumer")
    # Another web app on this host: another port is the same site, so the cookie goes along.
    attack = f"""<script>
        fetch("{running.url}restart", {{method: "POST", mode: "no-cors", credentials: "include",
               body: JSON.stringify({{target: "consumer.1"}})}})
            .then(() => document.title = "sent", () => document.title = "failed");
    </script>"""
    with _serving(attack) as other:
        evil = context.new_page()
        evil.goto(other)
        expect(evil).to_have_title("sent", timeout=WAIT)
    # The cookie came along (the session is named), the Origin refused it.
    running.server.wait_for(
        r"control: admin \(dashboard\): POST /restart refused: a call with the dashboard's "
        r"cookie must come from the dashboard's page"
    )
    # The same without a browser: the cookie with a foreign Origin, with none, then the right one.
    jar = {cookie["name"]: cookie["value"]}
    post = lambda **headers: httpx.post(  # noqa: E731
        f"{running.url}restart", json={"target": "consumer.1"}, cookies=jar, headers=headers
    )
    assert post(Origin="http://127.0.0.1:9").status_code == 403
    assert post().status_code == 403
    assert post(**{"Sec-Fetch-Site": "same-site"}).status_code == 403
    assert running.pids("consumer") == before
    allowed = post(Origin=running.url.rstrip("/"))
    assert allowed.status_code == 200, allowed.text

    def restarted() -> bool:
        return running.pids("consumer").get("consumer.1") not in (None, before["consumer.1"])

    _until("consumer.1 restarted by the call from the dashboard's origin", restarted)


@contextlib.contextmanager
def _serving(html: str) -> Iterator[str]:
    """A page served on another port of 127.0.0.1, by a plain HTTP server: its URL."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_page_without_a_token_asks_for_one_and_shows_nothing(running, browser):
    page = browser.new_context().new_page()
    page.goto(running.url)
    expect(page.locator("#login")).to_be_visible(timeout=WAIT)
    expect(page.locator("#dashboard")).to_be_hidden()
    page.fill("#token", "not-the-token")
    page.click("#login-form button")
    expect(page.locator("#login-error")).to_have_text("That is not a token of this corral.")
    time.sleep(2.5)  # a poll's worth: nothing comes in meanwhile
    text = page.locator("body").inner_text()
    status = running.status()
    for row in status["processes"]:
        assert row["name"] not in text and str(row["pid"]) not in text
    assert page.locator("#processes tbody tr").count() == 0
    assert page.locator("#log .line").count() == 0
    # What the page's script could ask without a session: nothing.
    answers = page.evaluate(
        """async () => Promise.all(["/dashboard/state", "/dashboard/logs", "/status", "/logs",
                                    "/dashboard/run?job=ok&number=1"]
            .map(path => fetch(path).then(r => r.status)))"""
    )
    assert answers == [401] * 5
    assert not page.context.cookies()


# -- many processes, a busy log -------------------------------------------------------------

CHATTY = """
import itertools, sys, time
for n in itertools.count():
    print(f"line {n} " + "x" * 60)
    if n % 100 == 0:
        sys.stdout.flush()
        time.sleep(0.05)
"""


@pytest.mark.timeout(120)
def test_64_processes_and_a_busy_log_keep_the_page_responsive(corral, tmp_path, browser):
    # manager, web.zygote, web.1-2, idle.1-59, chatty.1: 64 processes; chatty prints ~2000 lines/s.
    (tmp_path / "chatty.py").write_text(CHATTY)
    system = f"""
        [web]
        app = "app:app"
        port = 0
        workers = 2

        [processes.idle]
        command = "sleep 3600"
        replicas = 59
        stop_timeout = "2s"

        [processes.chatty]
        command = "{sys.executable} -u chatty.py"
        stop_timeout = "2s"
    """
    _write(tmp_path, system)
    env = {"CORRAL_TOKEN": ADMIN_TOKEN}
    server = corral("run", "--control", "127.0.0.1:0", cwd=tmp_path, env=env)
    dashboard = Dashboard(server, tmp_path)
    server.wait_workers(2)
    server.wait_status("64 processes", lambda s: len([r for r in s["processes"] if r["pid"]]) == 64)
    page = dashboard.open(browser)
    expect(page.locator("#processes tbody tr[data-process]")).to_have_count(64, timeout=WAIT)
    expect(page.locator("#log")).to_contain_text("line ", timeout=WAIT)
    # Measure, in the page, the longest the main thread was busy over 8 s of live updates.
    lag = page.evaluate(
        """() => new Promise(resolve => {
            let worst = 0, last = performance.now();
            const timer = setInterval(() => {
                const now = performance.now();
                worst = Math.max(worst, now - last - 50);
                last = now;
            }, 50);
            setTimeout(() => { clearInterval(timer); resolve(worst); }, 8000);
        })"""
    )
    lines = page.locator("#log .line").count()
    assert 0 < lines <= LOG_LINES_KEPT, lines
    received = int(re.search(r"(\d+) lines received", page.inner_text("#log-note"))[1])
    assert received > 4 * LOG_LINES_KEPT, received  # the log was busy: most lines came and went
    assert lag < 1000, f"the page's main thread was held {lag:.0f} ms at once"
    # Still usable: a click is answered; the filter shows one group's lines only.
    started = time.monotonic()
    page.select_option("#log-filter", "web")
    expect(page.locator("#log .p", has_text="chatty")).to_have_count(0, timeout=WAIT)
    httpx.get(f"{server.url()}/filtered", timeout=10)
    expect(page.locator("#log")).to_contain_text("/filtered", timeout=WAIT)
    assert time.monotonic() - started < 10
    shown = page.eval_on_selector_all("#log .p", "names => names.map(n => n.textContent)")
    assert set(shown) <= {"web.1", "web.2", "web.zygote"}, shown
    expect(page.locator("#processes tbody tr[data-process]")).to_have_count(64)
    assert server.stop() == 0
