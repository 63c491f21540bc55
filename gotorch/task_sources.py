"""Recognising task entries a reload has seen before, by their source text.

A reload of 10,000 tasks that changes one spent most of its time validating the 9,999 others
again. The parser (gotorch.config) keys each task entry by a digest of its exact source text and
of everything else its Task depends on (the `defaults:` block's text, the default zone, whether
accounts are checked); the reload process is given the digests of the config the daemon runs, and
an entry whose digest it knows is that Task again: no validation, and the very object the daemon
already has, so nothing about it is sent back.

An entry is keyed only if its text is all there is to it: an alias (`*x`) or a merge (`<<: *x`)
pulling in a node written elsewhere, whose text may have changed, makes it unkeyed (always
validated). What validation reads from the host is checked again for a reused task: its user and
group must still exist (the zone database is taken as stable).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import yaml

from gotorch import accounts

if TYPE_CHECKING:
    from gotorch.config import Task

# An entry with more nodes than this is not keyed (validated as usual): the walk below stays cheap
# whatever the file holds.
MAX_NODES = 400


def context_key(text: str, defaults: yaml.Node | None, zone: str, check_accounts: bool) -> bytes | None:
    """What every task entry's Task depends on besides its own text; None if it cannot be keyed."""
    if "%TAG" in text:  # a tag directive changes what the same text means
        return None
    part = "" if defaults is None else _source(text, defaults)
    if part is None:
        return None
    return hashlib.blake2b(f"{zone}\0{int(check_accounts)}\0{part}".encode(), digest_size=32).digest()


def node_key(text: str, node: yaml.Node, context: bytes) -> bytes | None:
    """The digest of a task entry (see the module docstring), or None if it is not self-contained."""
    source = _source(text, node)
    if source is None:
        return None
    return hashlib.blake2b(source.encode(), digest_size=16, key=context).digest()


def still_valid(task: Task) -> bool:
    """Whether what validation read from the host for `task` still holds (its accounts exist)."""
    return (task.user is None or accounts.user_exists(task.user)) and (
        task.group is None or accounts.group_exists(task.group))


def _source(text: str, node: yaml.Node) -> str | None:
    """The text of `node` if every node under it was written inside it; else None."""
    start, end = node.start_mark.index, node.end_mark.index
    seen: set[int] = set()  # an alias repeats a node: each is walked once (an alias bomb stays cheap)
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if len(seen) > MAX_NODES or n.start_mark.index < start or n.end_mark.index > end:
            return None
        if type(n) is yaml.MappingNode:
            for k, v in n.value:
                if type(k) is yaml.ScalarNode and type(v) is yaml.ScalarNode:
                    # The common case, inline: a scalar is never an alias of a collection.
                    if (k.start_mark.index < start or v.start_mark.index < start
                            or k.end_mark.index > end or v.end_mark.index > end):
                        return None
                else:
                    stack += (k, v)
        elif isinstance(n, yaml.CollectionNode):
            stack += n.value
    return text[start:end]
