"""YAML composed into nodes with positions, and walked into plain values while errors are collected.

The C loader composes the file; `Walker` turns nodes into Python values, refusing what a plain task
file cannot hold (tags, alias bombs, deep nesting) and reporting duplicate keys that PyYAML would
silently collapse, each error at its line and column.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from gotorch.config_errors import ConfigError

if TYPE_CHECKING:
    from gotorch.config import Task

@dataclass
class Entry:
    """A key of a mapping and its value, as nodes (with their positions in the file)."""

    key_node: yaml.Node
    value_node: yaml.Node


# Far above any real task file (10,000 tasks are ~200,000 values), far below what hurts.
MAX_VALUES = 2_000_000


# No task file needs more than a handful of levels; libyaml stops at 1,000 but our walk recurses, and
# ~500 levels overflowed Python's stack with a 999-frame traceback.
MAX_DEPTH = 64
# Tags a plain task file can carry: YAML's own types, as the safe resolver assigns them. Anything else
# (`!!python/object:...`, `!custom`) would otherwise be silently read as its bare mapping or string.
_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq",
                                                           "merge", "timestamp"))


class Fatal(Exception):
    """A problem that stops the walk at once: the file as a whole cannot be read as a task file."""

    def __init__(self, node: yaml.Node, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.node = node
        self.problem = problem
        self.hint = hint


_STR_TAG = "tag:yaml.org,2002:str"


def _clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters: an error quotes a value, never all of what its aliases expand to."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _str_pair(x: object) -> bool:
    return type(x) is tuple and len(x) == 2 and type(x[0]) is str and type(x[1]) is str


def _too_big(node: yaml.Node) -> Fatal:
    return Fatal(node, f"the file expands to more than {MAX_VALUES:,} values (aliases of aliases?)",
                  "use aliases only for small shared blocks, e.g. `<<: *defaults`")


def _too_deep(node: yaml.Node) -> Fatal:
    return Fatal(node, f"values are nested more than {MAX_DEPTH} levels deep",
                  "a task file needs only a few levels: task list, task, env or command list")


def plain(node: yaml.Node) -> None:
    if node.tag not in _PLAIN_TAGS:
        raise Fatal(node, f"YAML tag {node.tag!r} is not allowed",
                     "remove the tag: torch reads plain YAML values (strings, numbers, booleans, lists, mappings)")


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _merged_plain(node: yaml.MappingNode) -> None:
    """Refuse a tag on any mapping (or list of mappings) that `node`'s merge keys pull in, at any depth.

    Only merge values are visited: every other node is checked when the walk reaches it. A merged
    mapping already flattened (an anchor merged twice) has no merge keys left, so this stays linear.
    """
    for key, value in node.value:
        if key.tag != _MERGE_TAG:
            continue
        plain(value)
        for merged in value.value if isinstance(value, yaml.SequenceNode) else [value]:
            if isinstance(merged, yaml.Node):
                plain(merged)
            if isinstance(merged, yaml.MappingNode):
                _merged_plain(merged)


class Loader(yaml.CSafeLoader):
    """The C safe loader, with the tag of each plain scalar worked out once per distinct text.

    The C composer asks this Python method for every node's tag; PyYAML's answer for a plain
    scalar runs regular expressions over it. A task file repeats the same keys and values
    thousands of times, so remembering the answer per text saves a fifth of a big file's parse.
    The tag of a plain scalar depends on its text alone: no path resolvers are registered (they
    are a PyYAML extension point torch does not use), so descending and ascending are no-ops.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._plain_tags: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = self._plain_tags.get(value)
            if tag is None:
                tag = self._plain_tags[value] = str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]
            return tag
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


class Walker:
    """Turns composed YAML nodes into Python values while collecting located errors."""

    def __init__(self, filename: str, loader: Any, text: str = "", known: Mapping[bytes, Task] | None = None,
                 check_accounts: bool = True) -> None:
        self.filename = filename
        self.loader = loader
        self.text = text
        self.known = known or {}
        self.keyed = known is not None  # whether to work out the digests of the task entries
        self.check_accounts = check_accounts
        self.sources: dict[str, bytes] = {}  # digest of each task's entry by name (task_sources)
        self.errors: list[ConfigError] = []
        self.budget = MAX_VALUES
        # One object per distinct value (see `shared`), keyed by type too: 1, 1.0 and True are equal.
        self._shared: dict[tuple[type, Any], Any] = {}

    def shared(self, value: Any) -> Any:
        """`value`, or an equal one of the same type seen before in this file.

        10,000 tasks repeat the same few env names, paths and zones. One object for each keeps the
        daemon's copy small: a pickle (how configs reach the daemon) stores a shared object once.
        """
        if isinstance(value, str | float | int) or (
                isinstance(value, tuple) and all(type(x) is str or _str_pair(x) for x in value)):
            return self._shared.setdefault((type(value), value), value)
        return value

    def error(self, node: yaml.Node, field: str, problem: str, hint: str = "", task: str | None = None) -> None:
        mark = node.start_mark
        self.errors.append(ConfigError(self.filename, mark.line + 1, mark.column + 1, field, problem, hint, task))

    def value(self, node: yaml.Node, depth: int = 0) -> Any:
        """Plain Python value of a node (scalars via PyYAML's safe constructor)."""
        self.budget -= 1
        if self.budget < 0:
            # Aliases of aliases expand exponentially ("billion laughs"): a few hundred bytes would
            # otherwise cost the daemon gigabytes while it parses a reload.
            raise _too_big(node)
        if depth > MAX_DEPTH:
            raise _too_deep(node)
        tag = node.tag
        if tag == _STR_TAG and type(node) is yaml.ScalarNode:
            # Most values: the scalar's text is the value, as PyYAML would build it, without its call chain.
            return self._shared.setdefault((str, node.value), node.value)
        if tag not in _PLAIN_TAGS:
            plain(node)
        if isinstance(node, yaml.MappingNode):
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in self._pairs(node)}
        if isinstance(node, yaml.SequenceNode):
            return [self.value(n, depth + 1) for n in node.value]
        try:
            return self.loader.construct_object(node, deep=True)
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            # An explicit standard tag on text it cannot be (`!!bool maybe`, `!!timestamp x`): PyYAML's
            # constructors fail in their own ways; this is the file's error, not ours.
            raise Fatal(node, f"{node.tag.rsplit(':', 1)[-1]} value {_clip(repr(node.value))} cannot be read "
                               f"({type(exc).__name__})", "remove the tag, or write a value of that type") from None

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        # Merge keys (`<<: *common`) are legitimate YAML reuse: flatten them the way PyYAML would.
        # Flattening copies the merged mappings' pairs and drops the mappings themselves, so their
        # tags would never be seen (`<<: !!python/object:x {...}` was accepted): check them first.
        _merged_plain(node)
        self.loader.flatten_mapping(node)
        return list(node.value)

    def mapping(self, node: yaml.Node, what: str, task: str | None = None) -> dict[str, Entry] | None:
        """Entries of a mapping node by key, reporting duplicate keys (PyYAML would keep the last silently)."""
        if not isinstance(node, yaml.MappingNode):
            return None
        plain(node)
        has_merge = any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value)
        seen: dict[str, Entry] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.value(key_node)
            if not isinstance(key, str):
                self.error(key_node, str(key), f"keys of {what} must be names", "write the key as text", task)
                continue
            if key in seen:
                first = seen[key].key_node.start_mark.line + 1
                self.error(key_node, key, f"duplicate key (first set on line {first})",
                           "keep only one; YAML would silently use the last", task)
                continue
            seen[key] = Entry(key_node, value_node)
        if has_merge:
            merged = dict(seen)
            for key_node, value_node in self._pairs(node):
                key = self.value(key_node)
                if isinstance(key, str) and key not in seen:
                    merged[key] = Entry(key_node, value_node)
            return merged
        return seen

    def unknown_keys(self, entries: dict[str, Entry], allowed: tuple[str, ...], where: str,
                     task: str | None = None, misplaced: tuple[str, ...] = ()) -> Iterator[str]:
        for key, entry in entries.items():
            if key in allowed:
                continue
            if key in misplaced:
                self.error(entry.key_node, key, f"cannot be set in {where}", "set it on each task instead", task)
            else:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean `{close[0]}`?" if close else "allowed keys: " + ", ".join(allowed)
                self.error(entry.key_node, key, f"unknown key in {where}", hint, task)
            yield key


def yaml_error(filename: str, exc: yaml.YAMLError, text: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    col = mark.column + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:
        problem = f"{context}, {problem}"
    hint = "fix the YAML syntax at this position"
    bad_line = text.splitlines()[line - 1] if 0 < line <= len(text.splitlines()) else ""
    if "alias" in problem or re.search(r":\s*\*", bad_line):
        hint = 'quote the schedule: YAML reads a leading * as an alias, write schedule: "*/5 * * * * *"'
    return ConfigError(filename, line, col, "yaml", f"invalid YAML: {problem}", hint)
