"""Submit-description parser: key mappings, syntaxes, queue forms, macros, and errors.

Every malformed description must raise SubmitError with the right line, because the
caller queues nothing in that case; so most error tests check the line number too.
The HTCondor-specific corners (macro functions, conditionals, item lists, each
command's attributes, the realistic files) are in the other test_submit_* modules.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import classad2
import htcondor2  # noqa: F401  (before classad2 is used)
import pytest

from glidewms.submit import (
    CLUSTER_PLACEHOLDER,
    DEFAULT_REQUEST_DISK_KIB,
    DEFAULT_REQUEST_MEMORY_MIB,
    JobDescription,
    SubmitDescription,
    SubmitError,
    load_submit,
    parse_submit,
)

Parse = Callable[[str], SubmitDescription]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    for name in ("a.dat", "b.dat", "c.txt", "in1.txt", "in 2.txt", "stdin.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run2.sh").write_text("#!/bin/sh\n")
    (tmp_path / "sub" / "x.dat").write_text("x")
    (tmp_path / "dirA.dat").mkdir()
    return tmp_path


@pytest.fixture
def parse(base: Path) -> Parse:
    def _parse(text: str) -> SubmitDescription:
        return parse_submit(textwrap.dedent(text), "job.sub", base)

    return _parse


@pytest.fixture
def job(parse: Parse) -> Callable[[str], JobDescription]:
    """The single job of `executable = run.sh`, the given lines, and `queue`."""

    def _job(lines: str) -> JobDescription:
        desc = parse("executable = run.sh\n" + textwrap.dedent(lines) + "\nqueue\n")
        assert len(desc.jobs) == 1
        return desc.jobs[0]

    return _job


def error_of(parse: Parse, text: str) -> SubmitError:
    with pytest.raises(SubmitError) as info:
        parse(text)
    return info.value


# ---------------------------------------------------------------- key mappings


@pytest.mark.parametrize(
    ("line", "attr", "expected"),
    [
        ("request_cpus = 4", "RequestCpus", "4"),
        ("request_memory = 2048", "RequestMemory", "2048"),
        ("request_disk = 4096", "RequestDisk", "4096"),
        ("request_gpus = 2", "RequestGPUs", "2"),
        ("RequestMemory = 3000", "RequestMemory", "3000"),  # attribute-style alias
        ("Request_CPUs = 3", "RequestCpus", "3"),  # keys are case-insensitive
        ("priority = -5", "JobPrio", "-5"),
        ("max_retries = 3", "MaxRetries", "3"),
        ("universe = Vanilla", "JobUniverse", "5"),
        ("accounting_group = group_cms.prod", "AcctGroup", '"group_cms.prod"'),
        ("accounting_group_user = alice", "AcctGroupUser", '"alice"'),
        ("batch_name = my batch", "JobBatchName", '"my batch"'),
        ("JobBatchName = nightly", "JobBatchName", '"nightly"'),
        ('description = says "hi"', "JobDescription", '"says \\"hi\\""'),
        ("rank = TARGET.Memory", "Rank", "TARGET.Memory"),
        ("periodic_hold = NumJobStarts > 3", "PeriodicHold", "NumJobStarts > 3"),
        ("periodic_remove = JobStatus == 5", "PeriodicRemove", "JobStatus == 5"),
        ("periodic_release = HoldReasonCode == 13", "PeriodicRelease", "HoldReasonCode == 13"),
        ('periodic_hold_reason = "too many"', "PeriodicHoldReason", '"too many"'),
        ("on_exit_remove = ExitCode == 0", "OnExitRemove", "ExitCode == 0"),
        ("on_exit_hold = ExitCode =!= 0", "OnExitHold", "ExitCode =!= 0"),
        ("job_max_vacate_time = 300", "JobMaxVacateTime", "300"),
        ("should_transfer_files = if_needed", "ShouldTransferFiles", '"IF_NEEDED"'),
        (
            "when_to_transfer_output = ON_EXIT_OR_EVICT",
            "WhenToTransferOutput",
            '"ON_EXIT_OR_EVICT"',
        ),
        ("transfer_output_files = a.out, b.out,c.out", "TransferOutput", '"a.out,b.out,c.out"'),
        # commas alone separate, as in condor_submit: a name may hold a space
        ("transfer_output_files = a.out, b c.out", "TransferOutput", '"a.out,b c.out"'),
        ('transfer_output_files = ""', "TransferOutput", '""'),
        ("transfer_executable = true", "TransferExecutable", "true"),
        ('+DESIRED_Sites = "SiteA,SiteB"', "DESIRED_Sites", '"SiteA,SiteB"'),
        ("+WantGPU = true", "WantGPU", "true"),
        ("MY.Weight = 2 * 3", "Weight", "2 * 3"),
        ('my.ProjectName = "x"', "ProjectName", '"x"'),
    ],
)
def test_key_maps_to_attribute(job, line: str, attr: str, expected: str) -> None:
    assert job(line).attrs[attr] == expected


def test_defaults(job, base: Path) -> None:
    j = job("")
    assert j.attrs["Cmd"] == f'"{base / "run.sh"}"'
    assert j.executable == base / "run.sh"
    assert j.attrs["RequestCpus"] == "1"
    assert j.attrs["RequestMemory"] == str(DEFAULT_REQUEST_MEMORY_MIB) == "128"
    assert j.attrs["RequestDisk"] == str(DEFAULT_REQUEST_DISK_KIB) == "102400"
    assert j.attrs["JobPrio"] == "0"
    assert j.attrs["JobUniverse"] == "5"
    assert j.attrs["TransferExecutable"] == "true"
    assert j.attrs["ShouldTransferFiles"] == '"YES"'
    assert j.attrs["WhenToTransferOutput"] == '"ON_EXIT"'
    assert j.attrs["Arguments"] == '""' and j.args == []
    assert j.attrs["Environment"] == '""' and j.env == {}
    assert j.attrs["Iwd"] == f'"{base}"' and j.iwd == base
    assert j.attrs["ProcId"] == "0" and j.proc_id == 0
    for absent in (
        "Out",
        "Err",
        "UserLog",
        "In",
        "TransferInput",
        "TransferOutput",
        "RequestGPUs",
        "MaxRetries",
        "Rank",
        "ClusterId",
    ):
        assert absent not in j.attrs
    assert j.out is None and j.err is None and j.transfer_output is None and j.inputs == []
    assert j.attrs["Requirements"] == (
        "(TARGET.Cpus >= RequestCpus) && (TARGET.Memory >= RequestMemory)"
        " && (TARGET.Disk >= RequestDisk)"
    )


def test_requirements_combine_user_clause_and_gpus(job) -> None:
    j = job('requirements = TARGET.OpSys == "LINUX" || false\nrequest_gpus = 1')
    assert j.attrs["Requirements"] == (
        '(TARGET.OpSys == "LINUX" || false) && (TARGET.Cpus >= RequestCpus)'
        " && (TARGET.Memory >= RequestMemory) && (TARGET.Disk >= RequestDisk)"
        " && (TARGET.GPUs >= RequestGPUs)"
    )
    assert "GPUs" not in job("request_gpus = 0").attrs["Requirements"]


def test_requirements_match_a_slot_with_classad2(job) -> None:
    j = job(
        "request_cpus = 2\nrequest_memory = 2 GB\n"
        '+DESIRED_Sites = "SiteA,SiteB"\n'
        "requirements = stringListMember(TARGET.GLIDEIN_Site, MY.DESIRED_Sites)"
    ).with_cluster(7)
    ad = classad2.parseOne(j.ad_text())
    slot = {"Cpus": 4, "Memory": 4096, "Disk": 10**7, "GLIDEIN_Site": "SiteB"}
    assert classad2.ClassAd(slot).matches(ad)
    assert not classad2.ClassAd({**slot, "Memory": 1024}).matches(ad)
    assert not classad2.ClassAd({**slot, "GLIDEIN_Site": "SiteC"}).matches(ad)


def test_paths_resolve_against_initialdir(job, base: Path) -> None:
    j = job(
        "initialdir = sub\nexecutable = sub/run2.sh\ntransfer_input_files = x.dat, ../a.dat\n"
        "output = o.txt\nerror = /tmp/e.txt\nlog = job.log\ninput = ../stdin.txt"
    )
    sub = base / "sub"
    assert j.iwd == sub and j.attrs["Iwd"] == f'"{sub}"'
    assert j.executable == sub / "run2.sh"
    assert j.out == str(sub / "o.txt") and j.attrs["Out"] == f'"{sub / "o.txt"}"'
    assert j.err == "/tmp/e.txt" and j.attrs["Err"] == '"/tmp/e.txt"'
    assert j.attrs["UserLog"] == f'"{sub / "job.log"}"'
    assert j.inputs == [sub / "x.dat", base / "a.dat", base / "stdin.txt"]
    assert j.attrs["TransferInput"] == f'"{sub / "x.dat"},{base / "a.dat"}"'
    assert j.attrs["In"] == f'"{base / "stdin.txt"}"'


def test_transfer_executable_false_uses_remote_path(job) -> None:
    j = job("executable = /usr/bin/env\ntransfer_executable = False")
    assert j.executable is None
    assert j.attrs["Cmd"] == '"/usr/bin/env"'
    assert j.attrs["TransferExecutable"] == "false"
    # relative, as condor_submit leaves it: a program the sandbox will hold
    k = job("executable = tool.sh\ntransfer_executable = false\ntransfer_input_files = a.dat")
    assert k.attrs["Cmd"] == '"tool.sh"' and k.executable is None


def test_executable_is_relative_to_the_submit_directory_not_initialdir(
    job, parse, base: Path
) -> None:
    """condor_submit resolves the executable against its working directory."""
    (base / "sub" / "run.sh").write_text("#!/bin/sh\n")
    assert job("initialdir = sub").executable == base / "run.sh"
    err = error_of(parse, "initialdir = sub\nexecutable = run2.sh\nqueue\n")
    assert err.line == 2 and f"looked for {base / 'run2.sh'}" in str(err)


def test_notification_is_kept_and_getenv_false_copies_nothing(job) -> None:
    j = job("notification = Never\nnotify_user = a@b.c\ngetenv = false\nmy_macro = 1")
    assert j.attrs["JobNotification"] == "0" and j.attrs["NotifyUser"] == '"a@b.c"'
    assert j.env == {} and j.attrs["Environment"] == '""'


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        ("2048", 2048),
        ("2 GB", 2048),
        ("2G", 2048),
        ("2gb", 2048),
        ("512M", 512),
        ("512 MB", 512),
        ("1.5G", 1536),
        ("1T", 1048576),
        ("1TB", 1048576),
        ("1024K", 1),
        ("1000KB", 1),
        ("1 GiB", 1024),
        ("0.5", 1),
    ],
)
def test_request_memory_units(job, value: str, mib: int) -> None:
    assert job(f"request_memory = {value}").attrs["RequestMemory"] == str(mib)


@pytest.mark.parametrize(
    ("value", "kib"),
    [
        ("4096", 4096),
        ("2 GB", 2 * 1024 * 1024),
        ("10M", 10240),
        ("3K", 3),
        ("3KB", 3),
        ("1T", 1024**3),
    ],
)
def test_request_disk_units(job, value: str, kib: int) -> None:
    assert job(f"request_disk = {value}").attrs["RequestDisk"] == str(kib)


@pytest.mark.parametrize(
    ("value", "tail"),
    [
        ("2 PB", ""),
        ("2 G B", ""),
        ("5B", ""),
        ("5 iB", ""),
        ("G", " (it evaluates to undefined)"),
        ('"big"', " (it evaluates to 'big')"),
        ("true", " (it evaluates to True)"),
    ],
)
def test_bad_sizes(parse: Parse, value: str, tail: str) -> None:
    err = error_of(parse, f"executable = run.sh\n\nrequest_memory = {value}\nqueue\n")
    assert err.line == 3
    assert str(err) == (
        "job.sub:3: request_memory: expected a size such as 2048, 2 GB or 512M, or an "
        f"expression giving a number, got {value!r}{tail}"
    )


@pytest.mark.parametrize("value", ["-1", "0", "-0.5 * 2"])
def test_sizes_below_one_are_refused(parse: Parse, value: str) -> None:
    err = error_of(parse, f"executable = run.sh\nrequest_memory = {value}\nqueue\n")
    assert err.line == 2 and f"expected at least 1, got {value!r}" in str(err)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("1e3", "1e3"),
        ("2 * 1024", "2 * 1024"),
        (
            "ifThenElse(MemoryUsage =!= undefined, MemoryUsage * 3 / 2, 2048)",
            "ifThenElse(MemoryUsage =!= undefined, MemoryUsage * 3 / 2, 2048)",
        ),
        ("max({2048, TARGET.Memory / 4})", "max({2048, TARGET.Memory / 4})"),
    ],
)
def test_request_memory_expressions(job, value: str, stored: str) -> None:
    assert job(f"request_memory = {value}").attrs["RequestMemory"] == stored


def test_error_message_format_matches_the_documented_example(parse: Parse) -> None:
    text = "executable = run.sh\n" + "\n" * 5 + "request_memory = lots\nqueue\n"
    err = error_of(parse, text)
    assert (err.source, err.line) == ("job.sub", 7)
    assert str(err) == (
        "job.sub:7: request_memory: expected a size such as 2048, 2 GB or 512M, or an "
        "expression giving a number, got 'lots' (it evaluates to undefined)"
    )


# ---------------------------------------------------------------- arguments / environment


@pytest.mark.parametrize(
    ("value", "argv"),
    [
        # new syntax, the condor_submit manual's examples
        ('"3 simple arguments"', ["3", "simple", "arguments"]),
        ("\"one 'two with spaces' 3\"", ["one", "two with spaces", "3"]),
        (
            "\"one \"\"two\"\" 'spacey ''quoted'' argument'\"",
            ["one", '"two"', "spacey 'quoted' argument"],
        ),
        # new syntax corners
        ("\"a '' b\"", ["a", "", "b"]),
        ("\"pre'fix suf'fix next\"", ["prefix suffix", "next"]),
        ('"  spaced\tout  "', ["spaced", "out"]),
        ('""', []),
        ("\"it''s\"", ["its"]),  # outside '...', '' is an empty quoted part
        ("\"'it''s'\"", ["it's"]),
        ('"back\\slash"', ["back\\slash"]),  # backslash is not special in the new syntax
        # old syntax: spaces separate, \" is a double quote, ' is literal
        ("one \\\"two\\\" 'three'", ["one", '"two"', "'three'"]),
        ("-n 5   --verbose", ["-n", "5", "--verbose"]),
    ],
)
def test_arguments(job, value: str, argv: list[str]) -> None:
    j = job(f"arguments = {value}")
    assert j.args == argv
    # The stored Arguments (V2 raw) is a valid ClassAd string that splits back the same.
    stored = classad2.ExprTree(j.attrs["Arguments"]).eval()
    assert job(f'arguments = "{stored.replace(chr(34), chr(34) * 2)}"').args == argv


@pytest.mark.parametrize(
    ("value", "env"),
    [
        (
            "\"one=1 two=\"\"2\"\" three='spacey ''quoted'' value'\"",
            {"one": "1", "two": '"2"', "three": "spacey 'quoted' value"},
        ),
        (
            "one=1;two=2;three=\"quotes have no 'special' meaning\"",
            {"one": "1", "two": "2", "three": "\"quotes have no 'special' meaning\""},
        ),
        ('"A=1 B=x=y EMPTY="', {"A": "1", "B": "x=y", "EMPTY": ""}),
        ("\"'PATH=/a b:/c'\"", {"PATH": "/a b:/c"}),
        ("A=1; B=2 ;", {"A": "1", "B": "2"}),
        ("ONLY=one value", {"ONLY": "one value"}),
    ],
)
def test_environment(job, value: str, env: dict[str, str]) -> None:
    j = job(f"environment = {value}")
    assert j.env == env
    stored = classad2.ExprTree(j.attrs["Environment"]).eval()
    assert job(f'environment = "{stored.replace(chr(34), chr(34) * 2)}"').env == env


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('arguments = "one \'two"', "unterminated single quote"),
        ('arguments = "one "two""', "inner double quotes doubled"),
        ('arguments = "unclosed', "inner double quotes doubled"),
        ('environment = "A=1 NOVALUE"', "expected NAME=value, got 'NOVALUE'"),
        ('environment = "=1"', "expected NAME=value"),
        ("environment = A=1;B", "expected NAME=value, got 'B'"),
    ],
)
def test_bad_arguments_and_environment(parse: Parse, line: str, fragment: str) -> None:
    err = error_of(parse, f"executable = run.sh\n{line}\nqueue\n")
    assert err.line == 2 and fragment in str(err)


# ---------------------------------------------------------------- queue statements


def _items(desc: SubmitDescription) -> list[list[str]]:
    return [j.args for j in desc.jobs]


@pytest.mark.parametrize(
    ("queue", "args", "expected"),
    [
        ("queue", "$(Process)", [["0"]]),
        ("queue 3", "$(Process) $(Step)", [["0", "0"], ["1", "1"], ["2", "2"]]),
        ("Queue 0\nqueue 1", "$(ProcId)", [["0"]]),
        ("queue 1+1", "$(Step)", [["0"], ["1"]]),
        ("queue in (a, b, c)", "$(Item) $(ItemIndex)", [["a", "0"], ["b", "1"], ["c", "2"]]),
        ("queue in a b,c", "$(Item)", [["a"], ["b"], ["c"]]),
        ("queue name in (x y)", "$(name) $(Row)", [["x", "0"], ["y", "1"]]),
        (
            "queue 2 name in (x, y)",
            "$(name) $(Step) $(Process)",
            [["x", "0", "0"], ["x", "1", "1"], ["y", "0", "2"], ["y", "1", "3"]],
        ),
        ("queue n in (\n  a, b\n  c\n)", "$(n)", [["a"], ["b"], ["c"]]),
        ("queue n in (\n)", "$(n)", []),
        ("queue n in [1:] (a, b, c)", "$(n) $(ItemIndex)", [["b", "1"], ["c", "2"]]),
        ("queue n in [::2] (a, b, c)", "$(n)", [["a"], ["c"]]),
        (
            "queue n, m from (\n  a 1\n  # skipped\n  b,2\n  c  three  words\n)",
            "\"'$(n)' '$(m)'\"",
            [["a", "1"], ["b", "2"], ["c", "three  words"]],
        ),
        # an empty line is an item with empty values (condor_submit queues it too)
        ("queue n, m from (\n  a 1\n\n)", "\"'$(n)' '$(m)'\"", [["a", "1"], ["", ""]]),
        ("queue n, m from (\nx\n)", "\"'$(n)' '$(m)'\"", [["x", ""]]),
        ("queue line from (one, two)", "\"'$(line)'\"", [["one, two"]]),
        ("queue n, m from items.txt", "\"$(n) '$(m)'\"", [["x", "1"], ["y", "2 3"]]),
        ("queue f matching *.dat", "$(f)", [["a.dat"], ["b.dat"], ["dirA.dat/"]]),
        ("queue f matching files *.dat c.txt", "$(f)", [["a.dat"], ["b.dat"], ["c.txt"]]),
        ("queue f matching dirs *.dat", "$(f)", [["dirA.dat/"]]),
        (
            "queue matching files (*.txt)",
            "\"'$Fn(Item)'\"",
            [["c"], ["in 2"], ["in1"], ["items"], ["stdin"]],
        ),
        ("queue f matching files [1:2] *.dat", "$(f)", [["b.dat"]]),
    ],
)
def test_queue_forms(
    parse: Parse, base: Path, queue: str, args: str, expected: list[list[str]]
) -> None:
    (base / "items.txt").write_text("x 1\ny 2 3\n")
    text = f"executable = run.sh\narguments = {args}\n{queue}\n"
    if expected:
        assert _items(parse(text)) == expected
    else:
        assert "produce no jobs" in str(error_of(parse, text))


def test_each_queue_statement_takes_the_values_above_it(parse: Parse) -> None:
    desc = parse(
        """
        executable = run.sh
        arguments = first $(Process)
        request_cpus = 2
        queue 2
        arguments = second $(Process)
        queue v in (p, q)
        request_cpus = 4
        queue
        """
    )
    assert _items(desc) == [
        ["first", "0"],
        ["first", "1"],
        ["second", "2"],
        ["second", "3"],
        ["second", "4"],
    ]
    assert [j.attrs["RequestCpus"] for j in desc.jobs] == ["2", "2", "2", "2", "4"]
    assert [j.proc_id for j in desc.jobs] == [0, 1, 2, 3, 4]


def test_queue_line_expands_macros(parse: Parse) -> None:
    desc = parse("executable = run.sh\nN = 3\nqueue $(N)\n")
    assert len(desc.jobs) == 3


def test_ten_thousand_jobs(parse: Parse) -> None:
    desc = parse(
        """
        executable = run.sh
        arguments = --seed $(Process)
        output = out/$(Cluster).$(Process).txt
        requirements = TARGET.HasDocker =?= true
        queue 10000
        """
    )
    assert len(desc.jobs) == 10000
    last = desc.jobs[-1]
    assert last.proc_id == 9999 and last.args == ["--seed", "9999"]
    assert last.with_cluster(5).out.endswith("/out/5.9999.txt")


# ---------------------------------------------------------------- macros


def test_macro_expansion(job) -> None:
    j = job(
        """
        base = data
        name = $(base)/set.$(Process)
        Arguments = $(NAME) $(undefined:fallback) $(DOLLAR)(x) $$(OpSys) \
            $$([TARGET.Memory]) $(nothing)
        greeting = hello
        greeting = $(greeting) world
        environment = "G='$(greeting)'"
        """
    )
    assert j.args == ["data/set.0", "fallback", "$(x)", "$$(OpSys)", "$$([TARGET.Memory])"]
    assert j.env == {"G": "hello world"}


def test_undefined_macros_expand_to_nothing_with_a_warning(parse: Parse) -> None:
    desc = parse("executable = run.sh\narguments = a$(nope)b $(Item)\nqueue 2\n")
    assert [j.args for j in desc.jobs] == [["ab"], ["ab"]]
    assert "job.sub:2: $(nope) is not defined: it expands to nothing" in desc.warnings
    assert "job.sub:2: $(Item) is not defined: it expands to nothing" in desc.warnings


def test_key_values_are_macros_and_custom_attrs_too(job) -> None:
    j = job('+Tag = "t1"\nrequest_cpus = 2\narguments = $(executable) $(request_cpus) $(MY.Tag)')
    assert j.args == ["run.sh", "2", '"t1"']


def test_file_name_macro_functions(parse: Parse) -> None:
    desc = parse(
        "executable = run.sh\narguments = $Fp(f) $Fn(f) $Fx(f) $Fnx(f) $Fq(f)\n"
        "queue f in (dir/sub/file.tar.gz)\n"
    )
    assert desc.jobs[0].args == [
        "dir/sub/",
        "file.tar",
        ".gz",
        "file.tar.gz",
        '"dir/sub/file.tar.gz"',
    ]


def test_cluster_placeholder_and_with_cluster(parse: Parse) -> None:
    desc = parse(
        """
        executable = run.sh
        arguments = $(Cluster).$(Process) keep=$$(ClusterId)
        environment = "JOB=$(ClusterId).$(ProcId)"
        output = out.$(Cluster).$(Process)
        error = err.$(ClusterId)
        transfer_output_files = res.$(Cluster)
        +Seed = $(Cluster) * 1000 + $(Process)
        queue 2
        """
    )
    j = desc.jobs[1]
    assert j.args == [f"{CLUSTER_PLACEHOLDER}.1", "keep=$$(ClusterId)"]
    assert j.attrs["Seed"] == "$(ClusterId) * 1000 + 1"
    filled = j.with_cluster(42)
    assert filled.args == ["42.1", "keep=$$(ClusterId)"]
    assert filled.env == {"JOB": "42.1"}
    assert filled.out.endswith("/out.42.1") and filled.err.endswith("/err.42")
    assert filled.transfer_output == ["res.42"]
    assert filled.attrs["Seed"] == "42 * 1000 + 1"
    assert filled.attrs["ClusterId"] == "42"
    assert filled.attrs["Arguments"] == '"42.1 keep=$$(ClusterId)"'
    assert j.attrs["Seed"] == "$(ClusterId) * 1000 + 1"  # the original is unchanged
    ad = classad2.parseOne(filled.ad_text())
    assert ad["Seed"].eval(ad) == 42001 and ad["ClusterId"] == 42 and ad["ProcId"] == 1


def test_ad_text_round_trips(job) -> None:
    j = job(
        r"""
        arguments = "tricky \back ""dq"" 'it''s' ünïcode"
        environment = "X='a;b' Y=[c]"
        description = semi; colon ] bracket "quote" \n
        +Nested = [ a = 1; b = "x;y" ].a + 1
        +List = { "a", "b" }
        +Str = "brace ] and ; inside"
        rank = /* comment; ] */ TARGET.Memory
        """
    ).with_cluster(3)
    ad = classad2.parseOne(j.ad_text())
    assert set(ad.keys()) == set(j.attrs)
    for name, text in j.attrs.items():
        assert str(ad.lookup(name)) == str(classad2.ExprTree(text)), name
    assert ad["JobDescription"] == 'semi; colon ] bracket "quote" \\n'
    assert ad["Arguments"] == "tricky \\back \"dq\" 'it''s' ünïcode"
    assert j.args == ["tricky", "\\back", '"dq"', "it's", "ünïcode"]
    assert ad["Nested"].eval(ad) == 2


def test_continuation_lines_crlf_and_comments(parse: Parse) -> None:
    text = (
        "# leading comment \\\r\n"
        "executable = run.sh\r\n"
        "requirements = TARGET.Cpus > 0 && \\\r\n"
        "# a comment inside the continued command \\\r\n"
        "   TARGET.Memory > 0\r\n"
        "arguments = a#b\r\n"
        "   \r\n"
        "queue\r\n"
    )
    j = parse(text).jobs[0]
    assert j.attrs["Requirements"].startswith("(TARGET.Cpus > 0 && TARGET.Memory > 0) &&")
    assert j.args == ["a#b"]


def test_a_comment_without_backslash_ends_a_continuation_as_in_htcondor(parse: Parse) -> None:
    """HTCondor keeps the comment's last character and ends the line there."""
    text = "executable = run.sh\narguments = x \\\n# note\nqueue\n"
    assert parse(text).jobs[0].args == ["x", "e"]


def test_unused_lookalike_is_fine_when_used_as_a_macro(job) -> None:
    j = job("inputs = a.dat, b.dat\ntransfer_input_files = $(inputs)")
    assert [p.name for p in j.inputs] == ["a.dat", "b.dat"]


def test_load_submit_resolves_against_the_file_directory(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (base / "sub" / "job.sub").write_text("executable = run2.sh\nqueue 2\n")
    monkeypatch.chdir("/")
    desc = load_submit(base / "sub" / "job.sub")
    assert desc.source == str(base / "sub" / "job.sub")
    assert [j.executable for j in desc.jobs] == [base / "sub" / "run2.sh"] * 2
    with pytest.raises(SubmitError, match="cannot read submit file") as info:
        load_submit(base / "missing.sub")
    assert info.value.line is None


# ---------------------------------------------------------------- errors, with line numbers


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (
            "executable = run.sh\nexecutable run.sh\nqueue",
            2,
            "expected 'key = value', a comment or a queue statement, got 'executable run.sh'",
        ),
        ("executable = run.sh\n\nrequest_disk = 3 XB\nqueue", 3, "request_disk: expected a size"),
        ("executable = run.sh\nrequest_cpus = 0\nqueue", 2, "expected at least 1, got '0'"),
        (
            "executable = run.sh\nrequest_cpus = two\nqueue",
            2,
            "expected a whole number, or an expression giving a number, got 'two' (it evaluates "
            "to undefined)",
        ),
        ("executable = run.sh\nrequest_cpus = 1_0\nqueue", 2, "got '1_0'"),
        ("executable = run.sh\npriority = high\nqueue", 2, "priority: expected a whole number"),
        (
            "executable = run.sh\nrequirements = TARGET.Cpus >=\nqueue",
            2,
            "requirements: not a valid ClassAd expression: 'TARGET.Cpus >='",
        ),
        ("executable = run.sh\nrequirements = (a && b\nqueue", 2, "not a valid ClassAd"),
        ('executable = run.sh\nrequirements = a; Cmd = "/bin/sh"\nqueue', 2, "';'"),
        ("executable = run.sh\nrequirements = a ] [ b\nqueue", 2, "unbalanced ']'"),
        ('executable = run.sh\nrank = "open\nqueue', 2, "unterminated quote"),
        ("executable = run.sh\nrank = a /* x\nqueue", 2, "unterminated comment"),
        ("executable = run.sh\n+Foo = 1; Requirements = true\nqueue", 2, "+Foo: ';'"),
        ("executable = run.sh\n+Foo = )\nqueue", 2, "+Foo: unbalanced"),
        ("executable = run.sh\nperiodic_remove = JobStatus ==\nqueue", 2, "periodic_remove"),
        ("\n\nexecutable = missing.sh\nqueue", 3, "executable: no such file: 'missing.sh'"),
        (
            "executable = run.sh\ntransfer_input_files = a.dat, nope.dat\nqueue",
            2,
            "transfer_input_files: no such file: 'nope.dat'",
        ),
        ("executable = run.sh\ninput = nope.txt\nqueue", 2, "input: no such file"),
        (
            "executable = run.sh\ntransfer_input_files = ftp://x.org/f\nqueue",
            2,
            "not supported by glidewms: ftp:// inputs",
        ),
        ("executable = sub\nqueue", 1, "is a directory"),
        ("executable = run.sh\ntransfer_executable = maybe\nqueue", 2, "expected true or false"),
        ("executable = run.sh\ninitialdir = nodir\nqueue", 2, "initialdir: no such directory"),
        (
            "executable = run.sh\nuniverse = docker\nqueue",
            2,
            "universe: docker jobs require a docker_image",
        ),
        (
            "executable = run.sh\nuniverse = grid\nqueue",
            2,
            "universe: 'grid' is not supported by glidewms: it runs vanilla, container and docker",
        ),
        (
            "executable = run.sh\nuniverse = container\nqueue",
            2,
            "container jobs require a container_image or docker_image",
        ),
        (
            "executable = run.sh\nrequest_memroy = 2G\nqueue",
            2,
            "unknown command 'request_memroy'; did you mean 'request_memory'?",
        ),
        ("executable = run.sh\nrequirments = true\nqueue", 2, "did you mean 'requirements'?"),
        ("executible = run.sh\nqueue", 1, "did you mean 'executable'?"),
        ("executable = run.sh\nArguements = 1\nqueue", 2, "did you mean 'arguments'?"),
        (
            "executable = run.sh\na = $(b)\nb = $(a)\narguments = $(a)\nqueue",
            4,
            "macro $(a) refers to itself ($(a) -> $(b) -> $(a))",
        ),
        (
            "executable = run.sh\nx = $INT(y)\ny = abc\narguments = $(x)\nqueue",
            4,
            "$INT(y): 'abc' does not evaluate to an integer",
        ),
        ("executable = run.sh\n# only a comment\n", None, "no queue statement"),
        ("", None, "no queue statement"),
        ("queue", 1, "no executable given"),
        ("executable = run.sh\nqueue 2 x y in (a)", 2, "takes exactly one variable name"),
        ("executable = run.sh\nqueue process in (a)", 2, "'process' cannot be a queue variable"),
        ("executable = run.sh\nqueue many", 2, "expected a job count such as 10, got 'many'"),
        ("executable = run.sh\nqueue -1", 2, "expected a job count"),
        ("executable = run.sh\nqueue x in (\na\nb\n", 2, "never closed"),
        ("executable = run.sh\nqueue x in (a) b", 2, "unexpected text after ')'"),
        ("executable = run.sh\nqueue x from nofile.txt", 2, "queue from: cannot read"),
        (
            "executable = run.sh\nqueue x from no-such-list-maker |",
            2,
            "no-such-list-maker",
        ),
        ("executable = run.sh\nqueue x matching *.nothing", 2, "produce no jobs"),
        ("executable = run.sh\nqueue 0", 2, "produce no jobs"),
        (
            "executable = run.sh\nhold = true\nqueue",
            2,
            "hold: not supported by glidewms: submit, then `glidewms hold`",
        ),
        (
            'executable = run.sh\ntransfer_output_remaps = "a=http://x/b"\nqueue',
            2,
            "not supported by glidewms: URL destinations",
        ),
        (
            "executable = run.sh\nif $(x) == 1\nqueue\nendif",
            2,
            "== 1 is not a valid if condition because complex conditionals are not supported",
        ),
        ("executable = run.sh\nif true\nqueue", 2, "this if has no endif before the end"),
        ("executable = run.sh\nelse\nqueue", 2, "else without matching if"),
        ("include : other.sub\nqueue", 1, "include: no such file: 'other.sub'"),
        ("include command : no-such-include-maker |\nqueue", 1, "no-such-include-maker"),
        (
            "executable = run.sh\nerror : stop $(executable)\nqueue",
            2,
            "error statement: stop run.sh",
        ),
        ("executable = run.sh\nMY.ProcId = 3\nqueue", 2, "ProcId is assigned by glidewms"),
        (
            'executable = run.sh\n+Cmd = "/bin/sh"\nqueue',
            2,
            "+Cmd: set Cmd with the 'executable' command",
        ),
        ("executable = run.sh\n+Bad-Name = 3\nqueue", 2, "'Bad-Name' is not a valid ClassAd"),
        ("executable = run.sh\n+1x = 3\nqueue", 2, "'1x' is not a valid ClassAd attribute"),
        ("executable = run.sh\nfoo-bar = 3\nqueue", 2, "not a valid submit command"),
        (
            "executable = run.sh\nshould_transfer_files = sometimes\nqueue",
            2,
            "expected one of IF_NEEDED, NO, YES",
        ),
        (
            "executable = run.sh\nrequest_memroy = 2G\nqueue",
            2,
            "unknown command 'request_memroy'; did you mean 'request_memory'?",
        ),
        ("executable = run.sh\nmax_retries = -1\nqueue", 2, "expected a whole number >= 0"),
    ],
)
def test_errors_name_the_line(parse: Parse, text: str, line: int | None, fragment: str) -> None:
    err = error_of(parse, text)
    assert err.line == line, str(err)
    assert err.source == "job.sub"
    assert fragment in str(err)
    assert str(err).startswith(f"job.sub:{line}: " if line else "job.sub: ")


def test_error_in_second_queue_block_reports_its_line(parse: Parse) -> None:
    text = "executable = run.sh\nqueue\nrequest_cpus = $(x)\nqueue x in (a)\n"
    assert error_of(parse, text).line == 3


def test_commands_after_the_last_queue_are_ignored_with_a_warning(parse: Parse) -> None:
    desc = parse("executable = run.sh\nqueue\n\n# fine\noutput = o.txt\n")
    assert desc.jobs[0].out is None
    assert desc.warnings == [
        "job.sub:5: output: commands after the last queue statement are "
        "ignored (as by condor_submit)"
    ]


def test_empty_value_unsets_a_command(job) -> None:
    j = job("request_cpus = 8\nrequest_cpus =\noutput = o\noutput =")
    assert j.attrs["RequestCpus"] == "1" and j.out is None


def test_importing_submit_leaves_an_existing_condor_config_alone() -> None:
    """Only where CONDOR_CONFIG is unset and HTCondor has no configuration does
    glidewms point the bindings at an empty one (glidewms.classads decides)."""
    import os
    import subprocess
    import sys

    code = "import os, glidewms.submit; print(os.environ.get('CONDOR_CONFIG'))"
    env = {k: v for k, v in os.environ.items() if k != "CONDOR_CONFIG"}
    kept = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "CONDOR_CONFIG": "/x/cfg"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert kept.stdout.strip() == "/x/cfg"
    unset = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    installed = any(
        os.path.isfile(p) for p in ("/etc/condor/condor_config", "/usr/local/etc/condor_config")
    )
    assert unset.stdout.strip() == ("None" if installed else "/dev/null")


def test_macros_used_only_in_queue_or_include_lines_are_not_typos(parse: Parse, base: Path) -> None:
    (base / "x.inc").write_text("")
    desc = parse("executable = run.sh\nrequirement = x.inc\ninclude : $(requirement)\nqueue\n")
    assert len(desc.jobs) == 1
