"""The hold model (gotorch.pauses) with fixed times, and STATE/pauses.json on the real filesystem."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gotorch import pauses
from gotorch.pauses import Hold, PauseFileError, PauseStore

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ROOT = os.geteuid() == 0
OTHER = 4242  # a uid that is not ours


def test_pause_holds_from_now_until_now_plus_for_with_reason_and_who() -> None:
    holds = pauses.pause({}, ["backup"], now=T0 + 0.25, duration=3600, reason="disk full", by="root (uid 0)")
    assert holds == {"backup": Hold(T0, T0 + 3601, "disk full", "root (uid 0)")}


def test_until_is_rounded_up_to_a_whole_second_so_a_hold_never_ends_early() -> None:
    holds = pauses.pause({}, ["t"], now=T0, duration=3, reason=None, by="u")
    assert holds["t"].until == T0 + 3
    assert pauses.pause({}, ["t"], now=T0 + 0.1, duration=2.5, reason=None, by="u")["t"].until == T0 + 3


def test_pause_without_for_holds_until_resumed() -> None:
    h = pauses.pause({}, ["t"], now=T0, duration=None, reason=None, by="u")["t"]
    assert h.until is None and h.active_at(T0 + 10 * 365 * 86400)


def test_pause_leaves_the_given_mapping_alone_and_other_tasks_held() -> None:
    before = {"other": Hold(T0 - 5, None, None, "u")}
    after = pauses.pause(before, ["t"], now=T0, duration=None, reason=None, by="u")
    assert set(before) == {"other"} and set(after) == {"other", "t"}


def test_pausing_again_sets_the_new_until_and_reason_but_keeps_since() -> None:
    first = pauses.pause({}, ["t"], now=T0, duration=60, reason="first", by="alice (uid 1000)")
    again = pauses.pause(first, ["t"], now=T0 + 30, duration=None, reason="second", by="root (uid 0)")
    assert again["t"] == Hold(T0, None, "second", "root (uid 0)")


def test_pausing_again_without_a_reason_keeps_the_old_one() -> None:
    first = pauses.pause({}, ["t"], now=T0, duration=None, reason="disk full", by="u")
    again = pauses.pause(first, ["t"], now=T0 + 5, duration=600, reason=None, by="u")
    assert again["t"].reason == "disk full" and again["t"].until == T0 + 605


def test_pausing_after_a_hold_expired_starts_a_new_since() -> None:
    old = pauses.pause({}, ["t"], now=T0, duration=10, reason=None, by="u")
    new = pauses.pause(old, ["t"], now=T0 + 20, duration=None, reason=None, by="u")
    assert new["t"].since == T0 + 20


def test_a_hold_is_in_force_up_to_its_until_and_the_fire_at_until_runs() -> None:
    h = Hold(T0, T0 + 3, None, "u")
    assert h.active_at(T0) and h.active_at(T0 + 2.999)
    assert not h.active_at(T0 + 3) and not h.active_at(T0 + 4)


def test_resume_drops_the_holds_and_tells_which_names_were_not_paused() -> None:
    holds = {"a": Hold(T0, None, None, "u"), "b": Hold(T0, T0 + 9, None, "u")}
    after, resumed, not_paused = pauses.resume(holds, ["a", "nope"])
    assert after == {"b": holds["b"]} and resumed == ["a"] and not_paused == ["nope"]
    assert set(holds) == {"a", "b"}  # the input is not changed


def test_split_expired_keeps_holds_in_force_and_names_those_past_their_until() -> None:
    holds = {"open": Hold(T0, None, None, "u"), "done": Hold(T0, T0 + 10, None, "u"),
             "later": Hold(T0, T0 + 100, None, "u")}
    kept, expired = pauses.split_expired(holds, T0 + 10)
    assert set(kept) == {"open", "later"} and expired == ["done"]


def test_describe_says_who_until_when_and_why() -> None:
    assert Hold(T0, T0 + 3600, "disk full", "root (uid 0)").describe() == \
        "paused by root (uid 0) until 2026-01-01T01:00:00Z: disk full"
    assert Hold(T0, None, None, "root (uid 0)").describe() == "paused by root (uid 0) until resumed"


def test_repeated_names_count_once() -> None:
    assert pauses.unique(["b", "a", "b"]) == ["b", "a"]


@pytest.mark.parametrize(("reason", "problem"), [
    ("", "empty"), ("   ", "empty"), ("x" * (pauses.MAX_REASON + 1), "longer"),
    ("two\nlines", "one line"), ("\x1b[31mred", "one line"), ("bidi \u202e", "one line"), (5, "text")])
def test_a_reason_must_be_one_short_printable_line(reason: object, problem: str) -> None:
    found = pauses.reason_problem(reason)
    assert found is not None and problem in found
    assert pauses.reason_problem("disk full, see INC-42 — ünïcode ok") is None


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf"), True, "3", 10**12])
def test_a_for_must_be_a_positive_bounded_number_of_seconds(seconds: object) -> None:
    assert pauses.duration_problem(seconds) is not None
    assert pauses.duration_problem(3) is None and pauses.duration_problem(0.5) is None


def test_encode_then_decode_gives_the_same_holds() -> None:
    holds = {"b": Hold(T0, T0 + 60, "disk full", "root (uid 0)"), "a": Hold(T0 + 1, None, None, "uid 1234")}
    data = pauses.encode(holds)
    assert pauses.decode(data) == holds
    assert list(json.loads(data)) == ["a", "b"]
    assert json.loads(data)["b"] == {"since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:01:00Z",
                                     "reason": "disk full", "by": "root (uid 0)"}


@pytest.mark.parametrize(("data", "problem"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b"[]", "expected one JSON object"),
    (b'{"t": 5}', "task t: a hold must be an object"),
    (b'{"t": {"until": null, "reason": null, "by": "u"}}', "since"),
    (b'{"t": {"since": "yesterday", "until": null, "reason": null, "by": "u"}}', "since"),
    (b'{"t": {"since": "2026-01-01T00:00:00Z", "until": 5, "reason": null, "by": "u"}}', "until"),
    (b'{"t": {"since": "2026-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z", "reason": null, "by": "u"}}',
     "until: must be after since"),
    (b'{"t": {"since": "2026-01-01T00:00:00Z", "until": null, "reason": "a\\u001b[2J", "by": "u"}}', "reason"),
    (b'{"t": {"since": "2026-01-01T00:00:00Z", "until": null, "reason": null}}', "by"),
    (b'{"": {"since": "2026-01-01T00:00:00Z", "until": null, "reason": null, "by": "u"}}', "not a task name"),
])
def test_decode_refuses_what_is_not_a_pause_file_and_says_why(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        pauses.decode(data)


# --- the file ---------------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o750)
    d.chmod(0o750)
    return d


HOLDS = {"backup": Hold(T0, T0 + 60, "disk full", "root (uid 0)")}


def test_save_writes_the_file_0640_and_load_reads_it_back(state: Path) -> None:
    old = os.umask(0o000)  # the mode must not depend on the umask
    try:
        pauses.save(state, pauses.encode(HOLDS))
    finally:
        os.umask(old)
    st = os.stat(state / "pauses.json")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == os.geteuid()
    assert pauses.load(state) == HOLDS
    assert os.listdir(state) == ["pauses.json"]  # no temp file left behind


def test_save_replaces_the_file_as_a_whole(state: Path) -> None:
    pauses.save(state, pauses.encode(HOLDS))
    pauses.save(state, pauses.encode({}))
    assert pauses.load(state) == {}


def test_a_missing_file_is_no_pauses(state: Path) -> None:
    assert pauses.load(state) == {}


def test_load_refuses_a_symlink_in_the_files_place(state: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_bytes(pauses.encode(HOLDS))
    (state / "pauses.json").symlink_to(target)
    with pytest.raises(PauseFileError, match="is a symlink"):
        pauses.load(state)


def test_save_replaces_a_planted_symlink_and_never_writes_through_it(state: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (state / "pauses.json").symlink_to(victim)
    pauses.save(state, pauses.encode(HOLDS))
    assert victim.read_text() == "precious"
    assert not (state / "pauses.json").is_symlink() and pauses.load(state) == HOLDS


@pytest.mark.parametrize(("mode", "words"), [(0o660, "writable by group or others"),
                                             (0o646, "writable by group or others")])
def test_load_refuses_a_file_group_or_others_can_write(state: Path, mode: int, words: str) -> None:
    pauses.save(state, pauses.encode(HOLDS))
    (state / "pauses.json").chmod(mode)
    with pytest.raises(PauseFileError, match=words):
        pauses.load(state)


def test_load_refuses_a_hard_linked_file(state: Path, tmp_path: Path) -> None:
    pauses.save(state, pauses.encode(HOLDS))
    os.link(state / "pauses.json", tmp_path / "second-name")
    with pytest.raises(PauseFileError, match="hard links"):
        pauses.load(state)


def test_load_refuses_a_fifo_without_blocking(state: Path) -> None:
    os.mkfifo(state / "pauses.json", 0o600)
    with pytest.raises(PauseFileError, match="a FIFO, not a regular file"):
        pauses.load(state)


@pytest.mark.skipif(not ROOT, reason="a file of another uid needs root to chown")
def test_load_refuses_a_file_owned_by_another_user(state: Path) -> None:
    pauses.save(state, pauses.encode(HOLDS))
    os.chown(state / "pauses.json", OTHER, -1)
    with pytest.raises(PauseFileError, match=f"owned by uid {OTHER}"):
        pauses.load(state)


def test_load_and_save_refuse_a_state_directory_others_can_write(state: Path) -> None:
    state.chmod(0o770)
    with pytest.raises(PauseFileError, match="group-writable"):
        pauses.load(state)
    with pytest.raises(PauseFileError, match="group-writable"):
        pauses.save(state, pauses.encode(HOLDS))


def test_a_corrupt_file_is_refused_naming_the_file_and_the_fix(state: Path) -> None:
    (state / "pauses.json").write_bytes(b'{"backup": {"since": "soon"')
    (state / "pauses.json").chmod(0o640)
    with pytest.raises(PauseFileError, match=r"pauses\.json: not valid JSON.*remove it"):
        pauses.load(state)


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(state: Path) -> None:
    pauses.save(state, pauses.encode(HOLDS))
    (state / "pauses.json").unlink()
    (state / "pauses.json").mkdir()  # rename onto a directory fails
    with pytest.raises(PauseFileError):
        pauses.save(state, pauses.encode({}))
    assert sorted(os.listdir(state)) == ["pauses.json"]


def test_the_store_writes_saves_in_the_order_asked(state: Path) -> None:
    store = PauseStore(state)
    futures = [store.save(pauses.encode({f"t{i}": Hold(T0, None, None, "u")})) for i in range(50)]
    store.close()
    assert all(f.exception() is None for f in futures)
    assert store.load() == {"t49": Hold(T0, None, None, "u")}
