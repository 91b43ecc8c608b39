"""YAML loading that remembers where every key was written.

The loader composes the node tree first so that each mapping key and list item keeps its
line number; problems found later by validation point at the line the user must edit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from resolute.config._issues import PathPart


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float.

    YAML 1.1 (PyYAML) only accepts exponents with a dot (``1.0e-3``); ``1e-3`` would reach
    the user's code as the *string* "1e-3", a classic silent bug in learning rates.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class LoadedYaml:
    """The parsed document, the line of every key path, and problems found while parsing."""

    data: Any
    lines: dict[tuple[PathPart, ...], int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line_of(self, path: tuple[PathPart, ...]) -> int | None:
        """Line of ``path``, or of its nearest written ancestor (a missing key's parent)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def load_yaml(text: str) -> LoadedYaml:
    """Parse ``text``; a syntax error becomes a problem with its line, not an exception."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            return LoadedYaml(data=None, problems=[_syntax_problem(exc)])
        if node is None:
            return LoadedYaml(data=None)
        loaded = LoadedYaml(data=None)
        _find_duplicate_keys(node, (), loader, loaded.problems)
        try:
            loaded.data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            return LoadedYaml(data=None, problems=[_syntax_problem(exc)])
        loaded.lines[()] = node.start_mark.line + 1
        _record_lines(node, (), loader, loaded.lines)
        return loaded
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
    return (
        f"<yaml>{where}: not valid YAML: {what}. Fix the syntax there "
        "(indentation with spaces, a space after each ':', quotes around values with ': ')."
    )


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_of(node: yaml.Node, loader: _Loader) -> PathPart | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag == _MERGE_TAG:
        return None
    key = loader.construct_object(node, deep=True)
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        return str(key)
    return key


def _find_duplicate_keys(
    node: yaml.Node, path: tuple[PathPart, ...], loader: _Loader, problems: list[str]
) -> None:
    # Runs on the composed tree, before merge keys ('<<') are flattened: a key that
    # overrides a merged one is intended, a key written twice by hand is not.
    if isinstance(node, yaml.MappingNode):
        seen: dict[PathPart, int] = {}
        for key_node, value_node in node.value:
            key = _key_of(key_node, loader)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                where = ".".join(map(str, (*path, key)))
                problems.append(
                    f"{where} (line {line}): duplicate key, first written on line {seen[key]}. "
                    "YAML keeps only the last one; delete the copy you do not mean."
                )
            else:
                seen[key] = line
            _find_duplicate_keys(value_node, (*path, key), loader, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicate_keys(item, (*path, index), loader, problems)


def _record_lines(
    node: yaml.Node,
    path: tuple[PathPart, ...],
    loader: _Loader,
    lines: dict[tuple[PathPart, ...], int],
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _key_of(key_node, loader)
            if key is None:
                continue
            child = (*path, key)
            # Last occurrence wins, as in YAML itself: merged-in keys ('<<') come first in
            # the flattened mapping, a key written in place overrides them.
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, loader, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, loader, lines)
