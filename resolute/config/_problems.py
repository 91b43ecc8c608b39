"""Turn pydantic's validation errors into problems a user can act on.

Each problem names the field path as written in the file (``searcher.divisor``), the YAML
line to edit, what is wrong, and what to do. pydantic's error locations also contain the
tags of tagged unions (``('searcher', 'asha', 'divisor')``); the walker below follows the
model types alongside the location so that tags are recognised and dropped, and so that
the model owning a field is known (its other fields feed "did you mean").
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from typing_extensions import TypeAliasType

from resolute.config import _hyperparameters
from resolute.config._experiment import ExperimentConfig
from resolute.config._hyperparameters import PARAMETER_TYPES
from resolute.config._issues import SEMANTIC_ERROR, Issue, PathPart
from resolute.config._searcher import SEARCHER_TYPES
from resolute.config._yaml import LoadedYaml

# Names users bring from other tools (Determined, Optuna, Ray Tune) for our parameter types.
_TYPE_ALIASES = {
    "float": "double",
    "uniform": "double",
    "integer": "int",
    "randint": "int",
    "loguniform": "log",
    "choice": "categorical",
    "constant": "const",
}

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "path_type": "a path",
}


@dataclass
class _Located:
    """Where an error points: the path in the file and the model that owns the last key."""

    path: list[PathPart] = field(default_factory=list)
    model: type[BaseModel] | None = None
    key: str | None = None  # the last model field (or unknown key) on the path
    variants: dict[str, type[BaseModel]] | None = None  # the tagged union the model came from
    tag: str | None = None
    dict_key: bool = False  # the error is about a mapping key itself


def sort_by_line(problems: list[str]) -> list[str]:
    """Problems in file order; those without a line first."""
    return sorted(
        dict.fromkeys(problems), key=lambda p: int(m.group(1)) if (m := _LINE.search(p)) else 0
    )


_LINE = re.compile(r"\(line (\d+)")


def problems_from(exc: ValidationError, loaded: LoadedYaml) -> list[str]:
    """One line per problem, duplicates (one value, two errors) dropped."""
    found: list[tuple[int, str]] = []
    for error in exc.errors(include_url=False):
        where = _locate(error["loc"])
        if error["type"] == SEMANTIC_ERROR:
            for issue in (error.get("ctx") or {}).get("issues", []):
                found.append(_render(loaded, [*where.path, *issue.path], issue.message, issue.hint))
        else:
            message, hint, path = _explain(error, where)
            # A missing top-level key has no line of its own; "line 1" would mislead.
            top_missing = error["type"] == "missing" and len(path) == 1
            found.append(_render(loaded, path, message, hint, with_line=not top_missing))
    return list(dict.fromkeys(text for _, text in found))


def problem(loaded: LoadedYaml, issue: Issue) -> str:
    return _render(loaded, list(issue.path), issue.message, issue.hint)[1]


def _render(
    loaded: LoadedYaml, path: list[PathPart], message: str, hint: str, *, with_line: bool = True
) -> tuple[int, str]:
    path = _trim_to_data(loaded.data, path)
    line = loaded.line_of(tuple(path)) if with_line else None
    text = _dotted(path) or "(top level)"
    if line is not None:
        text += f" (line {line})"
    text += f": {message}"
    if not message.endswith(("?", ".")):
        text += "."
    if hint:
        text += f" {hint}"
    return (line or 0, text)


def _dotted(path: list[PathPart]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _trim_to_data(data: Any, path: list[PathPart]) -> list[PathPart]:
    # A shorthand such as `lr: 0.1` is validated as {type: const, val: 0.1}; an error in the
    # expanded form must point at what the user wrote, so cut where the data has no children.
    node = data
    for depth, part in enumerate(path):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return path[:depth]
    return path


# ---------------------------------------------------------------------- locating


def _unwrap(tp: Any) -> Any:
    while True:
        if isinstance(tp, str):  # the recursive reference inside Hyperparameter
            tp = getattr(_hyperparameters, tp)
        elif isinstance(tp, TypeAliasType):
            tp = tp.__value__
        elif typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif _is_union(tp):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _union_tags(tp: Any) -> dict[str, Any]:
    """Tag -> member type of a tagged union (explicit Tag(...) or a Literal name/type field)."""
    tags: dict[str, Any] = {}
    for member in typing.get_args(tp):
        metadata = (
            typing.get_args(member)[1:] if typing.get_origin(member) is typing.Annotated else ()
        )
        explicit = [m.tag for m in metadata if hasattr(m, "tag")]
        bare = _unwrap(member)
        if explicit:
            tags[explicit[0]] = member
        elif isinstance(bare, type) and issubclass(bare, BaseModel):
            for discriminator in ("name", "type"):
                info = bare.model_fields.get(discriminator)
                if info is not None and typing.get_origin(info.annotation) is typing.Literal:
                    tags[typing.get_args(info.annotation)[0]] = member
    return tags


def _locate(loc: tuple[str | int, ...]) -> _Located:
    where = _Located()
    tp: Any = ExperimentConfig
    for part in loc:
        tp = _unwrap(tp)
        if _is_union(tp):
            tags = _union_tags(tp)
            if part in tags:
                chosen = _unwrap(tags[part])
                where.variants = {
                    t: _unwrap(m) for t, m in tags.items() if isinstance(_unwrap(m), type)
                }
                where.tag = str(part)
                tp = chosen
                continue
            tp = None
        if part == "[key]":
            where.dict_key = True
            continue
        where.path.append(part)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            where.model, where.key = tp, str(part)
            info = tp.model_fields.get(str(part))
            tp = info.annotation if info is not None else None
            if info is None:
                break
            continue
        origin = typing.get_origin(tp)
        if origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin in (list, tuple):
            tp = typing.get_args(tp)[0]
        else:
            tp = None
    return where


# ---------------------------------------------------------------------- explaining


def _explain(error: ErrorDetails, where: _Located) -> tuple[str, str, list[PathPart]]:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    path = list(where.path)
    hint = _describe(where)
    if kind == "missing":
        variant = f" for searcher '{where.tag}'" if where.tag in SEARCHER_TYPES else ""
        if where.tag in PARAMETER_TYPES:
            variant = f" for type '{where.tag}'"
        description = _description(where)
        return f"required{variant}", f"Add {where.key}: {description}." if description else "", path
    if kind == "extra_forbidden":
        return _unknown_key(where)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _unknown_tag(kind, ctx, path)
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), options, n=1)
        message = f"must be one of {', '.join(options)}; got {_show(value)}"
        return (message, f"Did you mean '{close[0]}'?" if close else hint, path)
    if where.dict_key:
        return _bad_name(value, path)
    if kind in _EXPECTED:
        if kind == "string_type" and isinstance(value, bool):
            hint = "Quote it ('true') if you mean the text."
        elif kind == "string_type" and isinstance(value, (int, float)):
            hint = f"Quote it: '{value}'."
        elif kind in ("int_type", "float_type") and isinstance(value, str) and _is_number(value):
            hint = f"Remove the quotes: {value}."
        elif kind in ("tuple_type", "list_type") and isinstance(value, (str, int, float)):
            hint = f"Write a list: [{value}]."
        if kind == "model_attributes_type" and path == ["searcher"]:
            hint = "Write it as a mapping: searcher: {name: asha, metric: val_loss, max_trials: 16, max_time: 64}."
        elif where.key == "slots_per_trial":
            hint = "Write a number of slots, or {min: N, max: M} for an elastic trial."
        elif kind in ("model_attributes_type", "dict_type", "model_type"):
            hint = "Write it as a block of indented 'key: value' lines."
        return f"expected {_EXPECTED[kind]}, got {_show(value)}", hint, path
    bounds = {
        "greater_than": "greater than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
    }
    if kind in bounds:
        limit = bounds[kind].format(**{k: _show(v) for k, v in ctx.items()})
        return f"must be {limit}, got {_show(value)}", hint, path
    if kind == "finite_number":
        return f"must be a finite number, got {_show(value)}", hint, path
    if kind == "string_too_short":
        return "must not be empty", hint, path
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)", hint, path
    return error["msg"].removeprefix("Value error, "), hint, path


def _description(where: _Located) -> str:
    if where.model is None or where.key is None:
        return ""
    info = where.model.model_fields.get(where.key)
    return info.description or "" if info is not None else ""


def _describe(where: _Located) -> str:
    description = _description(where)
    return f"'{where.key}' is {description}." if description else ""


def _unknown_key(where: _Located) -> tuple[str, str, list[PathPart]]:
    key, path = str(where.key), list(where.path)
    message = f"unknown key '{key}'"
    if where.model is None:
        return message, "", path
    own = list(where.model.model_fields)
    if where.variants:
        owners = [t for t, m in where.variants.items() if key in m.model_fields]
        if owners:
            field_name, what = (
                ("name", "searcher") if where.tag in SEARCHER_TYPES else ("type", "type")
            )
            names = " or ".join(f"'{t}'" for t in owners)
            return (
                f"'{key}' applies only to {what} {names}",
                f"Remove it, or set {field_name}: {owners[0]}.",
                path,
            )
    close = difflib.get_close_matches(key, own, n=1)
    close += [name for name in own if key in name and name not in close]
    if close:
        return f"{message}; did you mean {' or '.join(repr(c) for c in close[:3])}?", "", path
    if where.model is ExperimentConfig:
        section = _section_of(key)
        if section:
            return (
                message,
                f"'{key}' belongs in the '{section}' section: indent it under '{section}:'.",
                path,
            )
    elif key in ExperimentConfig.model_fields:
        return message, f"'{key}' is a top-level setting: move it out of this section.", path
    return message, f"Valid keys here: {', '.join(own)}.", path


def _section_of(key: str) -> str | None:
    for name, info in ExperimentConfig.model_fields.items():
        tp = _unwrap(info.annotation)
        members = [_unwrap(m) for m in typing.get_args(tp)] if _is_union(tp) else [tp]
        for member in members:
            if (
                isinstance(member, type)
                and issubclass(member, BaseModel)
                and key in member.model_fields
            ):
                return name
    return None


def _unknown_tag(
    kind: str, ctx: dict[str, Any], path: list[PathPart]
) -> tuple[str, str, list[PathPart]]:
    is_searcher = path == ["searcher"]
    field_name, options = (
        ("name", list(SEARCHER_TYPES)) if is_searcher else ("type", list(PARAMETER_TYPES))
    )
    path = [*path, field_name]
    if kind == "union_tag_not_found":
        return "required", f"Choose one of: {', '.join(options)}.", path
    tag = str(ctx.get("tag"))
    what = "searcher" if is_searcher else "hyperparameter type"
    close = difflib.get_close_matches(tag, options, n=1) or (
        [_TYPE_ALIASES[tag.lower()]] if not is_searcher and tag.lower() in _TYPE_ALIASES else []
    )
    guess = f"Did you mean '{close[0]}'? " if close else ""
    hint = f"{guess}Choose one of: {', '.join(options)}."
    if not is_searcher:
        hint += (
            " (A mapping with a string 'type' is a parameter; to nest a group with a member "
            "named 'type', write type: {type: const, val: ...}.)"
        )
    return f"unknown {what} '{tag}'", hint, path


def _bad_name(value: Any, path: list[PathPart]) -> tuple[str, str, list[PathPart]]:
    if path and path[0] == "hyperparameters":
        if isinstance(value, str):
            return (
                f"hyperparameter name '{value}' contains '.'",
                "Dots name nested groups: nest a mapping instead, or use '_'.",
                path,
            )
        return f"hyperparameter names must be strings, got {_show(value)}", "Quote the name.", path
    if path and path[0] == "environment":
        return (
            f"'{value}' is not an environment variable name",
            "Use letters, digits and '_', not starting with a digit.",
            path,
        )
    return f"invalid key {_show(value)}", "", path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
