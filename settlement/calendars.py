"""Settlement dates on real market calendars (the ``exchange_calendars`` package).

Rules:

* ``settlement_date(trade_date, cycle_days=N, calendar_code=C)`` is the N-th session of
  calendar C after the trade date (T+N counted in sessions, not calendar days).
* A trade date that is not a session of C (weekend, holiday) first rolls forward to the next
  session, and the cycle is counted from there: a Saturday trade in a T+1 US equity settles on
  Tuesday, and a T+0 trade on Thanksgiving settles on the Friday after. So a trade booked on a
  closed day never settles sooner than one booked on the next session.
* ``calendar_code`` is any exchange_calendars name or alias ("XNYS", "NYSE", "XLON", "XETR",
  "XTKS", ...), plus:

  - ``"24/7"`` (crypto): every calendar day is a session, so T+0 settles the same day, any day.
  - ``"FX"`` (alias of exchange_calendars' ``"24/5"``): every weekday is a session. Spot FX
    settles on days both currencies' banks are open; exchange_calendars ships no banking
    calendars, so bank holidays of the two currencies are not modelled (known limitation; pass a
    market calendar such as "XNYS" instead if that approximation is preferred).
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
import warnings
from functools import lru_cache

import exchange_calendars as xcals
from exchange_calendars.errors import CalendarError

CRYPTO_CALENDAR = "24/7"
FX_CALENDAR = "FX"

# Codes of our own on top of exchange_calendars' names and aliases.
_OUR_ALIASES = {FX_CALENDAR: "24/5", "CRYPTO": "24/7"}

# Sessions are loaded per window of whole years starting at the trade date's year; a window
# ends one year later so a trade late in December settles without a second calendar build.
# Wider windows are only built for implausibly long cycles.
_MAX_EXTRA_YEARS = 10


@lru_cache(maxsize=256)
def resolve_calendar_code(calendar_code: str) -> str:
    """Return the exchange_calendars name for a calendar code or alias; ValueError if unknown."""
    code = calendar_code.strip()
    code = _OUR_ALIASES.get(code.upper(), code)
    for candidate in (code, code.upper()):
        try:
            return str(xcals.resolve_alias(candidate))
        except CalendarError:
            continue
    raise ValueError(f"unknown calendar code {calendar_code!r}")


@lru_cache(maxsize=128)
def _calendar(name: str, first_year: int, last_year: int) -> xcals.ExchangeCalendar:
    # Building a calendar costs 0.1-0.2 s, so each (calendar, window) is built once per process;
    # a bounded window keeps that cost independent of how far back the default start reaches.
    try:
        with warnings.catch_warnings():
            # exchange_calendars 4.13 trips a pandas deprecation warning while building; it is
            # the library's to fix and says nothing about our dates.
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
            return xcals.get_calendar(
                name, start=dt.date(first_year, 1, 1), end=dt.date(last_year, 12, 31)
            )
    except ValueError as exc:  # outside the years the calendar defines holidays for
        raise ValueError(f"calendar {name} cannot cover {first_year}-{last_year}: {exc}") from exc


# lru_cache does not stop concurrent first calls: the gateway's applier threads all reached the
# first fill of the day together and each built the same calendar (1-3 s of CPU in all).
_BUILD_LOCK = threading.Lock()


def _session_dates(name: str, first_year: int, last_year: int) -> tuple[dt.date, ...]:
    with _BUILD_LOCK:
        return _session_dates_built(name, first_year, last_year)


@lru_cache(maxsize=128)
def _session_dates_built(name: str, first_year: int, last_year: int) -> tuple[dt.date, ...]:
    # Plain dates with bisect answer a lookup in about a microsecond; the calendar's own pandas
    # methods take tens of microseconds, too slow for a million allocations.
    return tuple(_calendar(name, first_year, last_year).sessions.date)


def is_session(day: dt.date, *, calendar_code: str) -> bool:
    """Whether the market of calendar_code is open on day."""
    name = resolve_calendar_code(calendar_code)
    sessions = _session_dates(name, day.year, day.year + 1)
    index = bisect.bisect_left(sessions, day)
    return index < len(sessions) and sessions[index] == day


def settlement_date(trade_date: dt.date, *, cycle_days: int, calendar_code: str) -> dt.date:
    """Trade date plus cycle_days sessions of the calendar (closed trade dates roll forward)."""
    if isinstance(trade_date, dt.datetime) or not isinstance(trade_date, dt.date):
        raise TypeError("trade_date must be a datetime.date")
    if isinstance(cycle_days, bool) or not isinstance(cycle_days, int) or cycle_days < 0:
        raise ValueError("cycle_days must be a non-negative integer")
    name = resolve_calendar_code(calendar_code)
    return _settlement_date(trade_date, cycle_days, name)


@lru_cache(maxsize=65536)
def _settlement_date(trade_date: dt.date, cycle_days: int, name: str) -> dt.date:
    first_year = trade_date.year
    for last_year in range(first_year + 1, first_year + 2 + _MAX_EXTRA_YEARS):
        sessions = _session_dates(name, first_year, last_year)
        # bisect_left finds the trade date itself if it is a session, else the next session.
        index = bisect.bisect_left(sessions, trade_date) + cycle_days
        if index < len(sessions):
            return sessions[index]
    raise ValueError(f"settlement date of {trade_date} T+{cycle_days} is out of range")
