"""Schedules in words for the status page (gotorch.web.words): exact phrases, or none."""

from __future__ import annotations

import pytest

from gotorch.web.words import describe


@pytest.mark.parametrize(("schedule", "words"), [
    ("* * * * * *", "every second"),
    ("*/10 * * * * *", "every 10 seconds"),
    ("0 * * * * *", "every minute"),
    ("30 * * * * *", "every minute at second 30"),
    ("0 */5 * * * *", "every 5 minutes"),
    ("0 */15 * * * 1-5", "every 15 minutes on weekdays"),
    ("0 30 * * * *", "every hour at :30"),
    ("0 0,30 * * * *", "every hour at :00 and :30"),
    ("@hourly", "every hour"),
    ("0 0 */2 * * *", "every 2 hours"),
    ("0 15 */6 * * *", "every 6 hours at :15"),
    ("0 0 9-17 * * *", "every hour from 09:00 to 17:00"),
    ("0 0 3 * * *", "every day at 03:00"),
    ("5 4 3 * * *", "every day at 03:04:05"),
    ("0 0 8,20 * * *", "every day at 08:00 and 20:00"),
    ("@daily", "every day at 00:00"),
    ("0 30 9 * * MON-FRI", "on weekdays at 09:30"),
    ("0 30 9 * * mon", "every Monday at 09:30"),
    ("0 0 9 * * 4,1", "every Monday and Thursday at 09:00"),
    ("0 0 10 * * SAT,SUN", "every Saturday and Sunday at 10:00"),
    ("0 * * * * 6,0", "every minute at weekends"),
    ("@weekly", "every Sunday at 00:00"),
    ("0 0 0 * * 7", "every Sunday at 00:00"),
    ("@monthly", "on the 1st of every month at 00:00"),
    ("0 0 0 1,15 * *", "on the 1st and 15th of every month at 00:00"),
    ("0 0 0 L * *", "on the last day of every month at 00:00"),
    ("0 0 0 LW * *", "on the last weekday of every month at 00:00"),
    ("0 0 0 15W * *", "on the weekday nearest the 15th of every month at 00:00"),
    ("0 0 12 * * 5#2", "on the second Friday of the month at 12:00"),
    ("0 0 12 * * FRIL", "on the last Friday of the month at 12:00"),
    ("@yearly", "every year on 1 January at 00:00"),
    ("0 0 0 25 DEC *", "every year on 25 December at 00:00"),
    ("0 0 0 * 6 *", "every day in June at 00:00"),
    ("0 0 0 1 1,7 *", "on the 1st of January and July at 00:00"),
    ("@reboot", "once, when the daemon starts"),
    ("@every 90s", "every 90 seconds"),
    ("@every 5m", "every 5 minutes"),
    ("@every 1h30m", "every 90 minutes"),
    ("@every 1d", "every day"),
])
def test_common_schedules_read_as_words(schedule: str, words: str) -> None:
    assert describe(schedule) == words


@pytest.mark.parametrize("schedule", [
    "0 */7 * * * *",  # fires at :56 and again at :00: not "every 7 minutes"
    "*/7 * * * * *",
    "0 0 0 1 * MON",  # the 1st OR a Monday (Vixie cron): no short phrase says that
    "0 0,10,20,30,40 0,12 * * *",  # ten times a day: the expression says it better
    "0 0 0 1-7 * *",
    "not a schedule",
])
def test_other_schedules_have_no_words(schedule: str) -> None:
    assert describe(schedule) is None
