"""What a pilot is told on its command line (protocol.md, "Pilot start").

One pure function, so every option a frontend's request or an entry adds is
tested by a table: the stage and its key, the entry's size and attributes,
the request's start expression (ANDed with the entry's own GLIDEIN_Start,
never replacing it) and container image, and the frontend's VO
stage (`--vo-stage URL --vo-manifest-sha256 HEX --vo-manifest-key B64`), and
the CA bundle https services are verified against (`--ca-cert B64`, the
factory's `ca_file`: public, and on the command line so that no site needs
a copy beforehand), and, for pilots serving several pools, the further pools
and the shares (`--also-pool URL ... --pool-shares 2,1`). Nothing secret is
ever an argument: the tokens travel in a 0600 file.

Every argument is checked on the way out (`checked`): each value becomes a
`glidein_config` line on the pilot, so one with a newline or any other control
character would add lines of its own; URLs must parse as http(s). The request
and the entry were checked when they came in; this is the last line before a
pilot, and `request_problem` lets the factory refuse (and say why) a request
stored before those checks existed instead of failing at every submission.
"""

from __future__ import annotations

from pathlib import Path

from glidewms.config.factory import EntryConfig
from glidewms.config.values import http_url, one_line
from glidewms.factory.policy import attribute_text
from glidewms.factory.stage import Stage
from glidewms.factory.store import StoredRequest
from glidewms.security.tls import pilot_ca_argument

# Request entry fields given to pilots as slot attributes.
REQUEST_ATTRIBUTES = (
    ("GLIDEIN_Start", "start_expr"),
    ("GLIDEIN_Container_Image", "container_image"),
)


START = "GLIDEIN_Start"


def both_starts(site: str, frontend: str) -> str:
    """A pilot's Start when the entry and the frontend each set one: both must
    accept the job (HTCondor's START is the site's policy; a VO narrows it, it
    never widens it)."""
    return f"({site}) && ({frontend})"


# Options whose value is a URL the pilot calls.
URL_OPTIONS = frozenset({"--factory", "--pool", "--vo-stage", "--also-pool"})


def pilot_arguments(
    entry: EntryConfig,
    request: StoredRequest,
    glidein_id: str,
    factory_url: str,
    stage: Stage,
    *,
    ca_file: Path | None = None,
) -> tuple[str, ...]:
    """The bootstrap's long options for one pilot of `request` at `entry`."""
    args = [
        "--factory",
        factory_url,
        "--manifest-sha256",
        stage.manifest_sha256,
        "--pool",
        request.pool_url,
        "--glidein-id",
        glidein_id,
        "--entry",
        entry.name,
        "--site",
        entry.site,
        "--idle-timeout",
        str(entry.idle_timeout),
        "--lifetime",
        str(entry.walltime),
        "--cpus",
        str(entry.cpus),
        "--memory",
        str(entry.memory),
        "--work-dir",
        entry.work_dir,
    ]
    if request.pools:  # pilots that serve several pools (agent/pools.py)
        for pool in request.pools[1:]:
            args += ["--also-pool", str(pool["url"])]
        args += ["--pool-shares", ",".join(str(int(p["share"])) for p in request.pools)]
    if stage.public_key_b64:
        args += ["--manifest-key", stage.public_key_b64]
    if ca_file is not None:
        args += ["--ca-cert", pilot_ca_argument(ca_file)]
    if request.vo_stage:
        vo = request.vo_stage
        args += ["--vo-stage", vo["url"], "--vo-manifest-sha256", vo["manifest_sha256"]]
        if vo.get("manifest_key"):
            args += ["--vo-manifest-key", vo["manifest_key"]]
    wanted = request.entries.get(entry.name, {})
    # ClassAd names are case-insensitive: the entry's Start is found whatever its case
    site_start = next(
        (attribute_text(v) for k, v in entry.attributes.items() if k.lower() == START.lower()),
        None,
    )
    for key, value in entry.attributes.items():
        if key.lower() == START.lower() and wanted.get("start_expr"):
            continue  # ANDed with the frontend's below, not replaced by it
        args += ["--attr", f"{key}={attribute_text(value)}"]
    for attr, field in REQUEST_ATTRIBUTES:
        requested = wanted.get(field)
        if requested:
            if attr == START and site_start is not None:
                requested = both_starts(site_start, str(requested))
            args += ["--attr", f"{attr}={requested}"]
    return checked(args)


def checked(args: list[str]) -> tuple[str, ...]:
    """The arguments, if every value is one line without control characters (and
    every URL option an http(s) URL); ValueError naming the option otherwise."""
    option = ""
    for word in args:
        if word.startswith("--") and not option:
            option = word
            continue
        one_line(word, f"pilot argument {option or word}")
        if option in URL_OPTIONS:
            http_url(word, f"pilot argument {option}")
        option = ""
    return tuple(args)


def request_problem(request: StoredRequest, entry: str) -> str | None:
    """Why `request` cannot be given to pilots of `entry` (a value that is not one
    line, a URL that does not parse), or None."""
    wanted = request.entries.get(entry, {})
    values = [("pool_url", request.pool_url, True)]
    values += [
        (f"pools[{i}].url", str(p.get("url", "")), True) for i, p in enumerate(request.pools or [])
    ]
    if request.vo_stage:
        values.append(("vo_stage.url", str(request.vo_stage.get("url", "")), True))
    values += [
        (field, str(wanted[field]), False) for _, field in REQUEST_ATTRIBUTES if wanted.get(field)
    ]
    for name, value, is_url in values:
        try:
            if is_url:
                http_url(value, name)
            else:
                one_line(value, name)
        except ValueError as exc:
            return f"request refused for pilots: {exc}"
    return None
