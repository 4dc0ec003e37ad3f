"""Factory configuration: sane defaults with no file, errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from glidewms.config import ConfigError
from glidewms.config.factory import EntryConfig, FactoryConfig, load_factory_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_factory_config(None)
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 9620
    assert config.cycle_seconds == 5
    assert [(e.name, e.site, e.backend) for e in config.entries] == [("local", "LOCAL", "local")]
    entry = config.entries[0]
    assert entry.enabled and entry.allowed_frontends is None and entry.idle_timeout == 1200
    assert config.resolved_database_url().endswith("factory.db")
    assert config.resolved_issuer_public_key() == config.state_dir.parent / "keys" / "issuer.pub"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_factory_config(write(tmp_path / "factory.yaml", ""))
    assert config == FactoryConfig()


def test_full_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path / "factory.yaml",
        """
state_dir: /tmp/x
cycle_seconds: 0.5
entries:
  - name: T2_US_Example
    site: US_Example
    cpus: "8"
    memory: auto
    disk: 20000
    walltime: 7200
    attributes: {GLIDEIN_Country: US, HAS_CVMFS: true, Priority: 3, Speed: 1.5}
    allowed_frontends: [fe1]
    max_pilots: 4
""",
    )
    config = load_factory_config(path)
    entry = config.entries[0]
    assert (entry.cpus, entry.memory, entry.disk, entry.walltime) == (8, "auto", 20000, 7200)
    assert entry.attributes == {
        "GLIDEIN_Country": "US",
        "HAS_CVMFS": True,
        "Priority": 3,
        "Speed": 1.5,
    }
    assert type(entry.attributes["HAS_CVMFS"]) is bool
    assert entry.allows("fe1") and not entry.allows("fe2")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("cycle_secnds: 3\n", "cycle_secnds", "Extra inputs are not permitted"),
        (
            "entries:\n  - {name: a, site: S, max_pilot: 3}\n",
            "entries[0].max_pilot",
            "Extra inputs are not permitted",
        ),
        (
            "entries:\n  - {name: a, site: S, cpus: many}\n",
            "entries[0].cpus",
            "positive integer or 'auto'",
        ),
        ("entries:\n  - {name: a, site: S, cpus: 0}\n", "entries[0].cpus", "positive integer"),
        ("entries:\n  - {name: a, site: S, cpus: true}\n", "entries[0].cpus", "boolean"),
        ("entries:\n  - {name: a, site: S, backend: slurmish}\n", "entries[0].backend", "local"),
        ("entries:\n  - {name: 'a/b', site: S}\n", "entries[0].name", "start with a letter"),
        (
            "entries:\n  - {name: a, site: S, attributes: {'1x': 2}}\n",
            "entries[0].attributes",
            "ClassAd identifier",
        ),
        (
            "entries:\n  - {name: a, site: S, attributes: {x: [1]}}\n",
            "entries[0].attributes",
            "expected a string, number or boolean, got list",
        ),
        (
            "entries:\n  - {name: a, site: S, attributes: {GLIDEIN_Site: X}}\n",
            "entries[0].attributes",
            "set by the factory",
        ),
        (
            "entries:\n  - {name: a, site: S, work_dir: rel/dir}\n",
            "entries[0].work_dir",
            "absolute path",
        ),
        ("entries:\n  - {name: a, site: S}\n  - {name: a, site: T}\n", "entries", "more than once"),
        ("listen_port: 70000\n", "listen_port", "less than or equal"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path / "factory.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_factory_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"  {key}: " in message
    assert words in message


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "factory.yaml", "entries:\n  - name: a\n   site: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_factory_config(path)
    assert str(path) in str(info.value) and "line" in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_factory_config(write(tmp_path / "factory.yaml", "- a\n- b\n"))


def test_entry_files_merge_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "entries").mkdir()
    write(tmp_path / "entries" / "one.yaml", "name: one\nsite: S1\n")
    write(tmp_path / "entries" / "many.yaml", "- {name: two, site: S2}\n- {name: x3, site: S3}\n")
    path = write(tmp_path / "factory.yaml", "entry_files: [entries/one.yaml, entries/many.yaml]\n")
    config = load_factory_config(path)
    # No inline entries: the default local entry is not added.
    assert [e.name for e in config.entries] == ["one", "two", "x3"]


def test_entry_files_add_to_inline_entries(tmp_path: Path) -> None:
    write(tmp_path / "more.yaml", "name: more\nsite: S\n")
    path = write(
        tmp_path / "factory.yaml",
        "entries: [{name: local, site: LOCAL}]\nentry_files: [more.yaml]\n",
    )
    assert [e.name for e in load_factory_config(path).entries] == ["local", "more"]


def test_entry_file_error_names_entry_file_and_key(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "- {name: ok, site: S}\n- {name: b, site: S, memry: 3}\n")
    path = write(tmp_path / "factory.yaml", "entry_files: [bad.yaml]\n")
    with pytest.raises(ConfigError) as info:
        load_factory_config(path)
    assert str(bad) in str(info.value)
    assert "  [1].memry: Extra inputs are not permitted" in str(info.value)


def test_entry_file_duplicate_and_missing(tmp_path: Path) -> None:
    write(tmp_path / "dup.yaml", "name: local\nsite: X\n")
    path = write(
        tmp_path / "factory.yaml", "entries: [{name: local, site: L}]\nentry_files: [dup.yaml]\n"
    )
    with pytest.raises(ConfigError, match="already defined"):
        load_factory_config(path)
    missing = write(tmp_path / "f2.yaml", "entry_files: [nope.yaml]\n")
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_factory_config(missing)


def test_entry_model_directly() -> None:
    entry = EntryConfig(name="x", site="S", cpus="auto", memory=" AUTO ")
    assert entry.cpus == "auto" and entry.memory == "auto"
