"""dcgm-exporter's flag values, parsed and bounded (pure).

`-a` in its `:9400` / `host:9400` / `[::1]:9400` forms beside Tessera's `--address` and
`--port`; the sampling interval in seconds (`--interval`) or milliseconds (dcgm-exporter's
`-c`); the `--*-count-window-size` windows in milliseconds. Every value is bounded before
the exporter starts, and a bad one is a `ConfigError` naming the flag.
"""

from __future__ import annotations

import math

from tessera.errors import ConfigError

DEFAULT_PORT = 9400
DEFAULT_INTERVAL_S = 15.0
DEFAULT_WINDOW_S = 300.0  # dcgm-exporter's --xid/--clock-events-count-window-size, 5 min
MAX_WINDOW_S = 86_400.0
MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 3600.0  # sampling less often than hourly only repeats stale values


def parse_listen(text: str) -> tuple[str, int | None]:
    """dcgm-exporter's `-a` value: `:9400`, `host:9400`, `[::1]:9400`, or a bare host (the
    port then comes from elsewhere). Returns (host, port or None); "" is every interface."""
    value = text.strip()
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"--address {text!r}: write an IPv6 address as [::1]:9400")
        return host, _port(rest[1:], text) if rest else None
    if value.count(":") > 1:
        return value, None  # a bare IPv6 address
    host, colon, port = value.partition(":")
    return host, _port(port, text) if colon else None


def _port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"--address {whole!r}: {text!r} is not a port number; give "
                          "host:port or :port, such as :9400") from None
    check_port(port, f"--address {whole!r}")
    return port


def listen(address: str, port: int | None) -> tuple[str, int]:
    """The host and port to bind from `--address` (host, :port or host:port) and `--port`;
    a port in both must agree."""
    host, in_address = parse_listen(address)
    if in_address is not None and port is not None and in_address != port:
        raise ConfigError(f"--address {address!r} says port {in_address} but --port says "
                          f"{port}; give the port once")
    chosen = in_address if in_address is not None else port
    if chosen is None:
        return host, DEFAULT_PORT
    check_port(chosen)
    return host, chosen


def sampling_interval(seconds: float | None, milliseconds: int | None) -> float:
    """The sampling interval from `--interval` (seconds) or dcgm-exporter's
    `--collect-interval` (milliseconds), never both; checked against the bounds."""
    if seconds is not None and milliseconds is not None:
        raise ConfigError("--interval (seconds) and --collect-interval (milliseconds) both "
                          "set the sampling interval; give one of them")
    if milliseconds is not None:
        what = "--collect-interval"
        # Bounded as an integer first: a huge one would not even convert to a float.
        if not MIN_INTERVAL_S * 1000 <= milliseconds <= MAX_INTERVAL_S * 1000:
            raise ConfigError(f"{what}: a sampling interval of {milliseconds} ms is not "
                              f"between {MIN_INTERVAL_S * 1000:g} and "
                              f"{MAX_INTERVAL_S * 1000:g} ms; give milliseconds in that range")
        return milliseconds / 1000
    chosen = DEFAULT_INTERVAL_S if seconds is None else seconds
    check_interval(chosen)
    return chosen


def count_window(milliseconds: int, what: str) -> float:
    """A `--*-count-window-size` (milliseconds, as dcgm-exporter's) in seconds, bounded."""
    if not 1000 <= milliseconds <= MAX_WINDOW_S * 1000:
        raise ConfigError(f"{what}: a window of {milliseconds} ms is not between 1000 and "
                          "86400000 ms")
    return milliseconds / 1000


def check_window(seconds: float, what: str) -> None:
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_WINDOW_S:
        raise ConfigError(f"{what}: a window of {seconds:g} s is not between 1 s and a day; "
                          "give milliseconds between 1000 and 86400000")


def check_port(port: int, what: str = "--port") -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is not between 0 and 65535")


def check_interval(seconds: float, what: str = "--interval") -> None:
    """A sampling interval must be a finite number of seconds within sane bounds."""
    if not math.isfinite(seconds) or not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ConfigError(f"{what}: a sampling interval of {seconds:g} s is not between "
                          f"{MIN_INTERVAL_S:g} s and {MAX_INTERVAL_S:g} s; give a number of "
                          "seconds in that range")
