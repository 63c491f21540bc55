"""NaN, infinity and absurdly large numbers never get past validation: each is a located error.

YAML spells them `.nan`, `.inf` and `-.inf` (floats), and they can also arrive as strings ("nan",
"1e400") or as numbers too large for a float. Before they were rejected, `timeout: .nan` killed
every run at once, `jitter: .inf` stopped a task for good and `torch list` crashed.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from gotorch.cli import cli
from gotorch.config import ConfigInvalid, parse_config
from gotorch.durations import MAX_DURATION, format_duration, parse_duration, parse_size

NUMERIC_FIELDS = ("timeout", "kill_timeout", "misfire_grace", "jitter", "output_limit", "max_instances")
NON_FINITE = (".nan", ".NaN", ".inf", "-.inf", "+.inf", "1.0e+400")


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(textwrap.dedent(text), "t.yaml", check_accounts=False)
    return [str(e) for e in info.value.errors]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_non_finite_task_field_is_a_located_error(field: str, value: str) -> None:
    (err,) = _errors(f"""\
    version: 1
    tasks:
      - name: t1
        schedule: "* * * * * *"
        command: /bin/true
        {field}: {value}
    """)
    assert err.startswith(f"t.yaml:6:{7 + len(field)}: task 't1': {field}: "), err


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_non_finite_default_is_a_located_error(field: str, value: str) -> None:
    (err,) = _errors(f"""\
    version: 1
    defaults:
      {field}: {value}
    tasks:
      - {{name: t1, schedule: "* * * * * *", command: /bin/true}}
    """)
    assert err.startswith(f"t.yaml:3:{5 + len(field)}: defaults.{field}: "), err


@pytest.mark.parametrize("value", ["9" * 400, '"' + "9" * 400 + '"', '"' + "9" * 400 + 'd"', '"40000d"'])
@pytest.mark.parametrize("field", ["timeout", "kill_timeout", "misfire_grace", "jitter"])
def test_absurdly_long_duration_is_a_located_error_not_a_crash(field: str, value: str) -> None:
    (err,) = _errors(f"""\
    version: 1
    tasks:
      - name: t1
        schedule: "* * * * * *"
        command: /bin/true
        {field}: {value}
    """)
    assert err.startswith(f"t.yaml:6:{7 + len(field)}: task 't1': {field}: "), err
    assert "36500 days" in err  # the hint says where the limit is


@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, "nan", "NaN", "inf", "-inf", "infinity", "1e400", "9" * 400,
    "9" * 400 + "d", 10**400, -(10**400), MAX_DURATION + 1, float(MAX_DURATION) * 2, "36501d",
])
def test_parse_duration_rejects_non_finite_and_absurd_values(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_keeps_sane_values_and_its_limit() -> None:
    assert parse_duration(MAX_DURATION) == MAX_DURATION
    assert parse_duration("36500d") == MAX_DURATION
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration(-3) == -3.0  # the sign stays the caller's business ("must be 0 or more")
    with pytest.raises(ValueError, match="36500 days"):
        parse_duration("36501d")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "1e400", "infinity",
                                   10**400, 2**63, "9" * 30 + "GiB"])
def test_parse_size_rejects_non_finite_and_absurd_values(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_format_duration_never_raises_on_odd_numbers() -> None:
    # Tasks built without validation (tests, future callers) must not crash `torch list` either.
    assert [format_duration(x) for x in (math.nan, math.inf)] == ["nans", "infs"]


def test_torch_list_reports_non_finite_values_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "tasks.yaml"
    path.write_text(textwrap.dedent("""\
    version: 1
    tasks:
      - name: t1
        schedule: "* * * * * *"
        command: /bin/true
        timeout: .nan
        jitter: .inf
    """))
    result = CliRunner().invoke(cli, ["list", str(path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # sys.exit(1), not a crash
    out = result.output  # stdout and stderr, as a terminal shows them
    assert "Traceback" not in out
    assert f"{path}:6:14: task 't1': timeout: " in out
    assert f"{path}:7:13: task 't1': jitter: " in out
    assert "2 errors; the file was not accepted" in out


def test_every_interval_too_long_for_a_float_is_a_located_error_not_a_crash() -> None:
    # "@every" reads its interval with parse_duration; int(inf) used to raise OverflowError.
    (err,) = _errors(f"""\
    version: 1
    tasks:
      - {{name: t1, schedule: "@every {"9" * 400}", command: /bin/true}}
    """)
    assert err.startswith("t.yaml:3:") and "task 't1': schedule: @every: cannot read" in err, err
