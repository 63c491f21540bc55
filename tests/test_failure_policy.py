"""Pure failure policies (gotorch.policy): retry backoff, which runs are retried, alert streaks; and their fields."""

from __future__ import annotations

import pytest

from gotorch.config import ConfigInvalid, parse_config
from gotorch.policy import RETRY_BACKOFF_MAX, FailureStreak, retry_delay, will_retry


def task(extra: str = "", **kw: str) -> object:
    text = ("version: 1\ntasks:\n  - {name: t, schedule: \"@daily\", command: x"
            + "".join(f", {k}: {v}" for k, v in kw.items()) + "}\n" + extra)
    return parse_config(text, "t.yaml").tasks[0]


def test_retry_backoff_doubles_from_the_first_delay_and_stops_at_an_hour() -> None:
    assert [retry_delay(10, a) for a in range(1, 6)] == [10, 20, 40, 80, 160]
    assert retry_delay(10, 30) == RETRY_BACKOFF_MAX == 3600
    assert retry_delay(3000, 2) == 3600


def test_attempts_one_to_n_plus_one_for_the_statuses_retried() -> None:
    t = task(retries="2")
    assert [will_retry(t, "schedule", "failed", a) for a in (1, 2, 3)] == [True, True, False]  # type: ignore[arg-type]
    assert will_retry(t, "retry", "timeout", 2)  # type: ignore[arg-type]
    assert not will_retry(t, "schedule", "killed", 1)  # type: ignore[arg-type]  # stopped on request
    assert not will_retry(t, "schedule", "spawn_failed", 1)  # type: ignore[arg-type]  # not in the default retry_on
    assert not will_retry(t, "manual", "failed", 1)  # type: ignore[arg-type]  # whoever ran it is watching
    assert not will_retry(t, "hook", "failed", 1)  # type: ignore[arg-type]
    assert not will_retry(task(), "schedule", "failed", 1)  # type: ignore[arg-type]  # retries: 0
    t = task(retries="1", retry_on="[spawn_failed]")
    assert will_retry(t, "schedule", "spawn_failed", 1) and not will_retry(t, "schedule", "failed", 1)  # type: ignore[arg-type]


def test_an_alert_once_at_the_threshold_and_a_recovery_only_after_an_alert() -> None:
    s = FailureStreak()
    assert [s.failed(3) for _ in range(5)] == [False, False, True, False, False]
    assert s.count == 5 and s.succeeded() and s.count == 0
    assert not s.succeeded()  # nothing to recover from
    s.failed(3)
    assert not s.succeeded()  # below the threshold: no alert was raised, so no recovery either


def test_failure_fields_come_from_the_task_or_defaults() -> None:
    text = """\
version: 1
defaults: {retries: 2, retry_backoff: 30s, on_failure: "mail -s fail ops", failure_threshold: 3}
tasks:
  - {name: a, schedule: "@daily", command: x}
  - {name: b, schedule: "@daily", command: x, retries: 0, on_recovery: [/bin/echo, ok], warn_after: 1h,
     hook_timeout: 5s, retry_on: [failed]}
"""
    a, b = parse_config(text, "t.yaml").tasks
    assert (a.retries, a.retry_backoff, a.on_failure, a.failure_threshold) == (2, 30.0, "mail -s fail ops", 3)
    assert (a.retry_on, a.warn_after, a.hook_timeout, a.on_recovery) == (("failed", "timeout"), None, 60.0, None)
    assert (b.retries, b.on_recovery, b.warn_after, b.hook_timeout, b.retry_on) == (
        0, ("/bin/echo", "ok"), 3600.0, 5.0, ("failed",))


@pytest.mark.parametrize("field, value, words", [
    ("retries", "-1", "not between 0 and 100"),
    ("retries", "yes", "expected a whole number"),
    ("retry_backoff", "0s", "must be greater than 0"),
    ("retry_on", "[failed, killed]", "'killed' is not a status a retry can follow"),
    ("failure_threshold", "0", "not between 1"),
    ("on_failure", '""', "is empty"),
    ("warn_after", "soon", ""),
    ("hook_timeout", "0", "greater than 0"),
])
def test_bad_failure_fields_are_located_with_a_fix(field: str, value: str, words: str) -> None:
    with pytest.raises(ConfigInvalid) as exc:
        parse_config(f'version: 1\ntasks:\n  - {{name: t, schedule: "@daily", command: x, {field}: {value}}}\n',
                     "t.yaml")
    (err,) = exc.value.errors
    assert err.line == 3 and err.field == field and words in err.problem and err.hint
