"""`glidewms`: one command, a subcommand per actor and per user action."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from glidewms.cli import (
    factory_cmds,
    frontend_cmds,
    pool_cmds,
    status_cmds,
    tail,
    user,
    userlog_cmds,
)
from glidewms.cli.user import fail
from glidewms.config import ConfigError
from glidewms.extras import MissingExtra

app = typer.Typer(
    help="glidewms: a pilot-based workload management system in the GlideinWMS tradition.\n\n"
    "Services: pool, factory, frontend and the web console (each from a YAML file), `up` "
    "(all four on this machine) and `demo`. Users: submit, q, rm, hold, release, history, "
    "fetch, tail, log, wait, status, analyze, limits, userprio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion
)


def _version(value: bool) -> None:
    if value:
        from glidewms import __version__

        typer.echo(f"glidewms {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """glidewms: a pilot-based workload management system in the GlideinWMS tradition."""


ConfigOption = Annotated[
    Optional[Path],  # noqa: UP045 (typer needs Optional on 3.10)
    typer.Option(
        "--config",
        "-c",
        help="YAML configuration file; defaults when omitted",
        exists=False,
        dir_okay=False,
    ),
]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # one line per HTTP call drowns what matters
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _service(name: str, runner: str) -> typer.Typer:
    sub = typer.Typer(
        help=f"Run the {name} service, or check its configuration.", invoke_without_command=True
    )

    @sub.callback()
    def run(
        ctx: typer.Context,
        config: ConfigOption = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        _logging(verbose)
        try:
            module = __import__(f"glidewms.{runner}.main", fromlist=["run"])
            module.run(config)
        except (ConfigError, MissingExtra) as exc:
            raise fail(str(exc), 2) from None

    @sub.command("check-config")
    def check_config(config: ConfigOption = None) -> None:
        """Validate the configuration without starting anything."""
        try:
            module = __import__(f"glidewms.{runner}.main", fromlist=["load"])
            module.load(config)
        except (ConfigError, MissingExtra) as exc:
            raise fail(str(exc), 2) from None
        typer.echo(f"{config or '(defaults)'}: ok")

    return sub


_services = {name: _service(name, name) for name in ("pool", "factory", "frontend", "web")}
for _name, _sub in _services.items():
    app.add_typer(_sub, name=_name)


EntriesOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--entries",
        help="YAML list of factory entries to use instead of the one "
        "local entry (see docs/configuration.md), e.g. a Slurm entry",
        dir_okay=False,
    ),
]


TlsOption = Annotated[
    bool,
    typer.Option(
        "--tls",
        help="HTTPS between everything, with a private CA made for this machine "
        "(STATE_DIR/tls/ca.pem; see docs/security.md)",
    ),
]
AllowUnisolatedOption = Annotated[
    bool,
    typer.Option(
        "--allow-unisolated-jobs",
        help="run the local pilots' jobs even when they cannot be isolated from the "
        "services (not root, no working bubblewrap): they could then read the keys and "
        "tokens of this installation (docs/security.md)",
    ),
]


def _entries(path: Path | None) -> list[dict] | None:
    """Entries from a YAML file, validated now so a typo fails before anything starts."""
    if path is None:
        return None
    from glidewms.up_config import read_entries

    try:
        return read_entries(path)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


@app.command()
def up(
    state_dir: Annotated[
        Path, typer.Option(help="where keys, configs, databases and logs live")
    ] = Path("glidewms-state"),
    max_pilots: Annotated[int, typer.Option(help="pilots at once on the local entry")] = 4,
    pilot_idle_timeout: Annotated[
        int, typer.Option(help="seconds before an idle pilot leaves")
    ] = 300,
    entries: EntriesOption = None,
    config_dir: Annotated[
        Optional[Path],  # noqa: UP045 (typer needs Optional on 3.10)
        typer.Option(
            help="your additions to the configs `up` writes: pool.yaml (pool keys), "
            "frontend.yaml (groups, overflow...), entries.yaml; each optional, "
            "validated before anything starts (docs/configuration.md)",
            file_okay=False,
        ),
    ] = None,
    tls: TlsOption = False,
    allow_unisolated_jobs: AllowUnisolatedOption = False,
) -> None:
    """Run pool, factory and frontend on this machine until Ctrl-C.

    A service that dies is started again in place (same config, same port);
    rerunning `up` with the same --state-dir keeps keys, databases and ports.
    """
    from glidewms.cli.demo import run_up
    from glidewms.launcher import Options
    from glidewms.up_config import UpConfig, read_config_dir

    try:
        extra = read_config_dir(config_dir) if config_dir else UpConfig()
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    if entries is not None and extra.entries is not None:
        raise fail(f"entries given twice: --entries {entries} and {config_dir}/entries.yaml", 2)
    raise typer.Exit(
        run_up(
            Options(
                state_dir=state_dir,
                max_pilots=max_pilots,
                pilot_idle_timeout=pilot_idle_timeout,
                entries=_entries(entries) if entries is not None else extra.entries,
                extra_pool=extra.pool,
                extra_frontend=extra.frontend,
                tls=tls,
                allow_unisolated_jobs=allow_unisolated_jobs,
            )
        )
    )


@app.command()
def demo(
    jobs: Annotated[int, typer.Option("--jobs", "-n", min=1, help="jobs to run")] = 50,
    state_dir: Annotated[Path, typer.Option(help="state of this run (wiped first)")] = Path(
        "glidewms-demo"
    ),
    max_pilots: Annotated[int, typer.Option(min=1, help="pilots at once")] = 4,
    job_seconds: Annotated[float, typer.Option(min=0, help="how long each job sleeps")] = 1.0,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 600,
    entries: EntriesOption = None,
    tls: TlsOption = False,
    allow_unisolated_jobs: AllowUnisolatedOption = False,
) -> None:
    """Start everything, run a sample workload through pilots, and report.

    Exits 0 only if every job completed successfully with the expected outputs.
    """
    from glidewms.cli.demo import run_demo

    raise typer.Exit(
        run_demo(
            jobs=jobs,
            state_dir=state_dir,
            max_pilots=max_pilots,
            job_seconds=job_seconds,
            timeout=timeout,
            entries=_entries(entries),
            tls=tls,
            allow_unisolated_jobs=allow_unisolated_jobs,
        )
    )


@app.command()
def keys(
    directory: Annotated[Path, typer.Argument(help="where issuer.key and issuer.pub go")] = Path(
        "glidewms-state/keys"
    ),
) -> None:
    """Create the installation's token issuer key pair, and the pilot issuer's
    (the pool's, for pilot tokens only), each kept if present."""
    from glidewms.security.tokens import generate_keypair

    private, public = generate_keypair(directory)
    pilot_private, pilot_public = generate_keypair(directory, "pilot_issuer")
    typer.echo(f"private key: {private}\npublic key:  {public}")
    typer.echo(
        f"pilot issuer private key (the pool's): {pilot_private}\n"
        f"pilot issuer public key: {pilot_public}"
    )


@app.command()
def token(
    subject: Annotated[str, typer.Option(help="identity: a user, a frontend name")],
    scope: Annotated[list[str], typer.Option(help="user, pilot, frontend, admin or metrics")],
    out: Annotated[Path, typer.Option(help="file to write the token to (mode 0600)")],
    key: Annotated[Path, typer.Option(help="issuer private key")] = Path(
        "glidewms-state/keys/issuer.key"
    ),
    lifetime: Annotated[float, typer.Option(help="seconds")] = 30 * 24 * 3600.0,
) -> None:
    """Create a token. It is written to a file, never printed."""
    from glidewms.security.tokens import TokenIssuer, write_secret

    try:
        issued = TokenIssuer.from_file(key).issue(subject, scope, lifetime)
    except (OSError, ValueError) as exc:
        raise fail(str(exc), 2) from None
    write_secret(out, issued)
    typer.echo(f"token for {subject} ({' '.join(scope)}) written to {out}")


user.register(app)
tail.register(app)
userlog_cmds.register_commands(app)
pool_cmds.register(app, _services["pool"])
status_cmds.register(app, _services["pool"])
factory_cmds.register(app, _services["factory"])
frontend_cmds.register(app, _services["frontend"])
