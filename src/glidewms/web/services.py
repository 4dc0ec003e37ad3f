"""The console's calls to the pool, the factory and the frontend, each made
with the visitor's own token: the services decide what the visitor may see
(a user's jobs, an operator's factory), the console adds no rights."""

from __future__ import annotations

import json
from typing import Any

import httpx

from glidewms.config.web import WebConfig
from glidewms.protocol import API_PREFIX
from glidewms.security.tls import client_context

MAX_ANSWER_BYTES = 32 * 1024 * 1024  # a JSON answer larger than this is refused


class ServiceError(Exception):
    """A service said no (status from it), or could not be reached (status 0)."""

    def __init__(self, service: str, status: int, detail: str) -> None:
        super().__init__(f"{service}: {status} {detail}")
        self.service, self.status, self.detail = service, status, detail


class Services:
    def __init__(self, config: WebConfig) -> None:
        self.urls = {
            "pool": config.pool_url,
            "factory": config.factory_url,
            "frontend": config.frontend_url,
        }
        self.http = httpx.AsyncClient(
            verify=client_context(config.ca_file), timeout=config.request_timeout
        )

    def has(self, service: str) -> bool:
        return bool(self.urls.get(service))

    def _url(self, service: str, path: str) -> str:
        base = self.urls.get(service)
        if not base:
            raise ServiceError(service, 0, "not configured in the console (web.yaml)")
        return f"{base.rstrip('/')}{API_PREFIX}/{path.lstrip('/')}"

    async def get(
        self, service: str, path: str, token: str, params: dict[str, Any] | None = None
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
        try:
            async with self.http.stream(
                "GET",
                self._url(service, path),
                params=query or None,
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise ServiceError(service, 502, "answer too large for the console")
        except httpx.HTTPError as exc:
            raise ServiceError(service, 0, f"unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise ServiceError(service, response.status_code, _detail(body))
        try:
            return json.loads(body)
        except ValueError:
            raise ServiceError(service, 502, "not JSON") from None

    async def open(self, service: str, path: str, token: str) -> httpx.Response:
        """A download to pass through (a job's output), its body unread: the
        caller closes it."""
        request = self.http.build_request(
            "GET", self._url(service, path), headers={"Authorization": f"Bearer {token}"}
        )
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ServiceError(service, 0, f"unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            body = await response.aread()
            await response.aclose()
            raise ServiceError(service, response.status_code, _detail(body))
        return response

    async def close(self) -> None:
        await self.http.aclose()


def _detail(body: bytes) -> str:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else body[:300].decode("utf-8", "replace")
    return text[:300]
