"""A frontend's request as the factory accepts it: the body, its tokens, its VO stage.

`PUT /api/v1/requests/{group}` carries secrets (pilot tokens: one for the
group, and optionally one per entry, scoped to that entry by the pool) and
the frontend's signed VO stage. Everything is checked before anything is
written, so a refused request leaves the last good one in force. Tokens go to
0600 files under `<state_dir>/credentials/`, replaced atomically so a running
pilot that reads its token file never sees half a token; the stored request
keeps only their expiry times. Nothing here logs a token.

A request may list several pools its pilots serve (`pools`), each with its
own tokens: an entry's file then holds a line per pool (`bundle_text`), one
file still, so backends and the token push handle it as they handle one.

Token files: `credentials/<frontend>/<group>.token` for the group's token and
`credentials/<frontend>/<group>+<entry>.token` for an entry's own. `+` is in
neither a group nor an entry name, so the names never collide, also when the
batch backends flatten them to `<frontend>.<file name>` on a remote site.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glidewms.config.values import http_url
from glidewms.factory.policy import EntryRequest
from glidewms.security.tokens import TokenError, TokenVerifier, write_secret


class VoStage(BaseModel):
    """The frontend's signed VO stage, passed to every pilot of the group (`--vo-*`)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="<frontend_url>/stage/vo/<group>")
    manifest_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="64 hex digits")
    manifest_key: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^[A-Za-z0-9+/]+={0,2}$",
        description="base64 Ed25519 public key the manifest is signed with",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "url").rstrip("/")


MAX_POOLS = 8  # pools one pilot serves, at most (the pilot's bound too: agent/pools.py)
MAX_SHARE = 999  # the bootstrap's --pool-shares takes 1-999
Token = Annotated[str, Field(min_length=1, max_length=16384)]


class PoolRequest(BaseModel):
    """One of the pools a group's pilots serve, with that pool's tokens.

    The pool mints the tokens, so each is valid in that pool only: a pilot
    sends each pool its own (docs/glidein.md, "Several pools")."""

    model_config = ConfigDict(extra="forbid")

    pool_url: str = Field(min_length=1, max_length=2048)
    share: int = Field(1, ge=1, le=MAX_SHARE, description="this pool's weight on the pilots")
    pilot_token: Token | None = Field(default=None, repr=False)
    entry_tokens: dict[str, Token] = Field(default_factory=dict, max_length=4096, repr=False)

    @field_validator("pool_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "pool_url").rstrip("/")


class RequestBody(BaseModel):
    """PUT /api/v1/requests/{group}: the whole desired state of one group.

    `pilot_token` may be left out when every entry brings its own.
    """

    model_config = ConfigDict(extra="forbid")

    pool_url: str = Field(min_length=1, max_length=2048)
    pilot_token: str | None = Field(default=None, min_length=1, max_length=16384, repr=False)
    entries: dict[str, EntryRequest] = Field(default_factory=dict)
    vo_stage: VoStage | None = None
    # Pilots serving several pools: the first is `pool_url` (its tokens may be
    # given here or as above); absent, pilots serve `pool_url` alone.
    pools: list[PoolRequest] | None = Field(default=None, min_length=2, max_length=MAX_POOLS)

    @field_validator("pool_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """It becomes every pilot's --pool and a glidein_config line: parsed, one line."""
        return http_url(value, "pool_url")

    @model_validator(mode="after")
    def _pools_start_with_pool_url(self) -> RequestBody:
        if self.pools:
            urls = [p.pool_url for p in self.pools]
            if urls[0] != self.pool_url.rstrip("/"):
                raise ValueError("pools[0].pool_url must be pool_url")
            if len(set(urls)) != len(urls):
                raise ValueError("pools: a pool_url is given twice")
        return self


@dataclass(kw_only=True)
class AcceptedRequest:
    """A checked request: what is stored, and the token files it wrote."""

    entries: dict[str, dict[str, object]]
    token_expires: float | None
    entry_tokens: dict[str, float] = field(default_factory=dict)
    vo_stage: dict[str, str] | None = None
    pools: list[dict[str, Any]] | None = None  # [{"url", "share"}] (pilots serve several)


def token_file(credentials: Path, frontend: str, group: str, entry: str | None = None) -> Path:
    """Where the group's (or an entry's own) pilot token is kept (see the module doc)."""
    name = f"{group}.token" if entry is None else f"{group}+{entry}.token"
    return credentials / frontend / name


def write_token(path: Path, token: str) -> None:
    """Atomically replace a 0600 token file, so a running pilot never reads half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = write_secret(path.with_name(f".{path.name}.{os.getpid()}.tmp"), token)
    os.replace(tmp, path)


def check_pilot_token(
    verifier: TokenVerifier,
    token: str,
    frontend: str,
    group: str,
    entry: str | None = None,
    where: str = "pilot_token",
) -> float:
    """The delegated token must be a pilot token of this frontend, group (and entry,
    when the pool scoped it to one); returns its expiry. `where` names the field."""
    try:
        identity = verifier.verify(token)
    except TokenError as exc:
        raise HTTPException(422, f"{where}: not a valid token: {exc}") from None
    if not identity.is_pilot:
        raise HTTPException(422, f"{where}: not a pilot token (the pilot scope, alone)")
    if identity.claims.get("fe") != frontend:
        raise HTTPException(422, f"{where}: its fe claim is not {frontend!r}")
    claimed_group = identity.claims.get("group")
    if claimed_group is not None and claimed_group != group:
        raise HTTPException(422, f"{where}: its group claim is not {group!r}")
    claimed_entry = identity.claims.get("entry")
    if entry is not None and claimed_entry is not None and claimed_entry != entry:
        raise HTTPException(422, f"{where}: its entry claim {claimed_entry!r} is not {entry!r}")
    return float(identity.claims["exp"])


def accept_request(
    verifier: TokenVerifier, body: RequestBody, frontend: str, group: str, credentials: Path
) -> AcceptedRequest:
    """Check every token of the request, then write them; 422 names the bad field.

    An entry without its own token uses the group's, which must then exist
    and, if the pool scoped it to one entry, be scoped to this one.
    """
    expires = None
    if body.pilot_token is not None:
        expires = check_pilot_token(verifier, body.pilot_token, frontend, group)
    own: dict[str, tuple[str, float]] = {}
    for name, wanted in body.entries.items():
        where = f"entries.{name}.pilot_token"
        if wanted.pilot_token is not None:
            own[name] = (
                wanted.pilot_token,
                check_pilot_token(verifier, wanted.pilot_token, frontend, group, name, where),
            )
        elif body.pilot_token is None:
            if body.pools:  # the first pool's token may come in `pools` (pool_bundles)
                continue
            raise HTTPException(422, f"{where}: required when the request has no pilot_token")
        else:
            check_pilot_token(
                verifier, body.pilot_token, frontend, group, name, f"pilot_token (for entry {name})"
            )
    bundles = pool_bundles(verifier, body, frontend, group, own)
    if body.pilot_token is not None:
        write_token(token_file(credentials, frontend, group), body.pilot_token)
    for name, (token, _) in own.items():
        write_token(token_file(credentials, frontend, group, name), token)
    for name, (text, expiry) in bundles.items():
        write_token(token_file(credentials, frontend, group, name), text)
        own[name] = (text, expiry)
    entries = {
        name: req.model_dump(mode="json", exclude_none=True, exclude={"pilot_token"})
        for name, req in body.entries.items()
    }
    vo = None if body.vo_stage is None else body.vo_stage.model_dump(exclude_none=True)
    pools = None
    if body.pools:
        pools = [{"url": p.pool_url, "share": p.share} for p in body.pools]
    return AcceptedRequest(
        entries=entries,
        token_expires=expires,
        entry_tokens={n: e for n, (_, e) in own.items()},
        vo_stage=vo,
        pools=pools,
    )


def bundle_text(tokens: list[tuple[str, str]]) -> str:
    """One entry's token file for pilots serving several pools: the first pool's
    token alone on the first line (what the bootstrap and the factory calls
    read), then ``pool URL TOKEN`` for each pool (the pilot sends each pool its
    own line only: agent/http.py select_token)."""
    lines = [tokens[0][1]] + [f"pool {url} {token}" for url, token in tokens]
    return "\n".join(lines) + "\n"


def pool_bundles(
    verifier: TokenVerifier,
    body: RequestBody,
    frontend: str,
    group: str,
    own: dict[str, tuple[str, float]],
) -> dict[str, tuple[str, float]]:
    """For a request naming several pools: each entry's token file text and the
    earliest expiry of its tokens. Every entry needs a token from every pool
    (the pool's `entry_tokens`, else its `pilot_token`; for the first pool the
    request's own tokens also do); each is checked as any pilot token is."""
    if not body.pools:
        return {}
    out: dict[str, tuple[str, float]] = {}
    for name in body.entries:
        tokens: list[tuple[str, str]] = []
        expiry = float("inf")
        for i, pool in enumerate(body.pools):
            token = pool.entry_tokens.get(name) or pool.pilot_token
            if token is None and i == 0:
                token = own[name][0] if name in own else body.pilot_token
            where = f"pools[{i}].entry_tokens.{name}"
            if token is None:
                raise HTTPException(422, f"{where}: required (a token of every pool per entry)")
            if any(ch.isspace() for ch in token):  # one line of the token file
                raise HTTPException(422, f"{where}: a token has no blanks")
            expiry = min(expiry, check_pilot_token(verifier, token, frontend, group, name, where))
            tokens.append((pool.pool_url, token))
        out[name] = (bundle_text(tokens), expiry)
    for i, pool in enumerate(body.pools):
        unknown = sorted(set(pool.entry_tokens) - set(body.entries))
        if unknown:
            raise HTTPException(422, f"pools[{i}].entry_tokens: no such entry {unknown[0]!r}")
    return out
