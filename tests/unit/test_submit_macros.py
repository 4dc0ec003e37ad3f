"""Macro expansion, conditionals and the line reader, checked against HTCondor itself.

`htcondor2.Submit(text).expand(key)` runs HTCondor's own submit-language code on
the same text; every case here must expand to exactly what it gives (its
python `Submit` has ClusterId 1 and ProcId 0, and reports an empty expansion
as a KeyError). Cases HTCondor cannot answer (submit time, our warnings,
bounds) are checked against hand-written expectations.
"""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

import htcondor2
import pytest

from glidewms.submit import CLUSTER_PLACEHOLDER, SubmitError, parse_submit
from glidewms.submit.build import JobBuilder
from glidewms.submit.context import Context
from glidewms.submit.reader import Reader


def ours(text: str, key: str, base: Path) -> str:
    """`key`'s expansion by glidewms for the first job (ClusterId 1, as htcondor2)."""
    ctx = Context(
        base_dir=base, submit_file="", environ=dict(os.environ), now=0, rng=random.Random(1)
    )
    reader = Reader(ctx)
    reader.read(text + "\nqueue\n", "t.sub")
    builder = JobBuilder(ctx, reader.blocks[0], [], 0, 0, 0)
    raw = builder._lookup(key.lower())
    value = "" if raw is None else builder.expand(raw, "t.sub", 1)
    return value.replace(CLUSTER_PLACEHOLDER, "1")


def theirs(text: str, key: str) -> str:
    try:
        return htcondor2.Submit(text + "\n").expand(key)
    except KeyError:  # the binding's way of saying "expands to nothing"
        return ""


CASES = [
    ("a = $(undefined)x", "a"),
    ("a = [$(b)] [$(b:dflt)] [$(c:dflt)]\nb = B\nc =", "a"),
    ("foo = bar\nfoo = snap $(foo)\nfoo = $(foo) end", "foo"),
    ("x = $(x) more", "x"),
    ("x = $(x:base) more", "x"),
    ("a = $(b)\nb = $(c)\nc = deep", "a"),
    ("a = $(a$(b)) $$(z:$(b)) $(DOLLAR)(y) $(Dollar) $$$(b)\nb=1\na1=ONE\ny=Y", "a"),
    ("a = $(q.r) $(u/v) $(s-t) $(9u)\nq.r = QR\nu/v = UV", "a"),
    ("a = [$(u:a/b@c-d)] [$(u:a(b)c)] [$(u:x y,z\\w$v:q)] [$(u:a.b_c)]", "a"),
    ("Executable = a\nexecutable = b\nEXEC = $(EXECUTABLE)", "EXEC"),
    ('MY.Foo = 1\n+Bar = "x"\ny = $(MY.Foo) $(my.bar) $(Foo)', "y"),
    ("a = $(Cluster).$(ClusterId).$(Process).$(ProcId).$(JobId).$(JobListId)", "a"),
    ("a = [$(Step)] [$(Row)] [$(ItemIndex)] [$(Node)] [$(TaskId)] [$(Item)]", "a"),
    (
        "a = $(ARCH) $(OPSYS) $(OPSYSANDVER) $(OPSYSMAJORVER) $(OPSYSVER) $(IsLinux) $(IsWindows)",
        "a",
    ),
    ("request_cpus = 3\na = $(Request_CPUs) $(RequestCPUs)", "a"),
    ("RequestCPUs = 3\na = $(Request_CPUs) $(VM_VCPUS)", "a"),
    ("v = 3.5\nx = $INT(v) $REAL(v) $INT(7/2) $REAL(2*3) $INT(v,%5d)| $INT(v,%03d)", "x"),
    ('v = 2.25\nx = $REAL(v,%.1f) $REAL(v,%e) $STRING(v) $STRING("s") $EVAL("str")', "x"),
    ('x = $EVAL(v*2) $EVAL(3+4) $EVAL(1 < 2) $EVAL(strcat("a", "b"))', "x"),
    ("list = a,b,c\nx = $CHOICE(2,list) $CHOICE(0, p, q) $CHOICE(idx, list)\nidx = 1", "x"),
    ("L = a,b,c\nx = [$SUBSTR(L,2)] [$SUBSTR(L,-3,2)] [$SUBSTR(L,1,-1)] [$SUBSTR(nope,1)]", "x"),
    (
        "f = /a/b/c.tar.gz\ng = $Fp(f)|$Fn(f)|$Fx(f)|$Fnx(f)|$Fq(f)|$Fd(f)|$Fdd(f)|$Fb(f)|$Fpb(f)",
        "g",
    ),
    ("f = /a/b/c.tar.gz\ng = $Fxb(f)|$Fqa(f)|$BASENAME(f)|$DIRNAME(f)|$Fnxq(f)|$F(f)|$Fpn(f)", "g"),
    ("f = name.txt\ng = $Fp(f)|$Fn(f)|$Fx(f)|$Fd(f)|$Fq(f)|$Fpq(f)|$Fdb(f)", "g"),
    ('f = "/q/u o/t.e"\ng = $Fn(f)|$Fq(f)|$Fp(f)|$Fnx(f)', "g"),
    ("x = $Fn(/p/q.r) $Fnx(y) $Fz(y) $env(HOME) $BASENAME(/a/b.tar.gz, .tar.gz)\ny=/u/v.w", "x"),
    ("x = $BASENAME(f, .gz) $BASENAME(f, .TAR.GZ)\nf=/k/l.tar.gz", "x"),
    ("x = $ENV(GLIDEWMS_T_SET) $ENV(GLIDEWMS_T_UNSET) $ENV(GLIDEWMS_T_UNSET:dflt)", "x"),
    ("x = $ENV(GLIDEWMS_T_MACRO)\nm = expanded", "x"),
    ("x = $RANDOM_INTEGER(4,4) $RANDOM_CHOICE(only) $RANDOM_INTEGER(2, 2, 5)", "x"),
    (
        "x = a\nx += b\ny = 1\ny +,= 2\nz = p\nz +&&= q\nw += first\nv = [$(x)] [$(y)] [$(z)] [$(w)]",  # noqa: E501
        "v",
    ),
    ("x @=end\nline1\n  line2\n# not a line\n@end\ny = <$(x)>", "y"),
    ("a = x \\\n   more  \\\n\ny = 2", "a"),
    ("a = x \\\n# comment \\\n  more", "a"),
    ("a = x \\\n# note\ny = 2", "a"),
    ("# c \\\na = 1", "a"),
    ("a = x#y # z", "a"),
    ("  a  =   spaced value   ", "a"),
    ("a=1\nA=2", "a"),
    ("if defined foo\na = 1\nelse\na = 2\nendif\nfoo = 1\nif $(foo)\nb = yes\nendif", "a"),
    ("foo = 1\nif $(foo)\nb = yes\nendif\nif ! defined foo\nc = 1\nelse\nc = 0\nendif", "b"),
    ("if version >= 8.0\nc = new\nendif\nif version < 8.0.1\nc = old\nendif", "c"),
    ("if version > 99.0\nc = future\nelif version == 8.9.1\nc = exact\nelse\nc = now\nendif", "c"),
    ("if false\ne = t\nelif no\ne = n\nelif 0.0\ne = z\nelif yes\ne = y\nelse\ne = f\nendif", "e"),
    ("if true\nif false\nx = inner\nelse\nx = else\nendif\nelse\nx = outer\nendif", "x"),
    ("if 2\nx = two\nendif\nif -1\ny = neg\nendif\nz = $(x)$(y)", "z"),
    ("x =\nif defined x\ny = defined\nelse\ny = empty\nendif", "y"),
    ("if defined ARCH\nx = $(ARCH)\nendif\nif defined true\ny = t\nendif\nz = $(x)$(y)", "z"),
    ("if $(nothing)\nx = 1\nelse\nx = 2\nendif", "x"),
    (":if true\n:x = colon\n:endif", "x"),
]


@pytest.mark.parametrize(("text", "key"), CASES)
def test_expansion_matches_htcondor(
    text: str, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLIDEWMS_T_SET", "from-env")
    monkeypatch.setenv("GLIDEWMS_T_MACRO", "[$(m)]")
    monkeypatch.delenv("GLIDEWMS_T_UNSET", raising=False)
    assert ours(text, key, tmp_path) == theirs(text, key)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("if $(x) == 1\nendif", "complex conditionals are not supported"),
        ("if foo\nendif", "expression is not a conditional"),
        ("if version > 3\nendif", "the version literal is invalid"),
        ("if defined a b\nendif", "defined argument must be param name"),
        ("elif true", "elif without matching if"),
        ("if true\nelse\nelse\nendif", "else is not allowed after else"),
        ("if true\nelse\nelif true\nendif", "elif is not allowed after else"),
        ("endif", "endif without matching if"),
    ],
)
def test_bad_conditionals_are_refused_as_htcondor_refuses_them(
    text: str, fragment: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        htcondor2.Submit(text + "\n")
    with pytest.raises(SubmitError, match=fragment):
        parse_submit(text + "\nexecutable = /bin/true\nqueue\n", "t.sub", tmp_path)


def test_submit_time_macros(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    stamp = 1790000000  # 2026-09-21 UTC
    text = (
        "executable = run.sh\narguments = $(Year) $(Month) $(Day) $(SUBMIT_TIME) "
        "$(SUBMIT_FILE)\nqueue\n"
    )
    args = parse_submit(text, "t.sub", tmp_path, now=stamp, submit_file="/x/t.sub").jobs[0].args
    import time

    local = time.localtime(stamp)
    assert args == [
        time.strftime("%Y", local),
        time.strftime("%m", local),
        time.strftime("%d", local),
        str(stamp),
        "/x/t.sub",
    ]


def test_random_functions_are_seeded_and_in_range(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    text = (
        "executable = run.sh\narguments = $RANDOM_INTEGER(10, 20, 5) "
        "$RANDOM_CHOICE(a, b, c) $RANDOM_CHOICE(L)\nL = x y z\nqueue 30\n"
    )
    jobs = parse_submit(text, "t.sub", tmp_path, seed=7).jobs
    assert {j.args[0] for j in jobs} == {"10", "15", "20"}
    assert {j.args[1] for j in jobs} == {"a", "b", "c"}
    assert {j.args[2] for j in jobs} == {"x", "y", "z"}
    again = parse_submit(text, "t.sub", tmp_path, seed=7).jobs
    assert [j.args for j in again] == [j.args for j in jobs]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("$RANDOM_INTEGER(5, 1)", "expected min <= max"),
        ("$RANDOM_INTEGER(a, 1)", r"expected min,max\[,step\] integers"),
        ("$CHOICE(7, a, b)", "index 7 is out of range"),
        ("$CHOICE(x, a, b)", "'x' is not a valid index"),
        ("$CHOICE(1, nolist)", "no list named 'nolist'"),
        ("$SUBSTR(x)", "no start given"),
        ("$INT(abc)", "'abc' does not evaluate to an integer"),
        ("$INT(3,%s)", "'%s' is not a valid format"),
        ("$REAL(abc)", "does not evaluate to a real number"),
    ],
)
def test_macro_function_errors_name_the_line(value: str, fragment: str, tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    with pytest.raises(SubmitError, match=fragment) as info:
        parse_submit(f"executable = run.sh\n\narguments = {value}\nqueue\n", "t.sub", tmp_path)
    assert info.value.line == 3


def test_env_reads_the_given_environment(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    text = "executable = run.sh\narguments = $ENV(MY_VAR) $ENV(NOT_THERE)\nqueue\n"
    job = parse_submit(text, "t.sub", tmp_path, environ={"MY_VAR": "v"}).jobs[0]
    assert job.args == ["v", "UNDEFINED"]


def test_include_reads_another_file_with_its_own_lines(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    (tmp_path / "common.inc").write_text("request_cpus = 4\nfoo = $(bar)x\n\nbad line here\n")
    (tmp_path / "ok.inc").write_text("request_memory = 3G\n")
    text = textwrap.dedent("""\
        executable = run.sh
        inc = ok.inc
        include : $(inc)
        include ifexist : missing.inc
        queue
        """)
    job = parse_submit(text, "t.sub", tmp_path).jobs[0]
    assert job.attrs["RequestMemory"] == "3072"
    with pytest.raises(SubmitError) as info:
        parse_submit("executable = run.sh\ninclude : common.inc\nqueue\n", "t.sub", tmp_path)
    assert info.value.source == str(tmp_path / "common.inc") and info.value.line == 4


def test_include_loops_and_depth_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.inc").write_text("include : b.inc\n")
    (tmp_path / "b.inc").write_text("include : a.inc\n")
    with pytest.raises(SubmitError, match="includes itself"):
        parse_submit("include : a.inc\nqueue\n", "t.sub", tmp_path)


def test_full_path_function_follows_each_jobs_initialdir(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("")
    for n in range(2):
        (tmp_path / f"d{n}").mkdir()
    text = (
        "executable = run.sh\ninitialdir = d$(Process)\narguments = $Ff(x)\nx = data.txt\nqueue 2\n"
    )
    jobs = parse_submit(text, "t.sub", tmp_path).jobs
    assert [j.args for j in jobs] == [[f"{tmp_path}/d0/data.txt"], [f"{tmp_path}/d1/data.txt"]]
