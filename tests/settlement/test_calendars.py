import datetime as dt
import time

import pytest

from settlement.calendars import is_session, resolve_calendar_code, settlement_date

D = dt.date


@pytest.mark.parametrize(
    ("trade", "cycle", "code", "expected"),
    [
        # US equities T+1 on the NYSE calendar
        (D(2026, 11, 24), 1, "XNYS", D(2026, 11, 25)),  # plain Tuesday
        (D(2026, 11, 25), 1, "XNYS", D(2026, 11, 27)),  # over Thanksgiving (Thu 26 Nov)
        (D(2026, 11, 27), 1, "XNYS", D(2026, 11, 30)),  # Friday -> Monday
        (D(2026, 12, 24), 1, "XNYS", D(2026, 12, 28)),  # over Christmas and the weekend
        (D(2026, 4, 2), 1, "XNYS", D(2026, 4, 6)),  # over Good Friday (3 Apr) and the weekend
        (D(2026, 12, 31), 1, "XNYS", D(2027, 1, 4)),  # New Year's Day, across the year end
        (D(2026, 7, 2), 1, "XNYS", D(2026, 7, 6)),  # Independence Day observed Fri 3 Jul
        # a closed trade date rolls to the next session first, then the cycle counts
        (D(2026, 11, 28), 1, "XNYS", D(2026, 12, 1)),  # Saturday -> Mon session -> Tue
        (D(2026, 11, 26), 1, "XNYS", D(2026, 11, 30)),  # Thanksgiving -> Fri -> Mon
        (D(2026, 11, 26), 0, "XNYS", D(2026, 11, 27)),  # T+0 on a holiday is the next session
        (D(2026, 11, 25), 0, "XNYS", D(2026, 11, 25)),
        # UK T+2 on the LSE calendar (bank holidays)
        (D(2026, 4, 1), 2, "XLON", D(2026, 4, 7)),  # Good Friday 3 Apr and Easter Monday 6 Apr
        (D(2026, 5, 1), 2, "XLON", D(2026, 5, 6)),  # Early May bank holiday Mon 4 May
        (D(2026, 8, 27), 2, "XLON", D(2026, 9, 1)),  # Summer bank holiday Mon 31 Aug
        (D(2026, 12, 23), 2, "XLON", D(2026, 12, 29)),  # Christmas and Boxing Day (Mon 28 Dec)
        # Germany (Xetra closes on 24 and 31 December) and Japan
        (D(2026, 12, 22), 2, "XETR", D(2026, 12, 28)),
        (D(2026, 12, 30), 2, "XTKS", D(2027, 1, 5)),  # Tokyo is closed 31 Dec - 3 Jan
        # crypto T+0 any day, including weekends and holidays
        (D(2026, 11, 28), 0, "24/7", D(2026, 11, 28)),
        (D(2026, 12, 25), 0, "24/7", D(2026, 12, 25)),
        (D(2026, 12, 25), 1, "24/7", D(2026, 12, 26)),
        # FX T+2 on weekdays
        (D(2026, 11, 26), 2, "FX", D(2026, 11, 30)),  # weekdays only; US holiday not modelled
        (D(2026, 11, 28), 2, "FX", D(2026, 12, 2)),
        # exchange_calendars aliases
        (D(2026, 11, 25), 1, "NYSE", D(2026, 11, 27)),
        (D(2026, 4, 1), 2, "LSE", D(2026, 4, 7)),
    ],
)
def test_settlement_date(trade, cycle, code, expected):
    # given a trade date, a cycle and a market calendar / when / then
    assert settlement_date(trade, cycle_days=cycle, calendar_code=code) == expected


def test_settlement_date_long_cycle_beyond_the_first_window():
    # given a cycle that runs past the one-year-ahead window / when / then it still resolves
    assert settlement_date(D(2026, 12, 31), cycle_days=300, calendar_code="XNYS") == D(2028, 3, 13)


def test_is_session():
    assert is_session(D(2026, 11, 26), calendar_code="XNYS") is False
    assert is_session(D(2026, 11, 27), calendar_code="XNYS") is True
    assert is_session(D(2026, 4, 6), calendar_code="XLON") is False
    assert is_session(D(2026, 11, 28), calendar_code="24/7") is True


def test_calendar_codes_resolve():
    assert resolve_calendar_code("XNYS") == "XNYS"
    assert resolve_calendar_code("nyse") == "XNYS"
    assert resolve_calendar_code("FX") == "24/5"
    assert resolve_calendar_code("crypto") == "24/7"


def test_unknown_calendar_is_rejected():
    with pytest.raises(ValueError, match="unknown calendar code 'NOPE'"):
        settlement_date(D(2026, 11, 25), cycle_days=1, calendar_code="NOPE")


@pytest.mark.parametrize("cycle", [-1, True, 1.0])
def test_bad_cycle_is_rejected(cycle):
    with pytest.raises(ValueError, match="cycle_days"):
        settlement_date(D(2026, 11, 25), cycle_days=cycle, calendar_code="XNYS")


def test_datetime_is_not_a_trade_date():
    with pytest.raises(TypeError):
        settlement_date(dt.datetime(2026, 11, 25, 10), cycle_days=1, calendar_code="XNYS")


def test_lookups_are_fast_once_the_calendar_is_built():
    # given a built calendar
    settlement_date(D(2026, 1, 2), cycle_days=1, calendar_code="XNYS")
    days = [D(2026, 1, 1) + dt.timedelta(days=i) for i in range(365)]
    # when looking up 36,500 settlement dates
    started = time.perf_counter()
    for _ in range(100):
        for day in days:
            settlement_date(day, cycle_days=1, calendar_code="XNYS")
    elapsed = time.perf_counter() - started
    # then it takes well under a second (it would take minutes on pandas per call)
    assert elapsed < 1.0


def test_threads_reaching_an_unbuilt_calendar_together_build_it_once(monkeypatch) -> None:
    # Given a calendar window no test has built yet, and a build slow enough to overlap
    import threading

    from settlement import calendars

    builds: list[tuple[str, int, int]] = []
    real = calendars._calendar

    def slow_calendar(name: str, first_year: int, last_year: int):  # type: ignore[no-untyped-def]
        builds.append((name, first_year, last_year))
        time.sleep(0.2)
        return real(name, first_year, last_year)

    monkeypatch.setattr(calendars, "_calendar", slow_calendar)
    calendars._session_dates_built.cache_clear()
    calendars._settlement_date.cache_clear()
    start = threading.Barrier(4)
    answers: list[dt.date] = []

    def settle() -> None:
        start.wait()
        answers.append(settlement_date(D(2031, 3, 3), cycle_days=1, calendar_code="XNYS"))

    # When four threads ask for a settlement date in it at once
    threads = [threading.Thread(target=settle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then the window was built exactly once and every thread got the same answer
    assert builds == [("XNYS", 2031, 2032)]
    assert answers == [D(2031, 3, 4)] * 4
