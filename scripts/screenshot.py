"""Take the README's screenshot of the dashboard: docs/dashboard.png.

    .venv/bin/python scripts/screenshot.py            # about 2 minutes
    .venv/bin/python scripts/screenshot.py --seconds 60 --output /tmp/shot.png

Runs examples/queue (an API with 3 workers, 2 consumers, a beat job every
second) against a redis-server of its own, on free ports, with the
dashboard on; sends it some traffic (a few requests a second, rising, and
some to a path that does not exist), reloads it, restarts a consumer,
then opens `corral dashboard`'s link in Debian's headless chromium, runs
the beat job from the page and takes a full-page screenshot. Everything it starts, it stops. Needs
redis-server, chromium and the project's test extra (playwright, redis).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "queue"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_line(
    proc: subprocess.Popen[str], lines: list[str], marker: str, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in lines:
            if marker in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"corral never said {marker!r}:\n" + "\n".join(lines))


def traffic(base: str, seconds: float, stop: threading.Event) -> None:
    """A few requests a second, rising to a few dozen; one in twenty to a missing path.

    A new connection each time, so that every worker takes its share.
    """
    started = time.monotonic()
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=5, limits=no_keep_alive) as client:
        sent = 0
        while not stop.is_set() and time.monotonic() - started < seconds:
            elapsed = time.monotonic() - started
            rate = 5 + 40 * elapsed / seconds
            path = "/missing" if sent % 20 == 19 else "/"
            with contextlib.suppress(httpx.HTTPError):
                client.get(base + path)
            sent += 1
            stop.wait(1 / rate)


def corral(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "corral", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"corral {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=100, help="of traffic before the shot")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    for program in ("redis-server", CHROMIUM):
        if shutil.which(program) is None:
            sys.exit(f"{program} is missing: apt-get install redis-server chromium")
    from playwright.sync_api import sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="corral-screenshot-"))
    redis_port, web_port, control_port = free_port(), free_port(), free_port()
    redis = subprocess.Popen(
        [
            *("redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(scratch)),
        ],
        stdout=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CORRAL_TOKEN": secrets.token_urlsafe(32),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "corral", "run", "--port", str(web_port)]
    command += ["--control", f"127.0.0.1:{control_port}"]
    manager = subprocess.Popen(
        command,
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(manager.stdout), daemon=True)
    reader.start()
    stop = threading.Event()
    try:
        wait_for_line(manager, lines, "listening on", 60)
        base = f"http://127.0.0.1:{web_port}"
        load = threading.Thread(target=traffic, args=(base, args.seconds, stop), daemon=True)
        load.start()
        time.sleep(args.seconds * 0.4)
        corral("reload", env=env)  # a reload marker on the charts
        time.sleep(args.seconds * 0.3)
        corral("restart", "consumer.2", env=env)  # a restart, with its cause
        load.join()
        link = corral("dashboard", "--no-browser", env=env)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                page.goto(link)
                page.wait_for_selector("#processes tbody tr[data-process]")
                page.wait_for_selector("#log .line")
                # An action from the page, and its result.
                beat = page.locator('#jobs tr[data-job="beat"]')
                beat.get_by_role("button", name="Run now").click()
                page.wait_for_selector("#activity li.done", timeout=30_000)
                time.sleep(3)  # a state or two more: the sparklines fill in
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output), full_page=True)
            finally:
                browser.close()
        print(f"wrote {args.output}")
    finally:
        stop.set()
        if manager.poll() is None:
            manager.send_signal(signal.SIGTERM)
            try:
                manager.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(manager.pid, signal.SIGKILL)
                manager.wait()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
