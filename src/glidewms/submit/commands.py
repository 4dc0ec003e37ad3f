"""Every condor_submit command, and what glidewms does with it.

The table is the single source for three things: which keys are real HTCondor
commands (so a typo suggestion never fires for one), which are refused at
submit with the reason, and the command list of docs/submit.md (kept in step
by a test: `python -m glidewms.submit.commands` prints the table).

`kind` says how a simple command becomes its attribute: "str" (string as
written), "strq" (string, outer quotes removed), "expr" (a checked ClassAd
expression), "bool", "int", "list" (comma-separated string); None means a
dedicated translation in the builder modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Status(Enum):
    AS_HTCONDOR = "supported"
    DIFFERENT = "supported differently"
    IGNORED = "accepted, no effect"
    REFUSED = "refused"


@dataclass(frozen=True)
class Command:
    name: str
    status: Status
    note: str = ""
    aliases: tuple[str, ...] = ()
    attr: str | None = None
    kind: str | None = None


S, D, N, R = Status.AS_HTCONDOR, Status.DIFFERENT, Status.IGNORED, Status.REFUSED
_GRID = "grid universe jobs go to other batch systems; glidewms runs vanilla and container jobs"
_VM = "the vm universe is not supported"
_JAVA = "the java universe is not supported"
_STD = "a standard-universe (remote I/O) feature that no pilot provides"
_NO_MAIL = "kept in the ad; glidewms sends no e-mail"
_INFO = "kept in the ad; informational for glidewms"
_RUNTIME = "kept in the ad for the pilot's container runtime"

COMMANDS: tuple[Command, ...] = (
    # basic commands
    Command("arguments", S, "both syntaxes; stored as `Arguments` (new syntax)", ("args",)),
    Command("arguments2", R, "use `arguments` (both syntaxes are accepted there)"),
    Command("allow_arguments_v1", N, "both argument syntaxes are always accepted"),
    Command("environment", S, "both syntaxes; stored as `Environment` (new syntax)", ("env",)),
    Command("environment2", R, "use `environment` (both syntaxes are accepted there)"),
    Command("allow_environment_v1", N, "both environment syntaxes are always accepted"),
    Command(
        "getenv",
        S,
        "true/false or a list of names with `*` wildcards and `!` "
        "exclusions; copied from the environment of `glidewms submit`",
        ("get_env",),
    ),
    Command(
        "executable",
        S,
        "a relative path is relative to the submit file's directory "
        "(not `initialdir`); with `transfer_executable = false`, a path on the execute "
        "node",
        ("cmd",),
    ),
    Command("shell", S, "runs `/bin/sh -c <command>` on the execute node"),
    Command("input", S, "the file travels in the sandbox", ("stdin",)),
    Command("output", S, "stored as an absolute path", ("stdout",)),
    Command("error", S, "stored as an absolute path", ("stderr",)),
    Command(
        "log",
        D,
        "`UserLog` is set (absolute path); the event log in HTCondor's format "
        "comes from the pool (see below)",
        ("userlog",),
    ),
    Command(
        "log_xml",
        N,
        "kept in the ad (`UserLogUseXML`)",
        ("userlogusexml",),
        "UserLogUseXML",
        "bool",
    ),
    Command("batch_name", S, "", ("jobbatchname",), "JobBatchName", "strq"),
    Command("batch_id", S, "", ("jobbatchid",), "JobBatchId", "strq"),
    Command("notification", D, _NO_MAIL + " (`JobNotification`)", ("jobnotification",)),
    Command("notify_user", D, _NO_MAIL, ("notifyuser",), "NotifyUser", "str"),
    Command("email_attributes", D, _NO_MAIL, ("emailattributes",), "EmailAttributes", "list"),
    Command("priority", S, "", ("prio", "jobprio")),
    Command(
        "universe", S, "vanilla, container and docker; the others are refused", ("jobuniverse",)
    ),
    Command(
        "queue",
        S,
        "all forms: count, `in`, `from` (file, inline list, `-` for stdin, `cmd \\|` "
        "run as condor_submit runs it), `matching` (files/dirs), slices",
    ),
    Command(
        "max_materialize",
        S,
        "late materialisation: at most this many of the cluster's jobs in the queue at once "
        "(`JobMaterializeLimit`)",
        ("jobmaterializelimit",),
    ),
    Command(
        "max_idle",
        S,
        "late materialisation: at most this many of the cluster's jobs idle or held at once "
        "(`JobMaterializeMaxIdle`)",
        ("materialize_max_idle", "jobmaterializemaxidle"),
    ),
    Command("description", S, "", ("jobdescription",), "JobDescription", "str"),
    Command("initialdir", S, "", ("initial_dir", "iwd", "job_iwd")),
    # matchmaking
    Command(
        "requirements",
        S,
        "combined with the resource and container clauses glidewms adds, as condor_submit does",
    ),
    Command("rank", S, "", ("preferences",), "Rank", "expr"),
    Command("request_cpus", S, "a number or an expression", ("requestcpus",)),
    Command(
        "request_memory", S, "MB by default; K/M/G/T suffixes; or an expression", ("requestmemory",)
    ),
    Command(
        "request_disk", S, "KB by default; K/M/G/T suffixes; or an expression", ("requestdisk",)
    ),
    Command("request_gpus", S, "", ("requestgpus",)),
    Command(
        "request_<name>",
        S,
        "a custom resource `Request<name>`, matched against the slot's `<name>`",
    ),
    Command(
        "require_gpus",
        S,
        "matched with `countMatches` against the slot's `AvailableGPUs` property ads",
        ("requiregpus",),
    ),
    Command("gpus_minimum_capability", S, "", ("gpusmincapability",)),
    Command("gpus_maximum_capability", S, "", ("gpusmaxcapability",)),
    Command("gpus_minimum_memory", S, "MB by default; K/M/G/T suffixes", ("gpusminmemory",)),
    Command("gpus_minimum_runtime", S, "", ("gpusminruntime",)),
    Command("cuda_version", S, "", ("cudaversion",)),
    Command("retry_request_memory", R, "automatic resubmission with more memory is not supported"),
    Command(
        "retry_request_memory_increase",
        R,
        "automatic resubmission with more memory is not supported",
    ),
    Command(
        "retry_request_memory_max", R, "automatic resubmission with more memory is not supported"
    ),
    Command("retry_request_disk", R, "automatic resubmission with more disk is not supported"),
    Command("concurrency_limits", S, "the pool enforces the limits", ("concurrencylimits",)),
    Command("concurrency_limits_expr", S, "the pool enforces the limits"),
    Command(
        "accounting_group",
        S,
        "sets `AcctGroup`, `AcctGroupUser` and `AccountingGroup`",
        ("accountinggroup",),
    ),
    Command(
        "accounting_group_user", S, "default: the login name of the submitter", ("acctgroupuser",)
    ),
    Command(
        "nice_user",
        R,
        "use `accounting_group` (condor_submit maps it to a nice-user "
        "group the pool does not have)",
        ("niceuser",),
    ),
    Command("project_name", S, "", ("projectname",), "ProjectName", "str"),
    # file transfer
    Command(
        "should_transfer_files",
        D,
        "default YES (no shared file system); IF_NEEDED "
        "behaves as YES; NO requires a slot with the same `FileSystemDomain`",
        ("shouldtransferfiles",),
    ),
    Command(
        "when_to_transfer_output",
        S,
        "ON_EXIT_OR_EVICT: the files of a run whose pilot ended go to the next run "
        "(top-level files)",
        ("whentotransferoutput",),
    ),
    Command("transfer_executable", S, "", ("transferexecutable",)),
    Command(
        "transfer_input_files",
        S,
        "files, directories (trailing `/`: contents) and URLs (fetched on the execute node)",
        ("transferinputfiles",),
    ),
    Command("transfer_output_files", S, '`""` transfers nothing', ("transferoutputfiles",)),
    Command("transfer_output_remaps", S, "", ("transferoutputremaps",)),
    Command(
        "transfer_checkpoint_files",
        S,
        "the checkpoint (default: what output transfer would send); kept by the pool",
        ("transfercheckpoint",),
        "TransferCheckpoint",
        "str",
    ),
    Command(
        "checkpoint_exit_code",
        S,
        "exit with it: checkpoint kept, the job requeued to resume from it (`NumCkpts`)",
        ("successcheckpointexitcode",),
        "SuccessCheckpointExitCode",
        "int",
    ),
    Command(
        "transfer_input",
        D,
        "false: the job's stdin is /dev/null (the pilot opens no node file for a job)",
        ("transferin",),
    ),
    Command("transfer_output", S, "false: stdout stays on the execute node", ("transferout",)),
    Command("transfer_error", S, "false: stderr stays on the execute node", ("transfererr",)),
    Command(
        "stream_output",
        S,
        "the pool receives stdout while the job runs: `glidewms tail`",
        ("streamout",),
    ),
    Command(
        "stream_error",
        S,
        "the pool receives stderr while the job runs: `glidewms tail --stderr`",
        ("streamerr",),
    ),
    Command("stream_input", R, "stdin is transferred, not streamed", ("streamin",)),
    Command("x509userproxy", S, "the proxy travels with the job; `X509_USER_PROXY` is set"),
    Command("use_x509userproxy", S, "the proxy named by `X509_USER_PROXY` or /tmp/x509up_u<uid>"),
    Command(
        "max_transfer_input_mb",
        N,
        "kept in the ad",
        ("maxtransferinputmb",),
        "MaxTransferInputMB",
        "expr",
    ),
    Command(
        "max_transfer_output_mb",
        N,
        "kept in the ad",
        ("maxtransferoutputmb",),
        "MaxTransferOutputMB",
        "expr",
    ),
    Command(
        "preserve_relative_paths",
        S,
        "inputs under `initialdir` keep their relative path in the sandbox, outputs theirs "
        "below it",
        (),
        "PreserveRelativePaths",
        "bool",
    ),
    Command("output_destination", R, "outputs come back with `glidewms fetch`"),
    Command("output_directory", R, "outputs come back with `glidewms fetch`"),
    Command("public_input_files", R, "use `transfer_input_files`"),
    Command("checkpoint_destination", R, "checkpoints are kept by the pool"),
    Command(
        "transfer_plugins",
        R,
        "user-supplied transfer plugins are not run; http and https URLs are fetched by the pilot",
    ),
    Command(
        "encrypt_input_files",
        N,
        "transfers use the services' transport: HTTPS when TLS is configured",
    ),
    Command(
        "encrypt_output_files",
        N,
        "transfers use the services' transport: HTTPS when TLS is configured",
    ),
    Command(
        "dont_encrypt_input_files",
        N,
        "transfers use the services' transport: HTTPS when TLS is configured",
    ),
    Command(
        "dont_encrypt_output_files",
        N,
        "transfers use the services' transport: HTTPS when TLS is configured",
    ),
    Command("encrypt_execute_directory", N, "not available on pilots"),
    Command(
        "erase_output_and_error_on_restart",
        N,
        "kept in the ad",
        ("eraseoutputanderroronrestart",),
        "EraseOutputAndErrorOnRestart",
        "bool",
    ),
    Command("skip_filechecks", N, "files are always checked at submit"),
    Command("skip_if_dataflow", R, "dataflow jobs are not supported"),
    Command("aws_access_key_id_file", R, "s3:// inputs are not supported"),
    Command("aws_secret_access_key_file", R, "s3:// inputs are not supported"),
    Command("aws_region", R, "s3:// inputs are not supported"),
    Command("s3_access_key_id_file", R, "s3:// inputs are not supported"),
    Command("s3_secret_access_key_file", R, "s3:// inputs are not supported"),
    Command("gs_access_key_id_file", R, "gs:// inputs are not supported"),
    Command("gs_secret_access_key_file", R, "gs:// inputs are not supported"),
    # policy
    Command(
        "max_retries",
        D,
        "stored as `MaxRetries`: a job that exits non-zero runs again until it has run N+1 times",
        ("jobmaxretries",),
    ),
    Command("retry_until", R, "use `max_retries` with `on_exit_remove`"),
    Command("success_exit_code", R, "use `max_retries` with `on_exit_remove`"),
    Command("on_exit_hold", S, "", ("onexithold",), "OnExitHold", "expr"),
    Command("on_exit_hold_reason", S, "", ("onexitholdreason",), "OnExitHoldReason", "expr"),
    Command("on_exit_hold_subcode", S, "", ("onexitholdsubcode",), "OnExitHoldSubCode", "expr"),
    Command("on_exit_remove", S, "", ("onexitremove",), "OnExitRemove", "expr"),
    Command("periodic_hold", S, "", ("periodichold",), "PeriodicHold", "expr"),
    Command("periodic_hold_reason", S, "", ("periodicholdreason",), "PeriodicHoldReason", "expr"),
    Command(
        "periodic_hold_subcode", S, "", ("periodicholdsubcode",), "PeriodicHoldSubCode", "expr"
    ),
    Command("periodic_release", S, "", ("periodicrelease",), "PeriodicRelease", "expr"),
    Command("periodic_remove", S, "", ("periodicremove",), "PeriodicRemove", "expr"),
    Command("periodic_vacate", R, "the pool does not vacate running jobs by policy"),
    Command("hold", R, "submit, then `glidewms hold`"),
    Command("leave_in_queue", R, "finished jobs move to the history"),
    Command("keep_claim_idle", N, "pilots claim jobs one at a time"),
    Command("next_job_start_delay", N, "the pool starts jobs as pilots claim them"),
    Command("allowed_execute_duration", R, "run-time limits are not enforced by pilots yet"),
    Command("allowed_job_duration", R, "run-time limits are not enforced by pilots yet"),
    Command("job_max_vacate_time", S, "", ("jobmaxvacatetime",), "JobMaxVacateTime", "expr"),
    Command(
        "max_job_retirement_time",
        N,
        "kept in the ad",
        ("maxjobretirementtime",),
        "MaxJobRetirementTime",
        "expr",
    ),
    Command(
        "want_graceful_removal",
        N,
        "kept in the ad",
        ("wantgracefulremoval",),
        "WantGracefulRemoval",
        "expr",
    ),
    Command("kill_sig", N, "kept in the ad", ("killsig",), "KillSig", "str"),
    Command("remove_kill_sig", N, "kept in the ad", ("removekillsig",), "RemoveKillSig", "str"),
    Command("hold_kill_sig", N, "kept in the ad", ("holdkillsig",), "HoldKillSig", "str"),
    Command("kill_sig_timeout", N, "kept in the ad", ("killsigtimeout",), "KillSigTimeout", "int"),
    Command(
        "job_lease_duration",
        N,
        "pilot leases are the pool's",
        ("jobleaseduration",),
        "JobLeaseDuration",
        "expr",
    ),
    # container and docker universes
    Command(
        "container_image",
        S,
        "docker://, .sif or a directory; matched only with slots "
        "that have a container runtime for that kind (`HasContainer`, `HasDockerURL`/"
        "`HasSIF`/`HasSandboxImage`); an absolute path missing here is taken as a path on "
        "the execute node",
        ("containerimage",),
    ),
    Command(
        "docker_image",
        S,
        "matched only with slots that have `HasDocker` (docker "
        "universe) or `HasDockerURL` (container universe)",
        ("dockerimage",),
    ),
    Command("docker_pull_policy", S, _RUNTIME, ("dockerpullpolicy",), "DockerPullPolicy", "str"),
    Command("docker_network_type", S, _RUNTIME, ("dockernetworktype",)),
    Command(
        "docker_override_entrypoint",
        S,
        _RUNTIME,
        ("dockeroverrideentrypoint",),
        "DockerOverrideEntrypoint",
        "bool",
    ),
    Command("docker_send_credentials", R, "docker credentials are not sent to pilots"),
    Command("transfer_container", S, _RUNTIME, ("transfercontainer",), "TransferContainer", "bool"),
    Command(
        "container_target_dir", S, _RUNTIME, ("containertargetdir",), "ContainerTargetDir", "strq"
    ),
    Command(
        "mount_under_scratch",
        S,
        _RUNTIME,
        ("jobmountunderscratch",),
        "JobMountUnderScratch",
        "strq",
    ),
    Command(
        "container_is_common",
        N,
        "no common-file catalog; the image travels with each job",
        ("containeriscommon",),
    ),
    Command("container_service_names", R, "pilots accept no inbound connections"),
    Command("<service-name>_container_port", R, "pilots accept no inbound connections"),
    # advanced
    Command("coresize", N, "kept in the ad", ("core_size",), "CoreSize", "int"),
    Command("image_size", N, "kept in the ad", ("imagesize",), "ImageSize", "int"),
    Command(
        "job_ad_information_attrs",
        N,
        _INFO,
        ("jobadinformationattrs",),
        "JobAdInformationAttrs",
        "str",
    ),
    Command("job_machine_attrs", N, _INFO, ("jobmachineattrs",), "JobMachineAttrs", "str"),
    Command(
        "job_machine_attrs_history_length", N, _INFO, (), "JobMachineAttrsHistoryLength", "int"
    ),
    Command("submit_event_notes", N, _INFO, ("submiteventnotes",), "SubmitEventNotes", "str"),
    Command(
        "submit_event_user_notes",
        N,
        _INFO,
        ("submiteventusernotes",),
        "SubmitEventUserNotes",
        "str",
    ),
    Command("submit_event_notes_attrs", N, _INFO, (), "SubmitEventNotesAttrs", "str"),
    Command(
        "ulog_execute_attrs", N, _INFO, ("ulogexecuteeventattrs",), "ULogExecuteEventAttrs", "str"
    ),
    Command("dagman_log", N, _INFO, ("dagmannodeslog",), "DAGManNodesLog", "str"),
    Command("match_list_length", N, _INFO, ("lastmatchlistlength",), "LastMatchListLength", "int"),
    Command("jobset", N, _INFO, ("jobsetname",), "JobSetName", "strq"),
    Command("want_job_networking", N, "pilots decide the job's network"),
    Command("want_io_proxy", N, "no I/O proxy on pilots"),
    Command("starter_debug", N, "no HTCondor starter on pilots"),
    Command("starter_log", N, "no HTCondor starter on pilots"),
    Command("stack_size", N, "kept in the ad", ("stacksize",), "StackSize", "expr"),
    Command("load_profile", N, "a Windows feature"),
    Command("rendezvousdir", N, "a Windows/parallel feature"),
    Command("manifest", R, "job manifests are not produced"),
    Command("manifest_dir", R, "job manifests are not produced"),
    Command("noop_job", R, "every queued job runs"),
    Command("noop_job_exit_code", R, "every queued job runs"),
    Command("noop_job_exit_signal", R, "every queued job runs"),
    Command("primary_unix_group", R, "jobs run as the pilot's user"),
    Command("run_as_owner", R, "jobs run as the pilot's user"),
    Command("remote_initialdir", R, "the sandbox is the job's directory on the execute node"),
    Command("deferral_time", R, "deferred start is not supported"),
    Command("deferral_window", R, "deferred start is not supported"),
    Command("deferral_prep_time", R, "deferred start is not supported"),
    Command("cron_minute", R, "cron jobs are not supported"),
    Command("cron_hour", R, "cron jobs are not supported"),
    Command("cron_day_of_month", R, "cron jobs are not supported"),
    Command("cron_month", R, "cron jobs are not supported"),
    Command("cron_day_of_week", R, "cron jobs are not supported"),
    Command("cron_window", R, "cron jobs are not supported"),
    Command("cron_prep_time", R, "cron jobs are not supported"),
    Command(
        "use_scitokens",
        R,
        "job credentials other than X.509 proxies are not delivered",
        ("use_scitoken",),
    ),
    Command("scitokens_file", R, "job credentials other than X.509 proxies are not delivered"),
    Command(
        "use_oauth_services",
        R,
        "job credentials other than X.509 proxies are not delivered",
        ("useoauthservices",),
    ),
    Command(
        "<credential_service_name>_oauth_permissions", R, "OAuth credentials are not delivered"
    ),
    Command("<credential_service_name>_oauth_resource", R, "OAuth credentials are not delivered"),
    Command("send_credential", R, "credentials are not sent to pilots"),
    Command("delegate_job_gsi_credentials_lifetime", N, "the proxy file is copied as is"),
    Command(
        "machine_count", R, "the parallel universe is not supported", ("node_count", "nodecount")
    ),
    Command("interactive_executable", R, "interactive jobs are not supported"),
    Command("interactive_args", R, "interactive jobs are not supported"),
    Command("exit_requirements", R, "an old command; use `on_exit_remove`"),
    Command("disk_usage", N, "kept in the ad", ("diskusage",), "DiskUsage", "int"),
    Command("memory_usage", N, "kept in the ad", ("memoryusage",), "MemoryUsage", "expr"),
    Command("transfer_common_input", R, "no common-file catalog"),
    Command("on_evict_checks", R, "eviction policies are not supported"),
    Command("want_ads", N, "not used by glidewms"),
    Command("dagman_job_id", N, _INFO, ("dagmanjobid",), "DAGManJobId", "int"),
    Command("dag_node_name", N, _INFO, ("dagnodename",), "DAGNodeName", "str"),
    Command("want_parallel_scheduling", R, "the parallel universe is not supported"),
    # other universes
    *(
        Command(n, R, _GRID)
        for n in (
            "grid_resource",
            "arc_application",
            "arc_data_staging",
            "arc_resources",
            "arc_rte",
            "azure_admin_key",
            "azure_admin_username",
            "azure_auth_file",
            "azure_image",
            "azure_location",
            "azure_size",
            "batch_extra_submit_args",
            "batch_project",
            "batch_queue",
            "batch_runtime",
            "cloud_label_names",
            "cloud_label_<name>",
            "ec2_access_key_id",
            "ec2_ami_id",
            "ec2_availability_zone",
            "ec2_block_device_mapping",
            "ec2_ebs_volumes",
            "ec2_elastic_ip",
            "ec2_iam_profile_arn",
            "ec2_iam_profile_name",
            "ec2_instance_type",
            "ec2_keypair",
            "ec2_keypair_file",
            "ec2_key_pair_file",
            "ec2_keyp_air",
            "ec2_parameter_names",
            "ec2_parameter_<name>",
            "ec2_secret_access_key",
            "ec2_security_groups",
            "ec2_security_ids",
            "ec2_spot_price",
            "ec2_tag_names",
            "ec2_tag_<name>",
            "wantnametag",
            "ec2_user_data",
            "ec2_user_data_file",
            "ec2_vpc_ip",
            "ec2_vpc_subnet",
            "gce_account",
            "gce_auth_file",
            "gce_image",
            "gce_json_file",
            "gce_machine_type",
            "gce_metadata",
            "gce_metadata_file",
            "gce_preemptible",
        )
    ),
    *(
        Command(n, R, _VM)
        for n in (
            "vm_disk",
            "vm_checkpoint",
            "vm_macaddr",
            "vm_memory",
            "vm_networking",
            "vm_networking_type",
            "vm_no_output_vm",
            "vm_type",
            "vm_vcpus",
            "vm_vnc",
            "xen_initrd",
            "xen_kernel",
            "xen_kernel_params",
            "xen_root",
        )
    ),
    *(
        Command(n, R, _JAVA)
        for n in ("jar_files", "java_vm_args", "java_vm_arguments", "java_vm_arguments2")
    ),
    *(
        Command(n, R, _STD)
        for n in (
            "buffer_files",
            "buffer_size",
            "buffer_block_size",
            "file_remaps",
            "fetch_files",
            "compress_files",
            "append_files",
            "local_files",
        )
    ),
    *(
        Command(n, R, "tool daemons are not supported")
        for n in (
            "tool_daemon_cmd",
            "tool_daemon_args",
            "tool_daemon_arguments",
            "tool_daemon_arguments2",
            "tool_daemon_input",
            "tool_daemon_error",
            "tool_daemon_output",
            "suspend_job_at_exec",
        )
    ),
    *(
        Command(n, R, "the parallel universe is not supported")
        for n in ("parallel_script_shadow", "parallel_script_starter")
    ),
)

BY_NAME: dict[str, Command] = {}
for _c in COMMANDS:
    for _name in (_c.name, *_c.aliases):
        if "<" not in _name:
            BY_NAME.setdefault(_name.lower(), _c)

KNOWN_PREFIXES = ("request_", "require_", "cloud_label_", "ec2_parameter_", "ec2_tag_")
_REFUSED_SUFFIXES = ("_container_port", "_oauth_permissions", "_oauth_resource")


def lookup(key: str) -> Command | None:
    """The command a (lower-case) key names, including `<name>` families."""
    found = BY_NAME.get(key)
    if found is not None:
        return found
    if key.startswith(("cloud_label_", "ec2_parameter_", "ec2_tag_")):
        return Command(key, R, _GRID)
    for suffix in _REFUSED_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return next(c for c in COMMANDS if c.name.endswith(suffix))
    return None


NAMES: dict[str, tuple[str, ...]] = {
    c.name: (c.name.lower(), *(a.lower() for a in c.aliases)) for c in COMMANDS
}
SIMPLE: tuple[Command, ...] = tuple(c for c in COMMANDS if c.attr and c.kind)


def names_of(command: str) -> tuple[str, ...]:
    """The lower-case keys that set a command, in HTCondor's lookup order."""
    return NAMES[command]


def reference_markdown() -> str:
    """The command table of docs/submit.md."""
    rows = ["| command | glidewms | notes |", "|---|---|---|"]
    for c in sorted(COMMANDS, key=lambda c: c.name.lower()):
        aliases = f" (also {', '.join(f'`{a}`' for a in c.aliases)})" if c.aliases else ""
        rows.append(f"| `{c.name}`{aliases} | {c.status.value} | {c.note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
