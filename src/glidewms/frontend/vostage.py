"""The frontend's VO stage: each group's validation scripts, signed, for its pilots.

A group with `vo_scripts: DIR` gets, at frontend start, a stage built from
DIR by `glidewms.factory.stage.build_vo_stage` into
`<state_dir>/vo_stage/<group>` and signed with the frontend's own Ed25519 key
(`<state_dir>/keys/vo_stage_signing.pem`, created 0600 on first use). The
frontend serves it read-only and without authentication under
`/stage/vo/<group>/` (`manifest`, `files/PATH`); integrity comes from the
manifest's sha256 and the public key, which travel in the pilot's arguments
via the factory (`vo_stage` in the request). Only files listed in the
manifest, and its signature, are ever served, whatever the request path.

Like the factory's stage it is built once per start: pilots queued with one
stage's hash refuse another, so a changed DIR takes effect at the next
restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glidewms.config.frontend import FrontendConfig
from glidewms.factory.stage import Stage, build_vo_stage

KEY_NAME = "vo_stage_signing.pem"
PREFIX = "/stage/vo"


class VOStageError(ValueError):
    """A group's vo_scripts cannot be made into a stage; the message says which and why."""


def build_all(config: FrontendConfig) -> dict[str, Stage]:
    """Build and sign the stage of every group that has `vo_scripts`."""
    stages: dict[str, Stage] = {}
    key = Path(config.state_dir) / "keys" / KEY_NAME
    for i, group in enumerate(config.groups):
        if group.vo_scripts is None:
            continue
        try:
            stages[group.name] = build_vo_stage(
                group.vo_scripts, Path(config.state_dir) / "vo_stage" / group.name, key
            )
        except (OSError, ValueError) as exc:
            raise VOStageError(f"groups[{i}].vo_scripts ({group.vo_scripts}): {exc}") from None
    return stages


def advert(stage: Stage, base_url: str, group: str) -> dict[str, Any]:
    """The request's `vo_stage`: where pilots fetch it and what vouches for it."""
    return {
        "url": f"{base_url.rstrip('/')}{PREFIX}/{group}",
        "manifest_sha256": stage.manifest_sha256,
        "manifest_key": stage.public_key_b64,
    }


def served_file(stage: Stage, path: str) -> Path | None:
    """The file behind `<group>/PATH` of the stage (`manifest` or `files/...`), or None."""
    if path == "manifest":
        return stage.manifest_path
    if path.startswith("files/"):
        return stage.file(path[len("files/") :])
    return None
