"""JSON validation rules that also write their JSON Schema: one description, two uses.

A :class:`Rule` converts a JSON value or records :class:`Problem` entries naming the path of
each bad field (``media[0].source.port``); :meth:`Rule.schema` gives the JSON Schema (2020-12,
as OpenAPI 3.1 uses) of what it accepts. Objects refuse unknown fields with a suggestion.
"""

from __future__ import annotations

import abc
import difflib
import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "Bool",
    "Choice",
    "Const",
    "Int",
    "IpAddress",
    "JsonObject",
    "ListOf",
    "Nullable",
    "Obj",
    "Problem",
    "Rule",
    "Str",
    "Tagged",
    "apply",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Problem:
    """One invalid field: its path in the body (``media[1].source.port``) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class _Bad(Exception):
    """The value itself is wrong (the caller knows where it is)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Recorded(Exception):
    """Problems inside the value were already recorded with their paths."""


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _show(value: object) -> str:
    """A short description of a JSON value for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        text = json.dumps(value[:40] + ("..." if len(value) > 40 else ""))
        return text
    if isinstance(value, float | int):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge number"
        return text
    return type(value).__name__


class Rule(abc.ABC):
    """How one JSON value is checked and converted, and its JSON Schema."""

    def __init__(self, description: str = "") -> None:
        self.description = description

    @abc.abstractmethod
    def parse(self, value: object, where: str, problems: list[Problem]) -> Any:
        """The converted value; raise _Bad, or record problems and raise _Recorded."""

    @abc.abstractmethod
    def _schema(self) -> dict[str, Any]: ...

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12, as OpenAPI 3.1 uses) of accepted values."""
        out = self._schema()
        if self.description:
            out["description"] = self.description
        return out


class Int(Rule):
    def __init__(self, lo: int, hi: int, description: str = "") -> None:
        super().__init__(description)
        self.lo, self.hi = lo, hi

    def parse(self, value: object, where: str, problems: list[Problem]) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"{_show(value)} is not an integer")
        if not self.lo <= value <= self.hi:
            raise _Bad(f"{_show(value)} is out of range ({self.lo}-{self.hi})")
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


class Str(Rule):
    """A string of printable characters (no control characters, valid Unicode)."""

    def __init__(
        self,
        max_len: int,
        description: str = "",
        *,
        min_len: int = 0,
        pattern: str | None = None,
        pattern_reason: str = "",
    ) -> None:
        super().__init__(description)
        self.min_len, self.max_len = min_len, max_len
        self.pattern = pattern
        self.pattern_reason = pattern_reason

    def parse(self, value: object, where: str, problems: list[Problem]) -> str:
        if not isinstance(value, str):
            raise _Bad(f"{_show(value)} is not a string")
        _check_text(value)
        if len(value) < self.min_len:
            raise _Bad("is empty" if self.min_len == 1 else f"is shorter than {self.min_len}")
        if len(value) > self.max_len:
            raise _Bad(f"is longer than {self.max_len} characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Bad(f"{_show(value)} {self.pattern_reason}")
        return value

    def _schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "maxLength": self.max_len}
        if self.min_len:
            out["minLength"] = self.min_len
        if self.pattern is not None:
            out["pattern"] = f"^(?:{self.pattern})$"
        return out


def _check_text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("is not valid Unicode (lone surrogate)") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _Bad("contains control characters")


class Bool(Rule):
    def parse(self, value: object, where: str, problems: list[Problem]) -> bool:
        if not isinstance(value, bool):
            raise _Bad(f"{_show(value)} is not a boolean (true or false)")
        return value

    def _schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Choice(Rule):
    """One of an Enum's values, case-insensitively."""

    def __init__(self, cls: type[Enum], description: str = "") -> None:
        super().__init__(description)
        self.cls = cls

    def parse(self, value: object, where: str, problems: list[Problem]) -> Enum:
        if isinstance(value, str):
            for member in self.cls:
                if str(member.value).lower() == value.lower():
                    return member
        choices = ", ".join(repr(m.value) for m in self.cls)
        raise _Bad(f"{_show(value)} is not one of {choices}")

    def _schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": [m.value for m in self.cls]}


class Const(Rule):
    def __init__(self, value: str) -> None:
        super().__init__()
        self.value = value

    def parse(self, value: object, where: str, problems: list[Problem]) -> str:
        if value != self.value:
            raise _Bad(f"{_show(value)} is not {self.value!r}")
        return self.value

    def _schema(self) -> dict[str, Any]:
        return {"const": self.value}


class Nullable(Rule):
    """The inner rule's values, or null (meaning "none")."""

    def __init__(self, inner: Rule, description: str = "") -> None:
        super().__init__(description or inner.description)
        self.inner = inner

    def parse(self, value: object, where: str, problems: list[Problem]) -> Any:
        return None if value is None else self.inner.parse(value, where, problems)

    def _schema(self) -> dict[str, Any]:
        inner = self.inner.schema()
        inner.pop("description", None)
        return {"anyOf": [inner, {"type": "null"}]}


class IpAddress(Rule):
    def __init__(self, description: str = "", *, multicast: bool = False) -> None:
        super().__init__(description)
        self.multicast = multicast

    def parse(self, value: object, where: str, problems: list[Problem]) -> IPAddress:
        if not isinstance(value, str):
            raise _Bad(f"{_show(value)} is not a string")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise _Bad(f"{_show(value)} is not an IP address") from None
        if self.multicast and not address.is_multicast:
            raise _Bad(f"{value} is not a multicast address (224.0.0.0/4 or ff00::/8)")
        return address

    def _schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": 45}


class JsonObject(Rule):
    """A free JSON object, bounded in size and depth."""

    def __init__(self, max_bytes: int, max_depth: int, description: str = "") -> None:
        super().__init__(description)
        self.max_bytes, self.max_depth = max_bytes, max_depth

    def parse(self, value: object, where: str, problems: list[Problem]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"{_show(value)} is not an object")
        stack: list[tuple[object, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, dict | list):
                if depth > self.max_depth:
                    raise _Bad(f"is nested deeper than {self.max_depth} levels")
                children = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
                for key, child in children:
                    if isinstance(key, str):
                        _check_json_string(key)
                    elif not isinstance(item, list):
                        raise _Bad("has a key that is not a string")
                    stack.append((child, depth + 1))
            elif isinstance(item, str):
                _check_json_string(item)
            elif isinstance(item, float) and not math.isfinite(item):
                raise _Bad("has a number that is not finite")
            elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= 10**30:
                raise _Bad("has a number too large")
            elif item is not None and not isinstance(item, bool | int | float):
                raise _Bad(f"has a value that is not JSON ({type(item).__name__})")
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode("utf-8")) > self.max_bytes:
            raise _Bad(f"is larger than {self.max_bytes} bytes as JSON")
        copy: dict[str, Any] = json.loads(text)
        return copy

    def _schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": True}


def _check_json_string(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("has a string that is not valid Unicode (lone surrogate)") from None


class Obj(Rule):
    """A JSON object with known fields; unknown ones are errors (with a suggestion)."""

    def __init__(
        self,
        fields: Mapping[str, Rule],
        required: Sequence[str] = (),
        description: str = "",
        *,
        fixed: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.fields = dict(fields)
        self.required = tuple(required)
        self.fixed = dict(fixed or {})  # field -> why it cannot be given here

    def parse(self, value: object, where: str, problems: list[Problem]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"{_show(value)} is not an object")
        before = len(problems)
        out: dict[str, Any] = {}
        for key, item in value.items():
            at = _at(where, key)
            rule = self.fields.get(key)
            if key in self.fixed:
                problems.append(Problem(at, self.fixed[key]))
            elif rule is None:
                problems.append(Problem(at, self._unknown(key)))
            else:
                try:
                    out[key] = rule.parse(item, at, problems)
                except _Bad as e:
                    problems.append(Problem(at, e.reason))
                except _Recorded:
                    pass
        for key in self.required:
            if key not in value:
                problems.append(Problem(_at(where, key), "is required"))
        if len(problems) > before:
            raise _Recorded
        return out

    def _unknown(self, key: str) -> str:
        close = difflib.get_close_matches(key, list(self.fields), n=1, cutoff=0.6)
        if close:
            return f"unknown field; did you mean {close[0]!r}?"
        return "unknown field (known: " + ", ".join(self.fields) + ")"

    def _schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {k: r.schema() for k, r in self.fields.items()},
            "additionalProperties": False,
        }
        if self.required:
            out["required"] = list(self.required)
        return out


class ListOf(Rule):
    def __init__(self, item: Rule, min_items: int, max_items: int, description: str = "") -> None:
        super().__init__(description)
        self.item, self.min_items, self.max_items = item, min_items, max_items

    def parse(self, value: object, where: str, problems: list[Problem]) -> list[Any]:
        if not isinstance(value, list):
            raise _Bad(f"{_show(value)} is not a list")
        if not self.min_items <= len(value) <= self.max_items:
            raise _Bad(f"has {len(value)} items; give {self.min_items} to {self.max_items}")
        before = len(problems)
        out: list[Any] = []
        for i, item in enumerate(value):
            at = _at(where, i)
            try:
                out.append(self.item.parse(item, at, problems))
            except _Bad as e:
                problems.append(Problem(at, e.reason))
            except _Recorded:
                pass
        if len(problems) > before:
            raise _Recorded
        return out

    def _schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": self.item.schema(),
            "minItems": self.min_items,
            "maxItems": self.max_items,
        }


class Tagged(Rule):
    """An object whose ``type`` field picks which of several object rules applies."""

    def __init__(self, variants: Mapping[str, Obj], description: str = "") -> None:
        super().__init__(description)
        self.variants = dict(variants)

    def parse(self, value: object, where: str, problems: list[Problem]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(f"{_show(value)} is not an object")
        tag = value.get("type")
        if not isinstance(tag, str) or tag not in self.variants:
            choices = ", ".join(repr(k) for k in self.variants)
            reason = "is required" if "type" not in value else f"{_show(tag)} is not one of"
            problems.append(Problem(_at(where, "type"), f"{reason} ({choices})"))
            raise _Recorded
        return self.variants[str(tag)].parse(value, where, problems)

    def _schema(self) -> dict[str, Any]:
        return {
            "oneOf": [v.schema() for v in self.variants.values()],
            "discriminator": {"propertyName": "type"},
        }


def apply(rule: Rule, value: object) -> tuple[Any, list[Problem]]:
    """Apply a rule to a whole body: the converted value and every problem found."""
    problems: list[Problem] = []
    parsed: Any = None
    try:
        parsed = rule.parse(value, "", problems)
    except _Bad as e:
        problems.append(Problem("", f"the body: {e.reason}"))
    except _Recorded:
        pass
    return parsed, problems
