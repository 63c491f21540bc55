"""Hypothesis strategies for broken task files, for the reload fuzz test (tests/test_reload_fuzz.py).

`VALID` is the task file the fuzzed daemons run. Every strategy here draws a `Candidate`: bytes
derived from it (mutations, truncations, wrong types, unknown keys, bad cron expressions, invalid
UTF-8, deep nesting, alias bombs, YAML tags) or unrelated junk. Whether a candidate is really
invalid is decided by the test, with torch's own validator (a mutation may well stay valid).

`SPECIALS` are what no byte string can express: things put in the file's place (a directory, a
FIFO, symlinks that lead nowhere good, a file nobody may trust) and files too big for a strategy
(50 MB, just under the 10 MiB limit). The test interleaves them at fixed positions, so there are
always a few of each and never too many of the slow ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import strategies as st

# Where the sentinel writes: each daemon's own file, substituted when a candidate is materialised.
OUT = "@@SENTINEL_OUT@@"
# Each daemon's own suffix for its tasks' names: a torch daemon starting adopts the running processes
# of any task of its config's name that carry a run key, even another daemon's (with another state
# directory): two daemons of one test, or two runs of it, would take each other's `keeper`.
ME = "@@DAEMON@@"

# The running config: a 1/s sentinel, and a few tasks that exercise most fields (so that mutations hit
# many validators). `keeper` is a daemon-type task: a reload that wrongly changed anything would
# restart it. No file fuzzed here may ever replace this config.
VALID = f"""\
version: 1
defaults:
  timezone: UTC
  kill_timeout: 5s
tasks:
  - name: sentinel-{ME}
    schedule: "* * * * * *"
    command: echo "$TORCH_SCHEDULED_AT" >> {OUT}
  - name: hourly-report
    schedule: "0 0 * * * *"
    command: [/bin/true, --report]
    timeout: 30m
    max_instances: 2
    env: {{LANG: C.UTF-8, MODE: fuzz}}
    misfire_grace: 60s
    jitter: 0s
    output_limit: 64KiB
  - name: yearly
    schedule: "@yearly"
    command: "true"
    ips: [127.0.0.1, 10.0.0.0/8]
    workdir: /
    enabled: true
    retries: 2
    retry_on: [failed, timeout]
    history_keep: 50
  - name: keeper-{ME}
    type: daemon
    command: [sleep, "100000"]
"""

VALID_LINES = VALID.splitlines(keepends=True)
# Lines of the form `    key: value` inside a task, by index into VALID_LINES.
FIELD_LINES = [i for i, line in enumerate(VALID_LINES) if re.match(r"    [a-z_]+: ", line)]
TASK_KEYS = ("name", "schedule", "command", "type", "ips", "max_instances", "timeout", "kill_timeout",
             "misfire_grace", "jitter", "output_limit", "user", "group", "env", "workdir", "timezone", "enabled",
             "history_keep", "retries", "retry_backoff", "retry_on", "on_failure", "on_recovery",
             "failure_threshold", "warn_after", "hook_timeout")

# A tag that would run a command if anything constructed it: the test checks the marker never appears.
PWNED = "@@PWNED@@"


@dataclass(frozen=True)
class Candidate:
    """A drawn file: what produced it and its bytes (OUT still a placeholder)."""

    kind: str
    data: bytes

    def materialise(self, out: str, pwned: str, me: str) -> bytes:
        return materialise(self.data, out, pwned, me)


def materialise(data: bytes, out: str, pwned: str, me: str) -> bytes:
    """`data` with the placeholders filled in for one daemon."""
    return data.replace(OUT.encode(), out.encode()).replace(PWNED.encode(), pwned.encode()).replace(
        ME.encode(), me.encode())


def _valid_bytes() -> bytes:
    return VALID.encode()


# --- values that are wrong for some field ----------------------------------------------------------

BAD_SCALARS = [
    "[]", "{}", "true", "false", "null", "~", "''", '""', "1.5", "-1", "0", ".nan", ".inf", "-.inf", ".NaN",
    "99999999999999999999999999", "1e400", "0x10", "0o17", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
    "[a, [b]]", "{a: {b: c}}", "[1, 2, 3]", "yes", "'x'", "'   '", "5 minutes", "-5s", "10XiB", "NaN",
    "'* * * * *'", "'* * * * * * *'", "'61 * * * * *'", "'0 0 0 31 2 *'", "'@every 0s'", "'@every -1s'",
    "'@weekly 1'", "'0 0 0 * * 8'", "'0 0 0 0 * *'", "'*/0 * * * * *'", "'5-1 * * * * *'", "'L L * * * *'",
    "Europe/Nowhere", "not/absolute", "'has space'", "[10.0.0.1/8]", "['::1/129']", "[256.0.0.1]",
    "10.0.0.1", "{1: 2}", "{'bad name': x}", "[failed, exploded]", "nonexistent-user-xyz", "1001",
    "'" + "a" * 65 + "'", "cronjob", "2000", "100000001", "101",
]

_cron_token = st.one_of(
    st.sampled_from(["*", "?", "L", "W", "LW", "#", "/", "-", ",", "*/", "L-3", "15W", "5#6", "0#1", "FOO",
                     "JAN-DEC", "MON-SUN", "SAT-MON", "60", "24", "32", "13", "8", "-1", "0-99", "1/0"]),
    st.integers(-5, 100).map(str),
    st.text(alphabet="0123456789*/,-#LW?", min_size=1, max_size=6),
)


@st.composite
def bad_schedule(draw: st.DrawFn) -> str:
    """A cron-ish expression, often with the wrong number of fields or values out of range."""
    n = draw(st.sampled_from([0, 1, 4, 5, 6, 6, 6, 7, 8]))
    fields = [draw(_cron_token) for _ in range(n)]
    if draw(st.booleans()):
        return draw(st.sampled_from(["@yearly", "@every", "@every 1.5", "@reboot", "@often", "@", "@every 101y"]))
    return " ".join(fields)


def _set_line(index: int, key: str, value: str) -> bytes:
    lines = list(VALID_LINES)
    indent = re.match(r"\s*", lines[index]).group(0)  # type: ignore[union-attr]
    lines[index] = f"{indent}{key}: {value}\n"
    return "".join(lines).encode()


# --- strategies ------------------------------------------------------------------------------------


@st.composite
def byte_mutations(draw: st.DrawFn) -> Candidate:
    """Flip, overwrite, insert or delete a few bytes of the valid file."""
    data = bytearray(_valid_bytes())
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from(b":-[]{}\"'#&*!|>%@` \t\n\r\x00\x7f\xff"))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:pos + draw(st.integers(1, 16))]
    return Candidate("bytes", bytes(data))


@st.composite
def line_mutations(draw: st.DrawFn) -> Candidate:
    """Delete, duplicate, swap or re-indent lines of the valid file."""
    lines = list(VALID_LINES)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "dedent"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "indent":
            lines[i] = " " * draw(st.integers(1, 5)) + lines[i]
        else:
            lines[i] = lines[i].lstrip(" ")
    return Candidate("lines", "".join(lines).encode())


@st.composite
def wrong_types(draw: st.DrawFn) -> Candidate:
    """One field of one task (or of defaults) set to a value of the wrong type or out of range."""
    index = draw(st.sampled_from(FIELD_LINES))
    key = draw(st.one_of(st.just(VALID_LINES[index].split(":")[0].strip()), st.sampled_from(TASK_KEYS)))
    value = draw(st.one_of(st.sampled_from(BAD_SCALARS), st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30).map(repr)))
    return Candidate("wrong-type", _set_line(index, key, value))


@st.composite
def unknown_keys(draw: st.DrawFn) -> Candidate:
    """A key torch does not know, in a task, in defaults or at the top."""
    key = draw(st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True).filter(
        lambda k: k not in TASK_KEYS and k not in ("version", "defaults", "tasks")))
    where = draw(st.sampled_from(["task", "defaults", "top"]))
    lines = list(VALID_LINES)
    if where == "top":
        lines.insert(1, f"{key}: 1\n")
    elif where == "defaults":
        lines.insert(3, f"  {key}: 1\n")
    else:
        lines.insert(draw(st.sampled_from(FIELD_LINES)), f"    {key}: x\n")
    return Candidate("unknown-key", "".join(lines).encode())


@st.composite
def bad_schedules(draw: st.DrawFn) -> Candidate:
    """The sentinel's (or another task's) schedule replaced by a drawn cron-ish expression."""
    index = draw(st.sampled_from([i for i in FIELD_LINES if "schedule:" in VALID_LINES[i]]))
    expr = draw(bad_schedule())
    quoted = draw(st.booleans())
    return Candidate("bad-cron", _set_line(index, "schedule", f'"{expr}"' if quoted else expr))


@st.composite
def truncations(draw: st.DrawFn) -> Candidate:
    """The valid file cut off at any byte."""
    data = _valid_bytes()
    return Candidate("truncated", data[:draw(st.integers(0, len(data) - 1))])


@st.composite
def junk(draw: st.DrawFn) -> Candidate:
    """Random bytes, random text, or the valid file with junk appended."""
    how = draw(st.sampled_from(["binary", "text", "appended", "nul"]))
    if how == "binary":
        return Candidate("junk-binary", draw(st.binary(min_size=0, max_size=4096)))
    if how == "text":
        return Candidate("junk-text", draw(st.text(max_size=1000)).encode("utf-8", "surrogatepass"))
    if how == "nul":
        return Candidate("junk-nul", b"\0" * draw(st.integers(1, 4096)))
    tail = draw(st.one_of(st.binary(min_size=1, max_size=256), st.text(min_size=1, max_size=256).map(
        lambda t: t.encode("utf-8", "surrogatepass"))))
    return Candidate("junk-appended", _valid_bytes() + tail)


INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xe2\x82\x28", b"\xf0\x28\x8c\xbc",
                b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\xa1\xa1\xa1\xa1", b"\xf4\x90\x80\x80", b"\x80", b"\xef\xbf"]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Candidate:
    """The valid file with a byte sequence that is not UTF-8 (lone, overlong, surrogate, cut short)."""
    data = _valid_bytes()
    pos = draw(st.integers(0, len(data)))
    return Candidate("bad-utf8", data[:pos] + draw(st.sampled_from(INVALID_UTF8)) + data[pos:])


def _put_value(value: str, where: str) -> bytes:
    """The valid file with `value` (a YAML flow value, may span lines) as the sentinel's command, etc."""
    if where == "command":
        return VALID.replace(f'command: echo "$TORCH_SCHEDULED_AT" >> {OUT}', f"command: {value}", 1).encode()
    if where == "env":
        return VALID.replace("env: {LANG: C.UTF-8, MODE: fuzz}", f"env: {{LANG: C.UTF-8, MODE: {value}}}", 1).encode()
    if where == "defaults":
        return VALID.replace("  kill_timeout: 5s\n", f"  kill_timeout: {value}\n", 1).encode()
    if where == "tasks":
        return VALID.replace("tasks:\n", f"tasks:\n  - {value}\n", 1).encode()
    return (VALID + f"extra: {value}\n").encode()


_PLACES = st.sampled_from(["command", "env", "defaults", "tasks", "top"])


@st.composite
def deep_nesting(draw: st.DrawFn) -> Candidate:
    """Lists or mappings nested deeper than torch's 64 levels (up to past libyaml's own limit)."""
    depth = draw(st.one_of(st.integers(65, 200), st.integers(900, 1100), st.integers(2000, 20000)))
    style = draw(st.sampled_from(["flow-list", "flow-map", "mixed"]))
    if style == "flow-list":
        value = "[" * depth + "x" + "]" * depth
    elif style == "flow-map":
        value = "{a: " * depth + "x" + "}" * depth
    else:
        value = "[{a: " * (depth // 2) + "x" + "}]" * (depth // 2)
    return Candidate("deep-nesting", _put_value(value, draw(_PLACES)))


@st.composite
def block_nesting(draw: st.DrawFn) -> Candidate:
    """Block-style nesting (indentation), which libyaml does not limit."""
    depth = draw(st.integers(65, 400))
    body = "".join(" " * (6 + 2 * i) + "- \n" for i in range(depth - 1)) + " " * (6 + 2 * depth) + "- x\n"
    text = VALID.replace(f'command: echo "$TORCH_SCHEDULED_AT" >> {OUT}\n', "command:\n" + body, 1)
    return Candidate("deep-block", text.encode())


@st.composite
def alias_bombs(draw: st.DrawFn) -> Candidate:
    """Billion laughs: each level an alias list of the one before (width ** levels values)."""
    levels = draw(st.integers(2, 12))
    width = draw(st.integers(2, 12))
    anchors = ["a0: &a0 [lol, lol]"]
    for i in range(1, levels):
        anchors.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    where = draw(st.sampled_from(["command", "env-value", "defaults", "merge", "top"]))
    head = "version: 1\nbombs:\n" + "".join(f"  {a}\n" for a in anchors)
    last = f"*a{levels - 1}"
    body = VALID.replace("version: 1\n", "", 1)
    if where == "command":
        body = body.replace(f'command: echo "$TORCH_SCHEDULED_AT" >> {OUT}', f"command: {last}", 1)
    elif where == "env-value":
        body = body.replace("MODE: fuzz", f"MODE: {last}", 1)
    elif where == "defaults":
        body = body.replace("  kill_timeout: 5s\n", f"  env: {{X: {last}}}\n", 1)
    elif where == "merge":
        body = body.replace(f"  - name: keeper-{ME}\n", f"  - <<: {{x: {last}}}\n    name: keeper-{ME}\n", 1)
    return Candidate(f"alias-bomb-{where}", (head + body).encode())


TAGS = ["!!python/object/apply:os.system ['touch " + PWNED + "']",
        "!!python/object/apply:subprocess.check_output [[touch, " + PWNED + "]]",
        "!!python/name:os.system", "!!python/object:builtins.object {}", "!!python/tuple [a, b]",
        "!!python/module:os", "!custom x", "!<tag:example.com,2000:app/foo> x", "!!set {a, b}", "!!omap [a: 1]",
        "!!pairs [a: 1]", "!!binary aGVsbG8=", "!!str", "!!int x", "!!float x", "!!bool maybe", "!!null x",
        "!!timestamp x", "!local {a: 1}", "! nonspecific"]


@st.composite
def yaml_tags(draw: st.DrawFn) -> Candidate:
    """A YAML tag torch must refuse (or a standard tag on a value it cannot be), anywhere."""
    return Candidate("tag", _put_value(draw(st.sampled_from(TAGS)), draw(_PLACES)))


@st.composite
def yaml_oddities(draw: st.DrawFn) -> Candidate:
    """Corners of YAML: documents, directives, complex keys, anchors on keys, duplicate keys and names."""
    odd = draw(st.sampled_from([
        VALID + "---\nversion: 1\ntasks: []\n",
        "%YAML 1.1\n---\n" + VALID + "...\n--- {}\n",
        "%TAG ! tag:yaml.org,2002:python/\n---\n" + VALID.replace("  - name: keeper", "  - !object:os.system x\n"
                                                                 "  - name: keeper", 1),
        VALID.replace("    schedule: \"@yearly\"\n", "    ? [complex, key]\n    : 1\n", 1),
        VALID.replace(f"  - name: keeper-{ME}\n", f"  - name: sentinel-{ME}\n", 1),
        VALID.replace("    jitter: 0s\n", "    jitter: 0s\n    jitter: 1s\n", 1),
        VALID.replace("version: 1", "version: 2", 1),
        VALID.replace("version: 1", "version: '1'", 1),
        VALID.replace("version: 1", "version: true", 1),
        VALID.replace("version: 1\n", "", 1),
        "version: 1\ntasks:\n",
        "version: 1\ntasks:\n# cut here\n",
        "version: 1\ntasks: {}\n",
        "version: 1\ntasks: x\n",
        "[" + VALID + "]",
        "- " + VALID.replace("\n", "\n  "),
        "version: 1\ntasks: &t\n  - *t\n",
        "version: 1\ntasks:\n  - &x {<<: *x}\n",
        "version: 1\ntasks:\n  - " + "{<<: " * 1200 + "{a: b}" + "}" * 1200 + "\n",
        "version: 1\ntasks:\n  - name: n\n    schedule: '@yearly'\n    command: x\n    max_instances: "
        + "9" * 5000 + "\n",
        VALID.replace("\n", "\r"),
        VALID.replace("  ", "\t"),
        "\ufeff\ufeff" + VALID,
        VALID.replace("version: 1", "version: 1\n" + "#" * 100_000, 1),
    ]))
    return Candidate("yaml-oddity", odd.encode("utf-8", "surrogatepass"))


# Kinds whose every file is invalid whatever was drawn (each alias bomb sits under an unknown top-level
# key, `bombs:`, and is also walked where it is placed): no need to check each one when it is drawn.
INVALID_BY_CONSTRUCTION = frozenset({"alias-bomb"})

STRATEGIES: dict[str, st.SearchStrategy[Candidate]] = {
    "bytes": byte_mutations(), "lines": line_mutations(), "wrong-type": wrong_types(),
    "unknown-key": unknown_keys(), "bad-cron": bad_schedules(), "truncated": truncations(), "junk": junk(),
    "bad-utf8": invalid_utf8(), "deep-nesting": deep_nesting(), "deep-block": block_nesting(),
    "alias-bomb": alias_bombs(), "tag": yaml_tags(), "yaml-oddity": yaml_oddities(),
}


# --- what no strategy draws: things put in the file's place, and big files ---------------------------

SPECIALS = ("directory", "fifo", "missing", "symlink-loop", "symlink-dev-zero", "symlink-dangling",
            "world-writable", "group-writable", "not-root-owned", "socket", "big-50MB", "big-9MiB",
            "billion-laughs")
