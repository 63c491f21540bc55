"""gotorch.task_sources through parse_config: which entries a reload takes from the config before."""

from __future__ import annotations

import pytest

from gotorch import accounts
from gotorch.config import parse_config

FILE = """\
version: 1
defaults: {timezone: UTC}
tasks:
  - &common {name: base, command: /bin/true, schedule: &sched "0 * * * * *"}
  - {name: plain, command: /bin/true, schedule: "* * * * * *", user: root}
  - name: block
    command: [/bin/echo, hi]
    schedule: "*/5 * * * * *"
  - {<<: *common, name: merged}
  - {name: scalar-alias, command: /bin/true, schedule: *sched}
  - {name: aliased, command: /bin/true, schedule: "1 * * * * *", env: {A: &a x, B: *a}}
"""


def _known(text: str) -> dict[bytes, object]:
    config = parse_config(text, "t.yaml", known={})
    assert config.sources is not None
    return {config.sources[t.name]: t for t in config.tasks if t.name in config.sources}


def test_an_unchanged_entry_is_the_same_task_and_a_changed_one_is_parsed_again() -> None:
    known = _known(FILE)
    again = parse_config(FILE.replace('"*/5 * * * * *"', '"*/6 * * * * *"'), "t.yaml", known=known)  # type: ignore[arg-type]
    by_name = {t.name: t for t in again.tasks}
    old = {t.name: t for t in known.values()}  # type: ignore[attr-defined]
    assert by_name["plain"] is old["plain"]
    assert by_name["block"] is not old["block"] and by_name["block"].schedule.text == "*/6 * * * * *"  # type: ignore[union-attr]


def test_entries_that_pull_in_text_from_elsewhere_are_never_keyed() -> None:
    assert parse_config(FILE, "t.yaml").sources is None, "worked out only when asked for"
    config = parse_config(FILE, "t.yaml", known={})
    assert config.sources is not None
    # A merge takes its fields from an anchor outside the entry: the entry's text is not all of it.
    assert "merged" not in config.sources and "scalar-alias" not in config.sources
    # An alias of an anchor inside the entry is the entry's own text.
    assert set(config.sources) == {"base", "plain", "block", "aliased"}


def test_the_anchor_an_entry_merges_changes_and_the_entry_follows() -> None:
    known = _known(FILE)
    again = parse_config(FILE.replace('&sched "0 * * * * *"', '&sched "7 * * * * *"'), "t.yaml",
                         known=known)  # type: ignore[arg-type]
    for name in ("merged", "scalar-alias"):
        task = next(t for t in again.tasks if t.name == name)
        assert task.schedule is not None and task.schedule.text == "7 * * * * *"


def test_other_defaults_make_every_entry_new() -> None:
    known = _known(FILE)
    again = parse_config(FILE.replace("timezone: UTC", "timezone: Europe/Paris"), "t.yaml", known=known)  # type: ignore[arg-type]
    assert all(t not in known.values() for t in again.tasks)
    assert all(t.timezone == "Europe/Paris" for t in again.tasks)


def test_a_moved_entry_is_reused_at_its_new_line() -> None:
    known = _known(FILE)
    again = parse_config(FILE.replace("tasks:\n", "tasks:\n  # a comment line\n"), "t.yaml", known=known)  # type: ignore[arg-type]
    plain = next(t for t in again.tasks if t.name == "plain")
    before = next(t for t in known.values() if t.name == "plain")  # type: ignore[attr-defined]
    assert plain == before and plain.line == before.line + 1  # type: ignore[attr-defined]


def test_an_entry_whose_user_is_gone_is_validated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    known = _known(FILE)
    before = next(t for t in known.values() if t.name == "plain")  # type: ignore[attr-defined]
    same = next(t for t in parse_config(FILE, "t.yaml", known=known).tasks if t.name == "plain")  # type: ignore[arg-type]
    assert same is before
    # As the account database would answer after a userdel (the validator then refuses the entry:
    # see test_config for its message); the entry must not be taken as it was.
    monkeypatch.setattr(accounts, "user_exists", lambda name: name != "root")
    again = next(t for t in parse_config(FILE, "t.yaml", known=known).tasks if t.name == "plain")  # type: ignore[arg-type]
    assert again is not before and again == before


def test_a_tag_directive_turns_reuse_off() -> None:
    text = "%TAG !e! tag:example.com,2000:\n---\n" + FILE
    config = parse_config(text, "t.yaml", known={})
    assert config.sources == {}
