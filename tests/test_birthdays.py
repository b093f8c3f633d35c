"""The birthday rules: hand-checked cases, and properties against an independent day-by-day oracle."""

import calendar
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.birthdays import (
    InvalidDateOfBirth,
    birthday_in_year,
    days_until_birthday,
    greeting,
    is_valid_username,
    parse_date_of_birth,
)

# (date of birth, today, days until the birthday), each worked out by hand on a calendar.
HAND_CHECKED = [
    (date(1990, 11, 22), date(2026, 11, 22), 0),  # today
    (date(1990, 11, 23), date(2026, 11, 22), 1),  # tomorrow
    (date(1990, 11, 21), date(2026, 11, 22), 364),  # yesterday; 2027 is not a leap year
    (date(1990, 11, 21), date(2027, 11, 22), 365),  # yesterday; 2028 has 29 February in between
    (date(1990, 1, 1), date(2026, 12, 31), 1),  # year end: next year's 1 January
    (date(1990, 12, 31), date(2026, 1, 1), 364),  # year start: this year's 31 December
    (date(1990, 12, 31), date(2026, 12, 31), 0),
    (date(1990, 1, 1), date(2026, 1, 1), 0),
    (date(2000, 2, 29), date(2028, 2, 29), 0),  # leap year: on the day itself
    (date(2000, 2, 29), date(2028, 2, 28), 1),  # leap year: the day before is not the birthday
    (date(2000, 2, 29), date(2026, 2, 28), 0),  # non-leap year: celebrated on 28 February
    (date(2000, 2, 29), date(2026, 2, 27), 1),
    (date(2000, 2, 29), date(2026, 3, 1), 364),  # passed: next is 2027-02-28
    (date(2000, 2, 29), date(2027, 3, 1), 365),  # passed: next is 2028-02-29
    (date(2000, 2, 29), date(2027, 12, 31), 60),  # 31 days of January + 29 of February 2028
    (date(2000, 2, 28), date(2028, 2, 29), 365),  # 28 February born: a leap 29 February is after it
    (date(1999, 3, 1), date(2028, 2, 29), 1),
    (date(1999, 3, 1), date(2027, 2, 28), 1),
    (date(2025, 11, 21), date(2026, 11, 22), 364),
]


@pytest.mark.parametrize(("born", "today", "days"), HAND_CHECKED)
def test_days_until_birthday_hand_checked(born: date, today: date, days: int) -> None:
    assert days_until_birthday(born, today) == days


def test_greeting_says_happy_birthday_on_the_day_and_counts_otherwise() -> None:
    assert greeting("Ada", date(1815, 12, 10), date(2026, 12, 10)) == "Hello, Ada! Happy birthday!"
    assert (
        greeting("Ada", date(1815, 12, 10), date(2026, 12, 9)) == "Hello, Ada! Your birthday is in 1 day(s)"
    )
    assert (
        greeting("Ada", date(1815, 12, 10), date(2026, 12, 11))
        == "Hello, Ada! Your birthday is in 364 day(s)"
    )


def test_birthday_in_year_moves_29_february_only_in_common_years() -> None:
    assert birthday_in_year(date(2000, 2, 29), 2026) == date(2026, 2, 28)
    assert birthday_in_year(date(2000, 2, 29), 2028) == date(2028, 2, 29)
    assert birthday_in_year(date(2000, 2, 29), 2100) == date(2100, 2, 28)  # 2100 is not leap
    assert birthday_in_year(date(2000, 3, 1), 2026) == date(2026, 3, 1)


@pytest.mark.parametrize(
    "text",
    ["2023-02-29", "1990-13-01", "1990-1-5", "1990-01-5", "19900105", "1990/01/05", " 1990-01-05",
     "1990-01-05 ", "1990-01-05T00:00", "", "0000-01-01", "1990-00-10", "1990-04-31", "２０００-01-01"],
)  # fmt: skip
def test_parse_date_of_birth_rejects_anything_but_a_real_yyyy_mm_dd(text: str) -> None:
    with pytest.raises(InvalidDateOfBirth):
        parse_date_of_birth(text, date(2026, 11, 22))


def test_parse_date_of_birth_requires_a_date_strictly_before_today() -> None:
    today = date(2026, 11, 22)
    assert parse_date_of_birth("2026-11-21", today) == date(2026, 11, 21)
    assert parse_date_of_birth("0001-01-01", today) == date(1, 1, 1)
    assert parse_date_of_birth("2024-02-29", today) == date(2024, 2, 29)
    for text in ("2026-11-22", "2026-11-23", "9999-12-31"):
        with pytest.raises(InvalidDateOfBirth, match="not before today"):
            parse_date_of_birth(text, today)


@pytest.mark.parametrize("name", ["a", "Alice", "alice", "Z" * 64, "AbCdEfGh"])
def test_valid_usernames(name: str) -> None:
    assert is_valid_username(name)


@pytest.mark.parametrize(
    "name", ["", "A" * 65, "al1ce", "al ice", "al-ice", "alice\n", "ålice", "ａlice", "al.ice", "_"]
)
def test_invalid_usernames(name: str) -> None:
    assert not is_valid_username(name)


def oracle_days_until(born: date, today: date) -> int:
    """Step one day at a time until a day that is the birthday: slow, but obviously right."""
    day = today
    while True:
        is_leap_day_birth = (born.month, born.day) == (2, 29)
        has_feb_29 = (day.replace(day=28) + timedelta(days=1)).day == 29 if day.month == 2 else False
        if (day.month, day.day) == (born.month, born.day):
            return (day - today).days
        if is_leap_day_birth and not has_feb_29 and (day.month, day.day) == (2, 28):
            return (day - today).days
        day += timedelta(days=1)


dates = st.dates(min_value=date(1, 1, 1), max_value=date(9998, 12, 31))
leap_days = st.integers(1, 9998).filter(calendar.isleap).map(lambda year: date(year, 2, 29))
# Dates of birth: any date, with 29 February drawn often enough to be tested on every run.
births = st.one_of(dates, leap_days)
# Days around the edges where mistakes hide: the end of February and the end of the year.
edges = st.builds(
    lambda year, month_day: (
        date(year, *month_day) if month_day != (2, 29) or calendar.isleap(year) else date(year, 2, 28)
    ),
    st.integers(2, 9997),
    st.sampled_from([(2, 27), (2, 28), (2, 29), (3, 1), (12, 30), (12, 31), (1, 1)]),
)
todays = st.one_of(dates, edges)


@given(born=births, today=todays)
def test_days_until_birthday_matches_the_day_by_day_oracle(born: date, today: date) -> None:
    assert days_until_birthday(born, today) == oracle_days_until(born, today)


@given(born=births, today=todays)
def test_days_until_birthday_is_within_a_year(born: date, today: date) -> None:
    assert 0 <= days_until_birthday(born, today) <= 365


@given(born=births, today=st.one_of(edges, st.dates(min_value=date(2, 1, 1), max_value=date(9998, 12, 30))))
def test_the_count_falls_by_one_each_day_until_the_birthday(born: date, today: date) -> None:
    days = days_until_birthday(born, today)
    if days > 0:
        assert days_until_birthday(born, today + timedelta(days=1)) == days - 1
    else:
        assert days_until_birthday(born, today - timedelta(days=1)) == 1


@given(born=dates, today=dates)
def test_parsing_round_trips_every_past_date(born: date, today: date) -> None:
    if born < today:
        assert parse_date_of_birth(born.isoformat(), today) == born
    else:
        with pytest.raises(InvalidDateOfBirth):
            parse_date_of_birth(born.isoformat(), today)
