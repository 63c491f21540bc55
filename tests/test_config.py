"""The task file: every field, every error, with the line numbers users will see."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from gotorch.config import ConfigInvalid, Task, load_config, parse_config
from gotorch.plan import diff


def parse(text: str, **kw: object) -> tuple[Task, ...]:
    return parse_config(textwrap.dedent(text), "t.yaml", **kw).tasks  # type: ignore[arg-type]


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(textwrap.dedent(text), "t.yaml")
    return [str(e) for e in info.value.errors]


def one_error(text: str) -> str:
    errs = errors(text)
    assert len(errs) == 1, errs
    return errs[0]


FULL = """\
version: 1
defaults:
  timezone: Europe/Berlin
  kill_timeout: 3s
tasks:
  - name: rotate-logs
    schedule: "0 */5 * * * *"
    command: /usr/local/bin/rotate.sh
    type: cron
    ips: [10.0.0.5, 10.0.1.0/24, "2001:db8::/32"]
    max_instances: 2
    timeout: 30m
    kill_timeout: 10s
    misfire_grace: 60s
    jitter: 1h30m
    output_limit: 1MiB
    user: root
    group: root
    env: {LANG: C.UTF-8, N: 3}
    workdir: /srv/backup
    timezone: UTC
    enabled: false
    history_keep: 20
  - name: keep
    type: daemon
    command: [/bin/sleep, 1000]
"""


def test_every_field_is_read() -> None:
    t, d = parse(FULL)
    assert t.name == "rotate-logs"
    assert t.schedule is not None and t.schedule.text == "0 */5 * * * *"
    assert t.command == "/usr/local/bin/rotate.sh"
    assert t.type == "cron"
    assert t.ips == (ipaddress.ip_network("10.0.0.5"), ipaddress.ip_network("10.0.1.0/24"),
                     ipaddress.ip_network("2001:db8::/32"))
    assert t.max_instances == 2
    assert t.timeout == 1800
    assert t.kill_timeout == 10
    assert t.misfire_grace == 60
    assert t.jitter == 5400
    assert t.output_limit == 1024 * 1024
    assert (t.user, t.group) == ("root", "root")
    assert t.env == (("LANG", "C.UTF-8"), ("N", "3"))
    assert t.workdir == "/srv/backup"
    assert t.timezone == "UTC"
    assert t.enabled is False
    assert t.history_keep == 20
    assert t.line == 6
    # defaults apply where the task says nothing
    assert d.type == "daemon" and d.schedule is None and d.command == ("/bin/sleep", "1000")
    assert d.timezone == "Europe/Berlin" and d.kill_timeout == 3
    assert d.max_instances == 1 and d.misfire_grace == 60 and d.output_limit == 65536 and d.timeout is None
    assert d.history_keep == 1000


def test_defaults_and_host_zone() -> None:
    text = """\
    version: 1
    tasks:
      - {name: a, schedule: "@daily", command: x}
    """
    (t,) = parse(text, default_timezone="America/New_York")
    assert t.timezone == "America/New_York"
    (t,) = parse(text)
    assert t.timezone == "UTC"


def test_hash_is_of_content() -> None:
    a = parse_config("version: 1\ntasks: []\n", "x")
    b = parse_config("version: 1\ntasks: []\n", "y")
    c = parse_config("version: 1\ntasks: []  # changed\n", "x")
    assert a.digest == b.digest != c.digest
    assert len(a.short_hash) == 12


def test_error_format_and_line() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - name: a
        schedule: "0 0 * * * *"
        command: x
        max_instances: 0
    """)
    assert e.startswith("t.yaml:6:20: task 'a': max_instances: 0 must be 1 or more; ")


def test_all_errors_at_once_sorted_by_line() -> None:
    errs = errors("""\
    version: 1
    tasks:
      - name: a
        schedule: "0 0 * * *"
        command: x
      - name: b
        schedule: "0 0 0 * * *"
        command: x
        timeout: -5
      - name: a
        schedule: "0 0 0 * * *"
        command: x
    """)
    assert [e.split(":")[1] for e in errs] == ["4", "9", "10"]
    assert "six fields" in errs[0] and '"0 0 0 * * *"' in errs[0]
    assert "task 'b': timeout:" in errs[1]
    assert "duplicate task name (first used on line 3)" in errs[2]


@pytest.mark.parametrize(
    ("snippet", "line", "expect"),
    [
        ("timout: 5s", 6, "unknown key in a task; did you mean `timeout`?"),
        ("max_instances: -1", 6, "max_instances: -1 must be 1 or more"),
        ("max_instances: two", 6, "max_instances: expected a whole number"),
        ("max_instances: true", 6, "max_instances: expected a whole number"),
        ("timeout: 0", 6, "timeout: 0 must be greater than 0"),
        ("timeout: soon", 6, "timeout: 'soon' is not a duration"),
        ("kill_timeout: -1s", 6, "kill_timeout:"),
        ("misfire_grace: -3", 6, "misfire_grace: -3 must be 0 or more"),
        ("jitter: 5 minutes", 6, "jitter: '5 minutes' is not a duration"),
        ("output_limit: lots", 6, "output_limit: 'lots' is not a size"),
        ("ips: [10.0.0.300]", 6, "ips: '10.0.0.300' is not an IP address or CIDR network"),
        ("ips: [10.0.1.5/24]", 6, "has host bits set; did you mean 10.0.1.0/24?"),
        ("ips: 10.0.0.1", 6, "ips: expected a list of addresses; write ips: [10.0.0.1]"),
        ("timezone: Europe/Berln", 6, "unknown timezone 'Europe/Berln'; did you mean Europe/Berlin?"),
        ("user: no-such-user-xyz", 6, "user: unknown user 'no-such-user-xyz' on this host"),
        ("group: no-such-group-xyz", 6, "group: unknown group 'no-such-group-xyz' on this host"),
        ("env: [A]", 6, "env: expected a mapping"),
        ("env: {1BAD: x}", 6, "env: '1BAD' is not a valid variable name"),
        ("env: {A: true}", 6, "env: A: value must be a string"),
        ("workdir: relative/dir", 6, "workdir: 'relative/dir' is not an absolute path"),
        ("enabled: maybe", 6, "enabled: expected true or false"),
        ("type: oneshot", 6, "type: 'oneshot' is not a task type"),
    ],
)
def test_field_errors(snippet: str, line: int, expect: str) -> None:
    e = one_error(f"""\
    version: 1
    tasks:
      - name: t1
        schedule: "0 0 * * * *"
        command: /bin/true
        {snippet}
    """)
    assert e.startswith(f"t.yaml:{line}:"), e
    assert "task 't1': " in e
    assert expect in e


def test_unquoted_schedule_gets_quote_hint() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - name: a
        schedule: */5 * * * * *
        command: x
    """)
    assert e.startswith("t.yaml:4:")
    assert "quote the schedule" in e


def test_yaml_syntax_error_keeps_line() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - name: a
        command: [unclosed
        schedule: "0 0 * * * *"
      - name: b
    """)
    assert e.startswith("t.yaml:")
    assert "invalid YAML" in e
    assert int(e.split(":")[1]) >= 4


def test_duplicate_keys_are_errors() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - name: a
        schedule: "0 0 * * * *"
        command: x
        schedule: "0 1 * * * *"
    """)
    assert e.startswith("t.yaml:6:5: task 'a': schedule: duplicate key (first set on line 4)")


def test_missing_fields() -> None:
    errs = errors("""\
    version: 1
    tasks:
      - command: x
        schedule: "@daily"
      - name: nocmd
        schedule: "@daily"
      - name: nosched
        command: x
    """)
    assert errs[0].startswith("t.yaml:3:5: task #1: name: missing")
    assert errs[1].startswith("t.yaml:5:5: task 'nocmd': command: missing")
    assert errs[2].startswith("t.yaml:7:5: task 'nosched': schedule: missing")


def test_command_forms() -> None:
    assert "command: is empty" in one_error('version: 1\ntasks:\n  - {name: a, schedule: "@daily", command: " "}\n')
    assert "command: is an empty list" in one_error(
        'version: 1\ntasks:\n  - {name: a, schedule: "@daily", command: []}\n')
    assert "command: expected a string or a list" in one_error(
        'version: 1\ntasks:\n  - {name: a, schedule: "@daily", command: {a: 1}}\n')
    (t,) = parse('version: 1\ntasks:\n  - {name: a, schedule: "@daily", command: [/bin/echo, 3]}\n')
    assert t.command == ("/bin/echo", "3")


def test_daemon_with_schedule_is_an_error() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - name: d
        type: daemon
        schedule: "@daily"
        command: x
    """)
    assert e.startswith("t.yaml:5:5: task 'd': schedule: a daemon task has no schedule")


def test_bad_names() -> None:
    errs = errors("""\
    version: 1
    tasks:
      - name: "has space"
        schedule: "@daily"
        command: x
      - name: ok
        schedule: "@daily"
        command: x
      - name: ok
        schedule: "@daily"
        command: y
    """)
    assert "t.yaml:3:11: task #1: name: 'has space' is not a valid task name" in errs[0]
    assert errs[1].startswith("t.yaml:9:5: task 'ok': name: duplicate task name (first used on line 6)")


def test_never_firing_schedule() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - {name: feb31, schedule: "0 0 0 31 2 *", command: x}
    """)
    assert e.startswith("t.yaml:3:29: task 'feb31': schedule:")
    assert "never" in e


def test_seven_fields() -> None:
    e = one_error("""\
    version: 1
    tasks:
      - {name: y, schedule: "0 0 0 1 1 * 2027", command: x}
    """)
    assert "year" in e


def test_top_level_errors() -> None:
    assert "version: missing; add `version: 1`" in one_error("tasks: []\n")
    assert "unsupported version 2" in one_error("version: 2\ntasks: []\n")
    assert "unknown key in the file; did you mean `tasks`?" in one_error("version: 1\ntask: []\ntasks: []\n")
    assert "the file is empty" in one_error("")
    assert "must be a mapping" in one_error("- a\n- b\n")
    assert "tasks: must be a list" in one_error("version: 1\ntasks: {a: 1}\n")


def test_defaults_errors() -> None:
    errs = errors("""\
    version: 1
    defaults:
      timezone: Nowhere/City
      command: x
      max_instances: 0
    tasks: []
    """)
    assert errs[0].startswith("t.yaml:3:13: defaults.timezone: unknown timezone")
    assert errs[1].startswith("t.yaml:4:3: command: cannot be set in defaults")
    assert errs[2].startswith("t.yaml:5:18: defaults.max_instances:")


def test_null_tasks_is_an_error_so_a_cut_file_removes_nothing() -> None:
    # A save cut right after `tasks:` used to be read as "zero tasks" and stopped everything.
    assert parse("version: 1\ntasks: []\n") == ()
    for text in ("version: 1\ntasks:\n", "version: 1\ntasks: null\n", "version: 1\ntasks: ~\n"):
        with pytest.raises(ConfigInvalid) as exc:
            parse(text)
        assert str(exc.value).startswith("t.yaml:2:")
        assert "tasks: is empty (null)" in str(exc.value) and "tasks: []" in str(exc.value)


def test_deep_nesting_gives_one_located_line() -> None:
    # ~500 levels used to overflow the walker's recursion: a 999-frame RecursionError from `check`.
    for depth in (500, 990):
        nested = "[" * depth + "]" * depth
        text = f"version: 1\ntasks:\n  - name: a\n    schedule: '@daily'\n    command: {nested}\n"
        with pytest.raises(ConfigInvalid) as exc:
            parse(text)
        (err,) = exc.value.errors
        assert err.line == 5 and err.col > 1 and "nested more than" in err.problem
        assert "\n" not in str(err)


@pytest.mark.parametrize("tagged", [
    "  - !!python/object:os.system {name: a, schedule: '@daily', command: x}",
    "  - {name: a, schedule: '@daily', command: !!python/object/apply:os.system [id]}",
    "  - {name: a, schedule: '@daily', command: !custom x}",
    "  - {name: a, schedule: '@daily', command: x, env: !!set {A}}",
])
def test_yaml_tags_are_refused(tagged: str) -> None:
    # PyYAML's safe loader would silently read a tagged mapping as a plain one.
    with pytest.raises(ConfigInvalid) as exc:
        parse("version: 1\ntasks:\n" + tagged + "\n")
    assert "YAML tag" in str(exc.value) and "is not allowed" in str(exc.value)
    assert str(exc.value).startswith("t.yaml:3:")


def test_merge_keys() -> None:
    tasks = parse("""\
    version: 1
    tasks:
      - &base {name: a, schedule: "@daily", command: x, max_instances: 3}
      - <<: *base
        name: b
    """)
    assert [t.name for t in tasks] == ["a", "b"]
    assert tasks[1].max_instances == 3


def test_account_check_can_be_skipped() -> None:
    text = """\
    version: 1
    tasks:
      - {name: a, schedule: "@daily", command: x, user: no-such-user-xyz}
    """
    (t,) = parse(text, check_accounts=False)
    assert t.user == "no-such-user-xyz"


def test_equality_ignores_line() -> None:
    a = parse('version: 1\ntasks:\n  - {name: a, schedule: "@daily", command: x}\n')[0]
    b = parse('version: 1\n\n\ntasks:\n  - {name: a, schedule: "@daily", command: x}\n')[0]
    assert a == b and a.line != b.line


def test_load_config_reports_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read the task file" in str(info.value)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"version: 1\n\xff\n")
    with pytest.raises(ConfigInvalid) as info:
        load_config(bad)
    assert ":2:1:" in str(info.value) and "UTF-8" in str(info.value)


def test_sample_file_is_valid() -> None:
    cfg = load_config(Path(__file__).parent.parent / "etc" / "tasks.yaml", check_accounts=True)
    assert len(cfg.tasks) >= 8
    assert {t.type for t in cfg.tasks} == {"cron", "daemon"}


def test_compacted_config_is_equal() -> None:
    from gotorch.config import compacted

    path = Path(__file__).parent.parent / "etc" / "tasks.yaml"
    original = load_config(path)
    again = compacted(lambda: load_config(path))
    assert again == original and again.tasks == original.tasks
    assert [t.line for t in again.tasks] == [t.line for t in original.tasks]


def test_alias_bomb_is_refused_quickly() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        levels.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = ("version: 1\nbomb:\n" + "\n".join("  " + x for x in levels)
            + '\ntasks:\n  - {name: a, schedule: "@daily", command: *a8}\n')
    errs = errors(text)
    assert any("expands to more than" in e for e in errs), errs


def test_max_instances_has_an_upper_bound() -> None:
    # A 400-digit max_instances on a daemon task would try to start that many copies.
    for value in ("1001", "9" * 400):
        with pytest.raises(ConfigInvalid) as exc:
            parse(f"version: 1\ntasks:\n  - {{name: a, type: daemon, command: x, max_instances: {value}}}\n")
        assert "max_instances: " in str(exc.value) and "use at most 1,000" in str(exc.value)
    (t,) = parse("version: 1\ntasks:\n  - {name: a, type: daemon, command: x, max_instances: 1000}\n")
    assert t.max_instances == 1000


@pytest.mark.parametrize("field", [
    "env: {? [a, b] : c}",  # a list as a key: unhashable
    "max_instances: " + "9" * 5000,  # beyond Python's int-from-string limit
    "env: *m1199",  # a 1,200-deep chain of merge keys: PyYAML flattens it recursively
])
def test_yaml_corners_are_errors_not_crashes(field: str) -> None:
    chain = "x-merges:\n  - &m0 {A: b}\n" + "".join(f"  - &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 1200))
    head = f"version: 1\n{chain if 'm1199' in field else ''}"
    text = f"{head}tasks:\n  - {{name: a, schedule: '@daily', command: x, {field}}}\n"
    with pytest.raises(ConfigInvalid) as exc:
        parse(text)
    assert "Traceback" not in str(exc.value)


# --- history_keep ------------------------------------------------------------------------------------


def test_history_keep_comes_from_the_task_then_defaults_then_1000() -> None:
    own, defaulted = parse("""\
    version: 1
    defaults:
      history_keep: 50
    tasks:
      - {name: a, schedule: "@daily", command: x, history_keep: 7}
      - {name: b, schedule: "@daily", command: x}
    """)
    assert (own.history_keep, defaulted.history_keep) == (7, 50)
    (plain,) = parse('version: 1\ntasks:\n  - {name: a, schedule: "@daily", command: x}\n')
    assert plain.history_keep == 1000


@pytest.mark.parametrize(
    ("value", "problem", "hint"),
    [
        ("0", "history_keep: 0 must be 1 or more", "--no-history"),
        ("-5", "history_keep: -5 must be 1 or more", "--no-history"),
        ("lots", "history_keep: expected a whole number of rows, got a string 'lots'", "history_keep: 1000"),
        ("true", "history_keep: expected a whole number of rows, got a boolean True", "history_keep: 1000"),
        ("1.5", "history_keep: expected a whole number of rows, got a number 1.5", "history_keep: 1000"),
        ("100000001", "history_keep: 100000001 is more than 100,000,000", "use at most 100,000,000"),
        ("9" * 400, "is more than 100,000,000", "use at most 100,000,000"),
    ],
)
def test_bad_history_keep_is_located_with_a_fix(value: str, problem: str, hint: str) -> None:
    e = one_error(f"""\
    version: 1
    tasks:
      - name: t1
        schedule: "0 0 * * * *"
        command: /bin/true
        history_keep: {value}
    """)
    assert e.startswith("t.yaml:6:19: task 't1': "), e
    assert problem in e and hint in e.split("; ", 1)[1]


def test_bad_history_keep_in_defaults_is_located() -> None:
    e = one_error('version: 1\ndefaults:\n  history_keep: 0\ntasks: []\n')
    assert e.startswith("t.yaml:3:17: defaults.history_keep: 0 must be 1 or more; "), e


def test_a_new_history_keep_makes_the_task_changed_for_a_reload() -> None:
    # A definition change like any other: the plan lists it under `changed` (what the scheduler then
    # does with a changed task is its business, see scheduler._apply_part).
    text = 'version: 1\ntasks:\n  - {{name: a, type: daemon, command: x{extra}}}\n'
    (before,) = parse(text.format(extra=""))
    (after,) = parse(text.format(extra=", history_keep: 10"))
    (same,) = parse(text.format(extra=", history_keep: 1000"))
    assert diff({"a": before}, {"a": after}).changed == ("a",)
    assert diff({"a": before}, {"a": same}).unchanged == ("a",)
