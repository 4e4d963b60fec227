"""The web app's TLS files, loaded as a worker loads them (uvicorn: the certificate chain,
then the CA certificates), so that a file that is not a PEM certificate, or a key that
does not match its certificate, is refused before anything starts, not in every worker.

Only where corral runs (`resolve`'s `here`): `corral export` writes for another machine.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path

from corral.settings.web import WebConfig

_SOURCE_LINE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def problems(web: WebConfig, directory: Path, where: Callable[[str], str]) -> list[str]:
    """One message per TLS file of `web` that cannot be loaded, naming the file and ssl's reason.

    `directory` is where relative paths are read from; `where(name)` names where a
    setting was given (`--certfile`, `corral.toml: [web] keyfile`).
    """
    if web.certfile is None:
        return []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certfile = directory / web.certfile
    try:
        context.load_verify_locations(cafile=certfile)
    except ssl.SSLError as error:
        return [
            f"{where('certfile')}: {str(web.certfile)!r}: not a PEM certificate ({_reason(error)})"
        ]
    found = []
    try:
        keyfile = directory / web.keyfile if web.keyfile is not None else None
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except ssl.SSLError as error:
        if web.keyfile is None:
            found.append(
                f"{where('certfile')}: {str(web.certfile)!r}: no unencrypted private key of its "
                f"certificate in it: give keyfile (--keyfile) too ({_reason(error)})"
            )
        else:
            found.append(
                f"{where('keyfile')}: {str(web.keyfile)!r}: not an unencrypted PEM private key "
                f"of the certificate in {str(web.certfile)!r} ({_reason(error)})"
            )
    if web.ca_certs is not None:
        try:
            context.load_verify_locations(cafile=directory / web.ca_certs)
        except ssl.SSLError as error:
            found.append(
                f"{where('ca_certs')}: {str(web.ca_certs)!r}: not PEM certificates "
                f"({_reason(error)})"
            )
    return found


def _no_password() -> bytes:
    """corral has no setting for a key's password: an encrypted key is refused, never asked
    for on the terminal (OpenSSL's prompt without a callback)."""
    return b""


def _reason(error: ssl.SSLError) -> str:
    """ssl's message without the line of CPython's source it came from."""
    text = error.args[1] if len(error.args) > 1 else str(error)
    return _SOURCE_LINE.sub("", str(text))
