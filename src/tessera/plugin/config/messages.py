"""Error messages: where a value sits, how it is shown, and what pydantic's complaints mean.

Every problem with a config becomes one `PluginConfigError` naming the file, the named config
and the field path; unknown keys get a did-you-mean (a case slip, a field that belongs in
another section, or a typo), found by walking the wire models.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from tessera.errors import PluginConfigError
from tessera.plugin.config.wire import _FileWire


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a value came from, for error messages."""

    source: str
    config: str | None = None

    def error(self, reason: str, path: str | None = None) -> PluginConfigError:
        return PluginConfigError(reason, source=self.source, config=self.config, field=path)


_EXPECTED = {
    "bool_type": "true or false",
    "int_type": "a whole number",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
}


def _validation_error(error: ValidationError, where: _Where) -> PluginConfigError:
    """One clear message from pydantic's first complaint, located by its field path."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    kind = first["type"]
    if kind == "invalid_key":
        reason = f"field names are strings; got {_show(loc[-1])}"
        return where.error(reason, _path(loc[:-1]) or None)
    if kind == "literal_error":
        expected = f"one of {first.get('ctx', {}).get('expected', '')}"
    else:
        expected = _EXPECTED.get(kind, "")
    if kind in {"model_type", "dict_type"}:
        model = _model_at(loc)
        if model is not None:
            expected += f" with {', '.join(_aliases(model))}"
    reason = f"got {_show(first.get('input'))}: expected {expected}" if expected else first["msg"]
    return where.error(reason, _path(loc) or None)


def _unknown_fields(model: BaseModel, path: str = "") -> list[str]:
    """One warning per key nobody defines in a validated file, with its path and a hint.

    NVIDIA's plugin ignores such keys (its YAML reader is not strict), so they are ignored
    here too, but never silently: a typo reads as a field that was left out.
    """
    found: list[str] = []
    known = _aliases(type(model))
    for key in model.model_extra or {}:
        homes = _all_field_homes().get(str(key), [])
        reason = _unknown_key_reason(key, known, elsewhere=homes)
        found.append(f"{_join(path, _clip(key))}: {reason} (ignored, as NVIDIA's plugin "
                     "ignores fields it does not know)")
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, BaseModel):
                where = _join(path, info.alias or name)
                found.extend(_unknown_fields(item, where if index is None else f"{where}[{index}]"))
    return found


_MAX_UNKNOWN_WARNINGS = 10


def _unknown_field_warnings(model: BaseModel) -> list[str]:
    """`_unknown_fields`, at most `_MAX_UNKNOWN_WARNINGS` of them and a count of the rest."""
    found = _unknown_fields(model)
    if len(found) <= _MAX_UNKNOWN_WARNINGS:
        return found
    rest = len(found) - _MAX_UNKNOWN_WARNINGS
    return [*found[:_MAX_UNKNOWN_WARNINGS], f"… and {rest} more unknown fields, also ignored"]


def _unknown_key_reason(key: Any, known: Sequence[str], *, elsewhere: Sequence[str]) -> str:
    """Says which field was probably meant: a case slip, a misplaced field, or a typo."""
    text = key if isinstance(key, str) else _show(key)
    unknown = f"unknown field {_show(key)}"
    same = [k for k in known if k.lower() == text.lower()]
    if same:
        return f"{unknown}; did you mean {same[0]!r}?"
    if elsewhere:
        return f"{unknown} here; it belongs in {' or '.join(elsewhere)}"
    close = difflib.get_close_matches(text, known, n=1, cutoff=0.7)
    if close:
        return f"{unknown}; did you mean {close[0]!r}?"
    return f"{unknown}; fields here: {', '.join(known) or 'none'}"


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The wire model that validates the value at `loc` (list indices are skipped)."""
    model: type[BaseModel] | None = _FileWire
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = _wire_fields(model).get(part)
        model = _submodel(info.annotation) if info is not None else None
    return model


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is None and isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    return next((m for m in map(_submodel, get_args(annotation)) if m is not None), None)


def _wire_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A wire model's fields by the name the file spells them with."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _aliases(model: type[BaseModel]) -> list[str]:
    return list(_wire_fields(model))


@functools.cache
def _all_field_homes() -> dict[str, list[str]]:
    return _field_homes(_FileWire, "")


def _field_homes(model: type[BaseModel], path: str) -> dict[str, list[str]]:
    """Every field name and the sections it belongs in, to point at a misplaced key."""
    homes: dict[str, list[str]] = {}
    for alias, info in _wire_fields(model).items():
        homes.setdefault(alias, []).append(path or "the top level")
        sub = _submodel(info.annotation)
        if sub is not None:
            for key, places in _field_homes(sub, _join(path, alias)).items():
                homes.setdefault(key, []).extend(places)
    return homes


def _path(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path


def _join(path: str, key: Any) -> str:
    text = key if isinstance(key, str) else _show(key)
    return f"{path}.{text}" if path else text


def _show(value: Any) -> str:
    """A value as the user wrote it, short; never fails (cyclic or huge data included)."""
    try:
        text = repr(value) if not isinstance(value, str) else f"'{value}'"
    except (ValueError, RecursionError):  # ints past Python's digit limit, deep nesting
        text = f"<{type(value).__name__} too large to show>"
    return _clip(text)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind_of(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a bool"}
    return names.get(type(value), f"a {type(value).__name__}")


def _choices(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
