"""The birthday rules, as pure functions: no web framework, no database, "today" passed in."""

import calendar
import re
from datetime import date

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_USERNAME = re.compile(r"[A-Za-z]{1,64}")


class InvalidDateOfBirth(ValueError):
    """A date of birth that is malformed, not a calendar date, or not strictly in the past."""


def is_valid_username(username: str) -> bool:
    """ASCII letters only, 1 to 64 of them; case is kept as sent."""
    return _USERNAME.fullmatch(username) is not None


def parse_date_of_birth(text: str, today: date) -> date:
    """Parse an exact ``YYYY-MM-DD`` calendar date that lies strictly before ``today``."""
    # fromisoformat alone also accepts "19900105" and other ISO 8601 forms; the contract is stricter.
    if _ISO_DATE.fullmatch(text) is None:
        raise InvalidDateOfBirth(f"'{text}' is not a date in the form YYYY-MM-DD")
    try:
        born = date.fromisoformat(text)
    except ValueError:
        raise InvalidDateOfBirth(f"'{text}' is not a real calendar date") from None
    if born >= today:
        raise InvalidDateOfBirth(
            f"'{text}' is not before today ({today.isoformat()}); a date of birth must be in the past"
        )
    return born


def birthday_in_year(born: date, year: int) -> date:
    """The birthday in ``year``; 29 February falls on 28 February in years without it."""
    if born.month == 2 and born.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return born.replace(year=year)


def days_until_birthday(born: date, today: date) -> int:
    """Calendar days from ``today`` to the next birthday; 0 when it is today."""
    this_year = birthday_in_year(born, today.year)
    if this_year >= today:
        return (this_year - today).days
    return (birthday_in_year(born, today.year + 1) - today).days


def greeting(username: str, born: date, today: date) -> str:
    """The message the GET endpoint answers with."""
    days = days_until_birthday(born, today)
    if days == 0:
        return f"Hello, {username}! Happy birthday!"
    return f"Hello, {username}! Your birthday is in {days} day(s)"
