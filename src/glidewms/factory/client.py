"""A small synchronous client of a running factory's API, for operators' commands.

Where and with which token come from, in order: the arguments, the environment
(`GLIDEWMS_FACTORY_URL`, `GLIDEWMS_FACTORY_TOKEN_FILE`), and what `glidewms up`
left in its state directory (`run/factory.url`, `tokens/admin.token`). The
token is read from a file, never taken from a command line. Every failure is
a `FactoryClientError` saying what went wrong; the CLI turns it into an exit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from glidewms.client import error_detail
from glidewms.protocol import API_PREFIX, VERSION_HEADER, IncompatiblePeer, check_peer
from glidewms.security.tls import TlsError, client_context, discover_ca_file


class FactoryClientError(Exception):
    """The factory cannot be found, reached, or refused the call; the message says which."""


class FactoryClient:
    def __init__(self, url: str | None, token_file: Path | None) -> None:
        state = Path(os.environ.get("GLIDEWMS_STATE", "glidewms-state"))
        url = url or os.environ.get("GLIDEWMS_FACTORY_URL")
        if url is None and (state / "run" / "factory.url").is_file():
            url = (state / "run" / "factory.url").read_text().strip()
        env_token = os.environ.get("GLIDEWMS_FACTORY_TOKEN_FILE")
        token_path = token_file or (Path(env_token) if env_token else None)
        token_path = token_path or state / "tokens" / "admin.token"
        if not url:
            raise FactoryClientError("no factory URL: pass --factory or set GLIDEWMS_FACTORY_URL")
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise FactoryClientError(
                f"cannot read the token file {token_path}: {exc.strerror}"
            ) from None
        try:  # an https factory: verified against $GLIDEWMS_CA_FILE or `glidewms up`'s CA
            verify = client_context(discover_ca_file(state))
        except TlsError as exc:
            raise FactoryClientError(str(exc)) from None
        self.http = httpx.Client(
            base_url=url.rstrip("/") + API_PREFIX,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call (`path` under the protocol prefix); its JSON answer."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FactoryClientError(f"cannot reach the factory: {exc}") from None
        try:
            check_peer("the factory", response.headers.get(VERSION_HEADER))
        except IncompatiblePeer as exc:
            raise FactoryClientError(str(exc)) from None
        if response.status_code >= 400:
            raise FactoryClientError(
                f"factory said {response.status_code}: {error_detail(response)}"
            )
        return response.json()
