"""The CLI's side of the control API: HTTP over the Unix socket or TCP, standard library only.

Errors are ClientError, whose message is the one line the CLI prints.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

from corral.addresses import TcpAddress, UnixAddress

CONNECT_TIMEOUT = 5.0
# A call waits this long for its answer (a reload answers once it has begun).
CALL_TIMEOUT = 60.0


class ClientError(Exception):
    """A call that failed; the message is the line to show the user."""


class NotRunning(ClientError):
    """No corral answers: none runs in this directory, or none at the address given."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"corral: no corral is running here ({detail})")


class Unreachable(ClientError):
    """The address exists but the call could not be made (permissions, a timeout, a lost link)."""

    def __init__(self, address: UnixAddress | TcpAddress, reason: str) -> None:
        super().__init__(f"corral: error: cannot talk to corral at {address}: {reason}")
        self.address = address


class ControlFailed(ClientError):
    """The manager answered with an error (4xx, 5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"corral: error: {message}")
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    """http.client's connection, over a Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Calls to the control API at `address`, with `token` as bearer when given.

    `timeout` (seconds) bounds the wait for each answer to begin.
    """

    def __init__(
        self,
        address: UnixAddress | TcpAddress,
        token: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout

    def get(self, path: str) -> bytes:
        """The body of GET `path`, as sent."""
        return self._call("GET", path, None)

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def post_json(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return json.loads(self._call("POST", path, body))

    def stream_lines(self, path: str) -> Iterator[dict[str, Any]]:
        """Each line of GET `path`'s NDJSON answer, parsed, as it arrives, until the answer ends.

        No timeout once the answer has begun: a follower may wait long for a line.
        """
        connection, response = self._open("GET", path, None)
        try:
            connection.sock.settimeout(None)
            for line in response:
                yield json.loads(line)
        except (OSError, http.client.HTTPException) as error:
            raise Unreachable(self.address, f"the connection was lost ({error})") from None
        finally:
            connection.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> bytes:
        connection, response = self._open(method, path, body)
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as error:
            raise Unreachable(self.address, f"the connection was lost ({error})") from None
        finally:
            connection.close()

    def _open(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """The connection and its response, whose status is a success (else ControlFailed)."""
        connection = self._connection()
        try:
            return connection, self._send(connection, method, path, body)
        except BaseException:
            connection.close()
            raise

    def _send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> http.client.HTTPResponse:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=headers)
            connection.sock.settimeout(self.timeout)
            response = connection.getresponse()
            if response.status >= 400:
                raise ControlFailed(response.status, _error_message(response))
        except (FileNotFoundError, ConnectionRefusedError):
            if isinstance(self.address, TcpAddress):
                raise NotRunning(f"nothing answers at {self.address}") from None
            raise NotRunning(f"no control socket at {self.address}") from None
        except (OSError, http.client.HTTPException) as error:
            raise Unreachable(self.address, str(error) or type(error).__name__) from None
        return response

    def _connection(self) -> http.client.HTTPConnection:
        connect_timeout = min(CONNECT_TIMEOUT, self.timeout)
        if isinstance(self.address, UnixAddress):
            return _UnixConnection(str(self.address.path), connect_timeout)
        return http.client.HTTPConnection(
            self.address.host, self.address.port, timeout=connect_timeout
        )


def _error_message(response: http.client.HTTPResponse) -> str:
    """The API's {"error": ...}, else whatever text came, else the status line."""
    text = response.read().decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or f"{response.status} {response.reason}"
