"""Hypothesis strategies for hostile input, and the one promise every parser keeps on it.

The strategies build documents in each format Tessera reads (mig-parted configs, device
plugin configs, explicit layouts, counters files) from plausible and wrong values, then
encode them the ways a careless or hostile user would: as YAML or JSON, in Latin-1, with a
byte-order mark, as random bytes, as alias bombs and as deep nesting. `refused_or_accepted`
checks the promise: the parser returns a value or raises the expected error class with one
line naming the source, nothing else, within bounded time and memory.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

FUZZ = settings(
    max_examples=60,
    deadline=30_000,  # ms: generous, a loaded 2-core machine; the bound is asserted below
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
    derandomize=True,  # a failure here is a finding, not flakiness: reproduce it every run
)
MAX_SECONDS = 10.0  # CPU seconds one parse may take on hostile input (normally milliseconds)
MAX_PEAK_BYTES = 64 * 1024 * 1024

# -- values --------------------------------------------------------------------------------

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4),
                                                                st.integers(), max_size=2),
)


def mostly(valid: st.SearchStrategy[T]) -> st.SearchStrategy[T | Any]:
    """`valid` nine times in ten, `junk` otherwise: wrong values one field at a time, so
    that many documents get past the first check and reach the deeper ones (the high roll
    is junk: hypothesis favours small numbers)."""
    return st.integers(0, 9).flatmap(lambda roll: junk if roll == 9 else valid)


names = st.one_of(st.sampled_from(["all-balanced", "custom", "a b", "", "é", "x" * 70]),
                  st.text(max_size=10))
mig_profiles = st.one_of(
    st.sampled_from(["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me",
                     "1g.20gb", "1g.6gb", "2g.12gb", "4g.24gb", "1c.3g.40gb", "1g.5gb",
                     "9g.99gb", "1g.10gb+gfx"]),
    st.text(max_size=10))
a30_profiles = st.one_of(st.sampled_from(["1g.6gb", "2g.12gb", "4g.24gb", "1g.6gb+me"]),
                        mig_profiles)
small_counts = mostly(st.one_of(st.integers(0, 4), st.integers(-3, 10)))


def mig_entry() -> st.SearchStrategy[dict[str, Any]]:
    enabled = st.fixed_dictionaries(
        {"devices": mostly(st.one_of(st.just("all"), st.lists(st.integers(-1, 4), min_size=1,
                                                              max_size=3, unique=True))),
         "mig-enabled": mostly(st.just(True)),
         "mig-devices": mostly(st.dictionaries(a30_profiles, small_counts, max_size=3))},
        optional={"device-filter": mostly(st.sampled_from(["0x20B710DE", "0x2330"])),
                  "mig_enabled": junk})  # a typo of a real field
    disabled = st.fixed_dictionaries({"devices": mostly(st.just("all")),
                                      "mig-enabled": mostly(st.just(False))})
    return st.one_of(enabled, disabled)


def mig_configs() -> st.SearchStrategy[Any]:
    document = st.fixed_dictionaries(
        {"version": mostly(st.just("v1")),
         "mig-configs": mostly(st.dictionaries(
             names, mostly(st.lists(mig_entry(), min_size=1, max_size=3)), min_size=1,
             max_size=3))})
    return mostly(document)


def plugin_configs() -> st.SearchStrategy[Any]:
    resource = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["nvidia.com/gpu", "nvidia.com/mig-1g.6gb",
                                            "nvidia.com/mig-2g.12gb", "gpu", "NVIDIA/GPU"]),
                           junk),
         "replicas": mostly(st.integers(-2, 16))},
        optional={"rename": mostly(st.sampled_from(["gpu.shared", "a.b/c"])),
                  "devices": mostly(st.one_of(st.just("all"), st.lists(st.integers(-1, 5),
                                                                       max_size=3)))})
    sharing = st.fixed_dictionaries(
        {}, optional={"renameByDefault": mostly(st.booleans()),
                      "failRequestsGreaterThanOne": mostly(st.booleans()),
                      "resources": mostly(st.lists(resource, max_size=2))})
    document = st.fixed_dictionaries(
        {"version": mostly(st.just("v1"))},
        optional={
            "flags": mostly(st.fixed_dictionaries({}, optional={
                "migStrategy": mostly(st.sampled_from(["none", "single", "mixed"])),
                "failOnInitError": mostly(st.booleans()),
                "plugin": mostly(st.fixed_dictionaries({}, optional={
                    "deviceListStrategy": mostly(st.sampled_from(["envvar", "cdi-cri"])),
                    "deviceIDStrategy": mostly(st.sampled_from(["uuid", "index"])),
                }))})),
            "sharing": mostly(st.fixed_dictionaries({}, optional={
                "timeSlicing": mostly(sharing), "mps": mostly(sharing)})),
        })
    return mostly(document)


def explicit_layouts() -> st.SearchStrategy[Any]:
    instance = st.fixed_dictionaries(
        {"profile": mostly(a30_profiles), "placement": mostly(st.integers(-1, 4))},
        optional={"compute": mostly(st.lists(st.sampled_from(
            ["1c.2g.12gb", "2c.2g.12gb", "1c.4g.24gb", "4c.4g.24gb", "7c.7g.80gb", "x"]),
            max_size=2))})
    gpu_value = mostly(st.one_of(st.lists(instance, max_size=3), st.just("disabled")))
    document = st.fixed_dictionaries(
        {"version": mostly(st.just("v1")),
         "gpus": mostly(st.dictionaries(
             mostly(st.integers(-1, 4).map(str)), gpu_value, max_size=3))})
    return mostly(document)


def counters_files() -> st.SearchStrategy[bytes]:
    field = st.sampled_from(["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED",
                             "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_POWER_USAGE",
                             "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DRIVER_VERSION",
                             "DCGM_FI_DEV_NOPE", "# comment", ""])
    kind = mostly(st.sampled_from(["gauge", "counter", "label", " gauge "])).map(str)
    help_text = st.text(st.characters(exclude_characters=",\n\r"), max_size=20)
    line = mostly(st.tuples(field, kind, help_text).map(lambda p: ", ".join(p)))
    text = st.lists(line.map(str), max_size=5).map(lambda lines: "\n".join(lines) + "\n")
    plain = text.map(str.encode)
    return st.one_of(plain, plain, plain, text.map(_latin1), st.binary(max_size=200))


# -- encodings -----------------------------------------------------------------------------


def _latin1(text: str) -> bytes:
    return (text + "\n# café\n").encode("latin-1", errors="replace")


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def billion_laughs(levels: int, width: int) -> bytes:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


def hostile_bytes() -> st.SearchStrategy[bytes]:
    """What no format accepts, or accepts only within bounds."""
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
        st.builds(billion_laughs, st.integers(2, 12), st.integers(2, 12)),
        st.integers(1, 5000).map(lambda n: ("[" * n + "]" * n).encode()),
        st.integers(1, 5000).map(lambda n: ("a:\n" + "".join(
            " " * i + "b:\n" for i in range(1, min(n, 400)))).encode()),
        st.just(b"&a [*a]"), st.just(b"version: v1\nversion: v1\n"),
        st.just(b"? [1, 2]\n: x\n"), st.just(b"!!python/object/apply:os.system [id]"),
        st.just(b"a: \x00\n"), st.just("a: " + "9" * 5000).map(str.encode),
    )


def documents(data: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """`data` as a file a user might hand over: YAML (half the time), JSON, Latin-1, with a
    BOM, or worse."""
    plain = data.map(_yaml).map(str.encode)
    return st.one_of(
        plain, plain, plain, plain, plain,
        data.map(lambda d: json.dumps(d, ensure_ascii=False)).map(str.encode),
        data.map(_yaml).map(_latin1),
        data.map(_yaml).map(lambda t: b"\xef\xbb\xbf" + t.encode()),
        data.map(_yaml).map(lambda t: (t + t).encode()),  # every top-level key twice
        data.map(lambda d: _yaml({"shared": d, "again": d})).map(
            lambda t: t.replace("shared:", "shared: &s", 1).encode()),
        hostile_bytes(),
    )


# -- the promise ---------------------------------------------------------------------------


def refused_or_accepted(parse: Callable[[], T], error: type[Exception],
                        source: str) -> T | None:
    """`parse()`'s value, or None when it raised `error` with one line naming `source`;
    any other exception fails, and so does a parse past the time or memory bound."""
    tracemalloc.start()
    started = time.process_time()
    try:
        return parse()
    except error as e:
        message = str(e)
        assert "\n" not in message, message
        assert source in message, message
        assert "Traceback" not in message
        return None
    finally:
        spent = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert spent < MAX_SECONDS, f"took {spent:.1f} s of CPU"
        assert peak < MAX_PEAK_BYTES, f"peaked at {peak / 2**20:.0f} MiB"
