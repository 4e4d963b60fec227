"""Finding the app as `fastapi run` does (a file, a package's file, no argument at all), telling
ASGI from WSGI, and the event loop (`--loop`), on real processes; the interface's guess is also
checked in-process on the shapes apps come in.
"""

from __future__ import annotations

import functools
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from flask import Flask

from corral.child.interface import Undecided, app_like, detect

ASGI_APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    loop = type(asyncio.get_running_loop())
    body = f"{__name__} {loop.__module__}.{loop.__qualname__}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""

WSGI_APP = """
def {name}(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"{name} " + __name__.encode()]
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def _usage_error(server) -> str:
    assert server.wait(20) == 2, server.output
    return server.output


def _app_failed(server) -> str:
    assert server.wait(30) == 3, server.output
    return server.output


# -- a file, a package's file, nothing ---------------------------------------------------------


def test_a_file_is_served_as_its_module(corral, tmp_path: Path):
    _write(tmp_path / "api.py", ASGI_APP)
    server = corral("run", "api.py", "--port", "0", cwd=tmp_path)
    url = server.url()
    assert httpx.get(url, timeout=5).text.split()[0] == "api"
    line = server.wait_for(r"web: app .*").group(0)
    assert line == "web: app api:app (builtins.function), ASGI; found by its name in api.py", line
    assert server.stop() == 0


def test_a_file_in_a_package_is_imported_by_its_package_path(corral, tmp_path: Path):
    # src/ has no __init__.py: it goes on the import path, and the module is app.main,
    # so that the app's own `from app import settings` works.
    _write(tmp_path / "src" / "app" / "__init__.py", "")
    _write(tmp_path / "src" / "app" / "settings.py", "NAME = 'from the package'\n")
    _write(
        tmp_path / "src" / "app" / "main.py",
        "from app import settings\n" + WSGI_APP.format(name="application"),
    )
    server = corral("run", "src/app/main.py", "--port", "0", cwd=tmp_path)
    url = server.url()
    assert httpx.get(url, timeout=5).text == "application app.main"
    server.wait_for(
        r"web: app app\.main:application \(builtins\.function\), WSGI, 1 thread per worker; "
        r"found by its name in src/app/main\.py$"
    )
    assert server.stop() == 0


def test_no_argument_and_no_corral_toml_finds_main_py_first(corral, tmp_path: Path):
    _write(tmp_path / "app.py", ASGI_APP)
    _write(tmp_path / "main.py", ASGI_APP)
    server = corral("run", "--port", "0", cwd=tmp_path)
    assert httpx.get(server.url(), timeout=5).text.split()[0] == "main"
    assert server.stop() == 0


def test_no_argument_finds_app_py_when_there_is_no_main_py(corral, tmp_path: Path):
    _write(tmp_path / "app.py", ASGI_APP)
    server = corral("run", "--port", "0", cwd=tmp_path)
    assert httpx.get(server.url(), timeout=5).text.split()[0] == "app"
    assert server.stop() == 0


def test_no_argument_and_nothing_to_find_names_what_was_looked_for(corral, tmp_path: Path):
    output = _usage_error(corral("run", cwd=tmp_path))
    assert "main.py, app.py, api.py, app/main.py, app/app.py, app/api.py" in output, output


def test_the_one_app_a_module_defines_is_taken_whatever_its_name(corral, tmp_path: Path):
    _write(
        tmp_path / "service.py",
        "import os\nfrom flask import Flask\n\ndef helper(a, b):\n    return a\n\n"
        "server = Flask(__name__)\n\n@server.get('/')\ndef index():\n    return 'flask'\n",
    )
    server = corral("run", "service.py", "--port", "0", cwd=tmp_path)
    assert httpx.get(server.url(), timeout=5).text == "flask"
    server.wait_for(r"web: app service:server \(flask\.app\.Flask\), WSGI, .*; the only WSGI app")
    assert server.stop() == 0


def test_several_apps_and_no_app_name_them_and_stop_corral(corral, tmp_path: Path):
    _write(tmp_path / "two.py", WSGI_APP.format(name="first") + WSGI_APP.format(name="second"))
    output = _app_failed(corral("run", "two.py", "--port", "0", cwd=tmp_path))
    assert "several apps in two.py: first (WSGI), second (WSGI); name one: two.py:NAME" in output
    _write(tmp_path / "none.py", "VALUE = 1\n")
    output = _app_failed(corral("run", "none.py", "--port", "0", cwd=tmp_path))
    assert "no app in none.py: looked for app, api, application, then any ASGI or WSGI app" in (
        output
    ), output


def test_a_file_with_an_attribute_and_a_missing_file(corral, tmp_path: Path):
    _write(tmp_path / "two.py", WSGI_APP.format(name="first") + WSGI_APP.format(name="second"))
    server = corral("run", "two.py:second", "--port", "0", cwd=tmp_path)
    assert httpx.get(server.url(), timeout=5).text == "second two"
    assert server.stop() == 0
    output = _usage_error(corral("run", "nowhere/main.py", cwd=tmp_path))
    assert "corral: error: APP: no such file: 'nowhere/main.py'" in output, output


def test_corral_toml_and_corral_check_take_a_file_too(corral, tmp_path: Path):
    _write(tmp_path / "src" / "shop" / "__init__.py", "")
    _write(tmp_path / "src" / "shop" / "web.py", ASGI_APP)
    (tmp_path / "corral.toml").write_text('[web]\napp = "src/shop/web.py"\nport = 0\n')
    checked = corral("check", cwd=tmp_path)
    assert checked.wait(30) == 0, checked.output
    server = corral("run", cwd=tmp_path)
    assert httpx.get(server.url(), timeout=5).text.split()[0] == "shop.web"
    assert server.stop() == 0
    (tmp_path / "corral.toml").write_text('[web]\napp = "src/shop/missing.py"\n')
    checked = corral("check", cwd=tmp_path)
    assert checked.wait(30) == 1
    assert "corral.toml: [web] app: no such file: 'src/shop/missing.py'" in checked.output


def test_corral_check_says_when_the_interface_cannot_be_told(corral, tmp_path: Path):
    _write(tmp_path / "vague.py", "def app(*args):\n    pass\n")
    checked = corral("check", "vague:app", cwd=tmp_path)
    assert checked.wait(30) == 1
    assert "cannot tell whether vague:app is an ASGI or a WSGI app: it takes (*args)" in (
        checked.output
    ), checked.output
    assert "give --interface asgi or --interface wsgi" in checked.output


def test_a_factory_given_without_factory_is_named_as_one(corral, tmp_path: Path):
    _write(tmp_path / "made.py", "def create_app():\n    return None\n")
    output = _app_failed(corral("run", "made:create_app", "--port", "0", cwd=tmp_path))
    assert "made:create_app is not an app: it takes (); if it returns the app, give --factory" in (
        output
    ), output


def test_interface_wsgi_serves_what_cannot_be_told(corral, tmp_path: Path):
    _write(
        tmp_path / "vague.py",
        "def app(*args):\n    environ, start_response = args\n"
        "    start_response('200 OK', [])\n    return [b'told']\n",
    )
    output = _app_failed(corral("run", "vague:app", "--port", "0", cwd=tmp_path))
    assert "give --interface asgi or --interface wsgi" in output
    server = corral("run", "vague:app", "--interface", "wsgi", "--port", "0", cwd=tmp_path)
    assert httpx.get(server.url(), timeout=5).text == "told"
    assert server.stop() == 0


def test_what_a_choice_cannot_do_is_said_at_start(corral, tmp_path: Path):
    _write(tmp_path / "api.py", ASGI_APP)
    server = corral("run", "api:app", "--threads", "4", "--port", "0", cwd=tmp_path)
    server.url()
    line = server.wait_for(r"web: app .*").group(0)
    assert line == (
        "web: app api:app (builtins.function), ASGI (--threads 4 applies to WSGI apps only); "
        "as given"
    ), line
    assert server.stop() == 0
    server = corral("run", "api:app", "--interface", "wsgi", "--port", "0", cwd=tmp_path)
    server.url()
    line = server.wait_for(r"web: app .*").group(0)
    assert line.endswith("as given; --interface wsgi, though its signature is ASGI's"), line
    assert server.stop() == 0


# -- --loop, and the seed's uvicorn.run() call as corral.run() ----------------------------------


@pytest.mark.parametrize(
    ("loop", "expected"), [("asyncio", "asyncio.unix_events"), ("uvloop", "uvloop.Loop")]
)
def test_loop_chooses_the_workers_event_loop(corral, tmp_path: Path, loop: str, expected: str):
    _write(tmp_path / "looped.py", ASGI_APP)
    server = corral("run", "looped:app", "--loop", loop, "--port", "0", cwd=tmp_path)
    assert expected in httpx.get(server.url(), timeout=5).text
    assert server.stop() == 0


def test_the_seeds_uvicorn_run_call_works_as_corral_run(launch, tmp_path: Path, free_port: int):
    _write(tmp_path / "app" / "__init__.py", "")
    _write(tmp_path / "app" / "main.py", ASGI_APP)
    _write(
        tmp_path / "serve.py",
        f"""
        import sys
        import corral

        sys.exit(corral.run(app='app.main:app', host='127.0.0.1', port={free_port},
                            loop='uvloop', workers=3, access_log=False))
        """,
    )
    server = launch([sys.executable, "serve.py"], cwd=tmp_path)
    url = server.url()
    assert url == f"http://127.0.0.1:{free_port}"
    server.wait_workers(3)
    with httpx.Client(timeout=5) as client:
        answers = {client.get(url, headers={"connection": "close"}).text for _ in range(6)}
    assert answers == {"app.main uvloop.Loop"}, answers
    assert server.count(r'"GET / HTTP') == 0  # access_log=False
    assert server.stop() == 0


# -- the interface's guess, on the shapes apps come in ---------------------------------------


async def _asgi(scope, receive, send):
    pass


def _wsgi(environ, start_response):
    return []


class _AsgiCallable:
    async def __call__(self, scope, receive, send):
        pass


class _WsgiCallable:
    def __call__(self, environ, start_response):
        return []


def _sync_asgi(scope, receive, send):  # returns an awaitable, as some middleware do
    return _asgi(scope, receive, send)


@functools.wraps(_asgi)
def _decorated(*args, **kwargs):
    return _asgi(*args, **kwargs)


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (_asgi, "asgi"),
        (_AsgiCallable(), "asgi"),
        (_sync_asgi, "asgi"),
        (_decorated, "asgi"),
        (functools.partial(lambda extra, scope, receive, send: None, 1), "asgi"),
        (_wsgi, "wsgi"),
        (_WsgiCallable(), "wsgi"),
        (functools.partial(lambda extra, environ, start_response: [], 1), "wsgi"),
        (Flask(__name__), "wsgi"),
        (object.__new__(WSGIHandler), "wsgi"),  # its __init__ needs Django's settings
        (object.__new__(ASGIHandler), "asgi"),
    ],
    ids=[
        "async-def", "async-call", "def-returning-awaitable", "wraps-async", "partial-asgi",
        "def-wsgi", "call-wsgi", "partial-wsgi", "flask", "django-wsgi", "django-asgi",
    ],
)  # fmt: skip
def test_the_interface_is_told_from_the_call_signature(app, expected):
    assert detect(app) == expected


@pytest.mark.parametrize(
    ("app", "why"),
    [
        (lambda *args: None, "fits both"),
        (lambda a, b, c=None: None, "fits both"),
        (lambda: None, "it takes ()"),
        (_WsgiCallable, "a class"),
        (len, "neither"),
    ],
    ids=["star-args", "default-third", "no-argument", "class", "builtin"],
)
def test_what_cannot_be_told_is_not_guessed(app, why):
    with pytest.raises(Undecided) as raised:
        detect(app)
    assert why in str(raised.value)


def test_looking_through_a_module_skips_helpers_of_the_same_shape():
    def helper(a, b):
        return a

    assert app_like(helper) is None  # two arguments, but not named as WSGI's
    assert app_like(_wsgi) == "wsgi"
    assert app_like(_sync_asgi) == "asgi"
    assert app_like(Flask(__name__)) == "wsgi"
    assert app_like(Flask) is None
    assert app_like(sys) is None


# -- APP read without importing it ---------------------------------------------------------------


def test_a_file_or_folder_names_its_module_and_import_root(tmp_path: Path):
    from corral.settings.app_ref import read

    _write(tmp_path / "src" / "app" / "__init__.py", "")
    _write(tmp_path / "src" / "app" / "api" / "__init__.py", "")
    _write(tmp_path / "src" / "app" / "api" / "main.py", "")
    _write(tmp_path / "plain.py", "")
    src = tmp_path / "src"
    found = read("src/app/api/main.py", tmp_path)
    assert (found.module, found.attribute, found.import_root) == ("app.api.main", None, src)
    found = read("src/app/api/main.py:api", tmp_path)
    assert (found.module, found.attribute, found.import_root) == ("app.api.main", "api", src)
    for given in ("src/app", "src/app/", "src/app/__init__.py"):
        found = read(given, tmp_path)
        assert (found.module, found.attribute, found.import_root) == ("app", None, src), given
    found = read("plain.py", tmp_path)
    assert (found.module, found.import_root) == ("plain", tmp_path)
    assert read("pkg.sub:app", tmp_path).module == "pkg.sub"  # MODULE:ATTRIBUTE: no file
    with pytest.raises(ValueError, match=r"folder without __init__\.py"):
        read("src/", tmp_path)
    with pytest.raises(ValueError, match=r"no such file: 'gone\.py'"):
        read("gone.py", tmp_path)
