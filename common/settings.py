"""The configuration machinery: frozen pydantic v2 sections read from YAML with overrides.

A command's configuration is a :class:`Section` of sections (``training.config.Config``; each
benchmark adds its own). Keys are declared with ``pydantic.Field(default, description=..., ge=...)``
and the types below, choices as ``Literal`` types; errors are one line naming the key.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError

from common.errors import ConfigError


class Section(BaseModel):
    """A frozen group of keys; unknown keys are refused (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict:
        """The section as plain dicts and lists (YAML/JSON serialisable)."""
        return self.model_dump()


def _number(value: Any) -> Any:
    """A string that spells a number, as that float (YAML 1.1 reads ``5e-4`` as a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _unique(items: list) -> list:
    if len(set(items)) != len(items):
        raise ValueError(f"lists an item twice: {items!r}")
    return items


#: A whole number (``true`` is not one).
Int = Annotated[int, Strict()]
#: A number; whole numbers and strings like ``5e-4`` are taken as floats, ``true`` is not one.
Float = Annotated[float, Strict(), BeforeValidator(_number)]
#: Text (a number is not text: write it in quotes).
Str = Annotated[str, Strict()]
#: A non-empty name.
Name = Annotated[str, Strict(), AfterValidator(lambda s: s if s else _empty())]
#: A list without repeated items.
Unique = AfterValidator(_unique)


def _empty() -> str:
    raise ValueError("holds an empty name")


def replace(section: Section, **changes: Any) -> Section:
    """A copy of ``section`` with ``changes`` (already valid values: not validated again)."""
    return section.model_copy(update=changes)


def validate(cls: type[Section], data: Any) -> Section:
    """``data`` (dicts, lists and scalars, as YAML gives) as a ``cls``.

    Raises:
        ConfigError: one line naming the first wrong key and what it allows.
    """
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(cls, data, exc.errors())) from None


def load(
    cls: type[Section],
    path: str | Path | None,
    overrides: typing.Sequence[str] = (),
    elsewhere: dict[str, str] | None = None,
    prepare: typing.Callable[[dict], dict] = lambda data: data,
) -> Section:
    """Read a YAML file (``path`` None: the defaults), apply overrides, then validate as ``cls``.

    Overrides are ``section.key=value``, values parsed as YAML scalars (an empty value is null).

    Args:
        elsewhere: sections read by other commands (name: the command), e.g. ``bench: make bench``:
            in a file they are left out (one file may serve every command); as an override they are
            refused, naming the command that reads them.
        prepare: applied to the data before validation (e.g. words with another name).

    Raises:
        ConfigError: an unreadable or malformed file, an override of the wrong shape, an unknown key
            or an invalid value (the key is named).
    """
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    elsewhere = {k: v for k, v in (elsewhere or {}).items() if k not in cls.model_fields}
    data = {k: v for k, v in data.items() if k not in elsewhere}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.strip().split(".")
        if sections and sections[0] in elsewhere:
            raise ConfigError(f"{key.strip()} is read by {elsewhere[sections[0]]}, not here")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {section} is not a section")
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    return validate(cls, prepare(data))


def describe(cls: type[Section], prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(key, default, description)`` per key of ``cls``, in order; choices end the description."""
    rows = []
    for name, field in cls.model_fields.items():
        sub = _section(field.annotation)
        if sub is not None:
            rows.extend(describe(sub, f"{prefix}{name}."))
            continue
        choices = _choices(field.annotation)
        allowed = f" ({' | '.join(choices)})" if choices else ""
        rows.append((f"{prefix}{name}", field.get_default(), f"{field.description}{allowed}"))
    return rows


# -- one line per refusal ---------------------------------------------------------------------


def _message(cls: type[Section], data: Any, errors: list[dict]) -> str:
    """The first of pydantic's errors as one line: the key, what it allows, what it got."""
    error = errors[0]
    kind = error["type"]
    section, parent, field, names, index = cls, cls, None, [], None
    for part in error["loc"]:
        if isinstance(part, int):
            index = part
        elif section is not None and (part in section.model_fields or kind == "extra_forbidden"):
            parent, field = section, section.model_fields.get(part)
            names.append(part)
            section = _section(field.annotation) if field is not None else None
        # any other string is the tag of a union's member: the key is the same
    key = ".".join(names)
    got = error.get("input")
    if kind == "extra_forbidden":
        where = f" in {'.'.join(names[:-1])}" if len(names) > 1 else ""
        return f"unknown key {key}; allowed keys{where}: {', '.join(parent.model_fields)}"
    if field is None or section is not None:
        return f"{key or 'config'} must be a mapping, got {got!r}"
    same = [e for e in errors if e["loc"][: len(error["loc"])] == error["loc"]]
    bound = next((e for e in errors if e["type"] == "greater_than_equal"), None)
    if got is None and not _nullable(field.annotation):
        return f"{key} must be set ({field.description})"
    if bound is not None and bound["loc"][: len(names)] == error["loc"][: len(names)]:
        ge, value = bound["ctx"]["ge"], bound["input"]
        if index is not None:
            return f"{key}: {value!r} must be >= {ge}"
        return f"{key} must be >= {ge}; got {value!r}"
    choices = _choices(field.annotation)
    if choices and any(e["type"] == "literal_error" for e in same):
        if index is not None:
            return f"{key}: {got!r} is not one of {', '.join(choices)}"
        if _kinds(field.annotation) == ["choice"]:
            return f"{key} must be one of {', '.join(choices)}; got {got!r}"
    whole = _dig(data, names)
    if index is not None or kind == "list_type":
        return f"{key} must be a list of {_item_kinds(field.annotation)}; got {whole!r}"
    if kind == "value_error":
        return f"{key} {error['ctx']['error']}"
    kinds = " or ".join(_kinds(field.annotation))
    return f"{key} must be {kinds}, got {whole!r} ({field.description})"


def _dig(data: Any, names: list[str]) -> Any:
    for name in names:
        data = data.get(name) if isinstance(data, dict) else None
    return data


def _strip(annotation: Any) -> Any:
    """The type inside ``Annotated[...]``."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list:
    """The members of a union (or the one type), ``Annotated`` stripped, None left out."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [_strip(a) for a in typing.get_args(annotation)]
    else:
        members = [annotation]
    return [m for m in members if m is not type(None)]


def _section(annotation: Any) -> type[Section] | None:
    members = _members(annotation)
    if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], Section):
        return members[0]
    return None


def _nullable(annotation: Any) -> bool:
    annotation = _strip(annotation)
    return type(None) in typing.get_args(annotation) or annotation is type(None)


def _choices(annotation: Any) -> tuple[str, ...]:
    """The allowed words of a ``Literal`` (of the items, for a list); () for free values."""
    for member in _members(annotation):
        if typing.get_origin(member) is list:
            return _choices(typing.get_args(member)[0])
        if typing.get_origin(member) is Literal and len(_members(annotation)) == 1:
            return typing.get_args(member)
    return ()


def _kinds(annotation: Any) -> list[str]:
    """What a value may be, in words: ``int``, ``float``, ``bool``, ``str``, ``list``, ``choice``.

    A ``Literal`` beside another type gives its words instead of ``choice`` (``auto``).
    """
    words = []
    members = _members(annotation)
    for member in members:
        if typing.get_origin(member) is Literal:
            words += ["choice"] if len(members) == 1 else list(typing.get_args(member))
        elif typing.get_origin(member) is list:
            words.append("list")
        else:
            words.append(getattr(member, "__name__", str(member)))
    return words


def _item_kinds(annotation: Any) -> str:
    for member in _members(annotation):
        if typing.get_origin(member) is list:
            item = _kinds(typing.get_args(member)[0])
            return "names" if item in (["str"], ["choice"]) else f"{item[0]}s"
    return "items"
