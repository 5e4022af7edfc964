"""The shared reader of user files: OS errors, size, encoding, and strict, bounded YAML."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tessera.errors import ConfigError, MigConfigError, PluginConfigError
from tessera.mig import spec
from tessera.mig.explicit import load_layout
from tessera.plugin.config import load_file as load_plugin_file
from tessera.textinput import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    decode,
    load_json,
    load_yaml,
    read_text,
)


def mig_error(reason: str) -> MigConfigError:
    return MigConfigError(reason, source="c.yaml")


def refused(text: str) -> str:
    with pytest.raises(MigConfigError) as caught:
        load_yaml(text, error=mig_error)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("c.yaml: ")
    return message


def billion_laughs(levels: int, width: int = 10) -> str:
    lines = ['l0: &l0 "' + "lol" * 3 + '"']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# -- files -----------------------------------------------------------------------------------


def test_os_errors_name_the_path_and_what_to_do(tmp_path: Path) -> None:
    def reason(path: Path) -> str:
        with pytest.raises(ConfigError) as caught:
            read_text(path, what="config file")
        assert str(caught.value).startswith(f"{path}: ")
        return str(caught.value)

    assert "does not exist; give the path of an existing config file" in reason(
        tmp_path / "nope.yaml")
    assert "is a directory" in reason(tmp_path)
    (tmp_path / "file").write_text("x")
    assert "a part of the path is not a directory" in reason(tmp_path / "file" / "below")
    os.mkfifo(tmp_path / "fifo")
    started = time.monotonic()
    assert "not a regular file" in reason(tmp_path / "fifo")
    assert time.monotonic() - started < 30  # refused, not blocked on a FIFO with no writer


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file; the error needs a user")
def test_an_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked.yaml"
    locked.write_text("a: 1")
    locked.chmod(0)
    with pytest.raises(ConfigError, match="permission denied; make it readable"):
        read_text(locked)


def test_a_file_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match=f"more than the {MAX_FILE_BYTES}"):
        read_text(big)


def test_text_must_be_utf8_and_the_offset_is_named() -> None:
    assert decode("café: 1".encode(), error=mig_error) == "café: 1"
    assert decode(b"\xef\xbb\xbfa: 1", error=mig_error) == "a: 1"  # a BOM is fine
    with pytest.raises(MigConfigError, match=r"not UTF-8 text \(line 1, byte 3 is 0xe9\)"):
        decode("caf\xe9".encode("latin-1"), error=mig_error)
    with pytest.raises(MigConfigError, match=r"byte 4 is 0xff"):
        decode(b"\xef\xbb\xbfa\xff", error=mig_error)  # the offset counts the BOM


# -- YAML ------------------------------------------------------------------------------------


def test_plain_yaml_and_json_load() -> None:
    assert load_yaml("a: [1, 2]\nb: {c: d}\n", error=mig_error) == {"a": [1, 2], "b": {"c": "d"}}
    assert load_yaml('{"a": 1}', error=mig_error) == {"a": 1}
    assert load_yaml("", error=mig_error) is None
    # A few aliases and merge keys are fine: people use them to share device lists.
    shared = "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\nd: *b\n"
    assert load_yaml(shared, error=mig_error) == {
        "base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}, "d": {"x": 1, "y": 2}}


def test_a_key_given_twice_is_refused_with_both_lines() -> None:
    assert "line 3, column 1: key 'a' appears twice (first at line 1)" in refused(
        "a: 1\nb: 2\na: 3\n")
    assert "appears twice" in refused("x:\n  '0': 1\n  '0': 2\n")


def test_a_key_that_is_a_list_or_mapping_is_refused() -> None:
    assert "a key must be a plain value" in refused("? [1, 2]\n: x\n")
    assert "a key must be a plain value" in refused("{? {a: 1} : x}")


def test_billion_laughs_is_refused_quickly() -> None:
    started = time.process_time()
    assert f"more than {MAX_NODES} values once its aliases are expanded" in refused(
        billion_laughs(10))
    assert time.process_time() - started < 5  # counted over the graph, never expanded


def test_a_self_referring_alias_is_refused() -> None:
    assert "refers to the value it is inside of" in refused("&a [1, *a]")
    assert "refers to the value it is inside of" in refused("&m {k: *m}")


def test_nesting_is_bounded() -> None:
    fine = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert load_yaml(fine, error=mig_error) is not None
    deep = "[" * 10_000 + "]" * 10_000
    assert f"nested more than {MAX_DEPTH} levels deep" in refused(deep)


def test_other_bad_yaml_is_one_line() -> None:
    assert "not valid YAML at line 1" in refused("gpus: [")
    assert "could not determine a constructor" in refused("!!python/object/apply:os.system [x]")
    assert "U+0000" in refused("a: \x00")
    assert "not valid YAML" in refused("a: " + "9" * 5000)  # past Python's int digit limit
    assert "another document" in refused("a: 1\n---\nb: 2\n")


def test_json_errors_name_line_and_column() -> None:
    assert load_json('{"a": [1]}', error=mig_error) == {"a": [1]}
    with pytest.raises(MigConfigError, match="not valid JSON at line 2, column 1"):
        load_json('{"a":\n}', error=mig_error)
    with pytest.raises(MigConfigError, match="not valid JSON"):
        load_json("[" * 100_000, error=mig_error)


# -- every parser reads through it -----------------------------------------------------------


@pytest.mark.parametrize(("load", "error"), [
    (spec.load_file, MigConfigError),
    (load_layout, MigConfigError),
    (load_plugin_file, PluginConfigError),
])
def test_each_config_reader_refuses_the_same_way(tmp_path: Path, load: object,
                                                 error: type[Exception]) -> None:
    assert callable(load)
    cases = {
        "latin1.yaml": ("version: v1\n# caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        "dup.yaml": (b"version: v1\nversion: v1\n", "appears twice"),
        "bomb.yaml": (billion_laughs(9).encode(), "aliases are expanded"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(error) as caught:
            load(path)
        assert str(path) in str(caught.value)
        assert reason in str(caught.value)
        assert "\n" not in str(caught.value)
    with pytest.raises(error, match="is a directory"):
        load(tmp_path)
