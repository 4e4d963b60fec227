"""The Flask and the Django examples, served as their READMEs say."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("folder", "app", "found"),
    [
        ("flask", [], r"app:app \(flask\.app\.Flask\)"),
        ("django", ["mysite/wsgi.py"], r"mysite\.wsgi:application \(django\.core\.handlers\.wsgi"),
    ],
)
def test_the_example_serves_with_two_workers_of_four_threads(corral, folder, app, found):
    readme = (EXAMPLES / folder / "README.md").read_text()
    assert f"corral run {' '.join([*app, '--workers 2 --threads 4'])}" in readme
    # corral is not on the package index: installed from the clone the example is in.
    assert f"pip install ../.. {folder} && .venv/bin/corral run" in readme
    assert "pip install corral" not in readme
    server = corral(
        "run", *app, "--workers", "2", "--threads", "4", "--port", "0", cwd=EXAMPLES / folder
    )
    url = server.url()
    server.wait_workers(2)
    server.wait_for(rf"web: app {found}.*, WSGI, 4 threads per worker; found by its name in ")
    with httpx.Client(timeout=5) as client:
        answers = [client.get(url, headers={"connection": "close"}).json() for _ in range(8)]
        assert client.get(f"{url}/items/7").json() == {"item_id": 7}
    assert {a["hello"] for a in answers} == {"world"}
    assert {a["worker"] for a in answers} <= {"web.1", "web.2"}
    assert all(a["thread"].startswith("WSGI") for a in answers), answers
    server.wait_for(r'^web\.\d\s*\| 127\.0\.0\.1:\d+ - "GET /items/7 HTTP/1\.1" 200 ')
    assert server.stop() == 0
