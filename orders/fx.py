"""Exchange rates between currencies: the one place that converts an amount from A to B.

Source: the FX spot instruments (`asset_class` "fx", symbol BASEQUOTE such as EURUSD, instrument
currency = the quote currency) and their reference prices: `ReferencePrice.last` = the rate,
1 unit of BASE = last units of QUOTE. Those prices are reference data: every change bumps the
refdata version (`oms_site.refcache`), so the rates are read once per version and process
(one query), never per order.

`FxRates.find(src, dst)`, the units of `dst` one unit of `src` is worth, tried in this order:
- the same currency: exactly 1;
- the direct pair SRCDST: its last, exact as stored;
- the inverse pair DSTSRC: 1 / last;
- a cross through USD: rate(src, USD) x rate(USD, dst), each leg direct or inverse.
Nothing else is tried (no other crosses, no stale or default rate). A pair without a positive
reference price does not exist here. A missing rate is `None` from `find` and `MissingRate`
(naming the pair) from `rate`, never 0 or 1.

Precision: a direct rate is exact. A derived one (inverse, cross) is computed to
`RATE_DIGITS` (16) significant digits, ROUND_HALF_EVEN; a cross multiplies its legs as found
(an inverse leg already rounded) and rounds the product once more. Converted amounts are the
exact product amount x rate: callers round only for display (the API's NAV has 8 decimals).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Context, Decimal

from django.db import connection

from oms_site import refcache

RATE_DIGITS = 16
PIVOT = "USD"
_ONE = Decimal(1)
_CONTEXT = Context(prec=RATE_DIGITS, rounding=ROUND_HALF_EVEN)
# Wide enough that a 20-digit amount times a 16-digit rate is never rounded.
_EXACT = Context(prec=60)


def multiply(amount: Decimal, rate: Decimal) -> Decimal:
    """amount x rate, exact (not rounded to the thread's decimal context)."""
    return _EXACT.multiply(amount, rate)


def pair_label(src: str, dst: str) -> str:
    """How a rate is named in messages and in the API: "GBP/USD" (1 GBP in USD)."""
    return f"{src}/{dst}"


class MissingRate(LookupError):
    """No rate converts these currencies (see the module docstring for what is tried)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = tuple(sorted(set(pairs)))
        labels = ", ".join(pair_label(src, dst) for src, dst in self.pairs)
        super().__init__(
            f"no FX rate {labels} (no FX spot reference price, direct, inverse or via {PIVOT})"
        )


class FxRates:
    """The rates of one refdata version (immutable quotes; derived rates memoised)."""

    __slots__ = ("_memo", "_quotes")

    def __init__(self, quotes: Mapping[tuple[str, str], Decimal]) -> None:
        # (base, quote) -> last, positive only.
        self._quotes = {
            pair: last for pair, last in quotes.items() if last is not None and last > 0
        }
        self._memo: dict[tuple[str, str], Decimal | None] = {}

    def currencies(self) -> set[str]:
        """Every currency some pair quotes (the only ones another currency can convert to)."""
        return {c for pair in self._quotes for c in pair}

    def _leg(self, src: str, dst: str) -> Decimal | None:
        last = self._quotes.get((src, dst))
        if last is not None:
            return last
        inverse = self._quotes.get((dst, src))
        if inverse is not None:
            return _CONTEXT.divide(_ONE, inverse)
        return None

    def find(self, src: str, dst: str) -> Decimal | None:
        """Units of `dst` per unit of `src`, or None when no rate exists."""
        if src == dst:
            return _ONE
        key = (src, dst)
        if key in self._memo:  # None memoised too: a missing rate stays missing
            return self._memo[key]
        found = self._leg(src, dst)
        if found is None and PIVOT not in key:
            to_pivot = self._leg(src, PIVOT)
            from_pivot = self._leg(PIVOT, dst)
            if to_pivot is not None and from_pivot is not None:
                found = _CONTEXT.multiply(to_pivot, from_pivot)
        self._memo[key] = found
        return found

    def get(self, pair: tuple[str, str], /) -> Decimal | None:
        """`find` for a (from, to) pair, as a mapping of rates would answer."""
        return self.find(*pair)

    def rate(self, src: str, dst: str) -> Decimal:
        """Units of `dst` per unit of `src`; MissingRate when none exists."""
        found = self.find(src, dst)
        if found is None:
            raise MissingRate([(src, dst)])
        return found

    def convert(self, amount: Decimal, src: str, dst: str) -> Decimal:
        """`amount` of `src` in `dst` (exact product with the rate); MissingRate when none."""
        return multiply(amount, self.rate(src, dst))

    def table(self) -> tuple[list[str], list[str], list[Decimal]]:
        """Every existing rate between two different quoted currencies, as three columns."""
        src_col: list[str] = []
        dst_col: list[str] = []
        rate_col: list[Decimal] = []
        currencies = sorted(self.currencies())
        for src in currencies:
            for dst in currencies:
                found = self.find(src, dst) if src != dst else None
                if found is not None:
                    src_col.append(src)
                    dst_col.append(dst)
                    rate_col.append(found)
        return src_col, dst_col, rate_col


_QUOTES_SQL = (
    "SELECT i.symbol, i.currency, p.last FROM orders_instrument i"
    " JOIN orders_referenceprice p ON p.instrument_id = i.id WHERE i.asset_class = 'fx'"
)


def load() -> FxRates:
    """The rates as the caller's transaction sees them now (one query, no cache)."""
    quotes: dict[tuple[str, str], Decimal] = {}
    with connection.cursor() as cursor:
        cursor.execute(_QUOTES_SQL)
        for symbol, currency, last in cursor.fetchall():
            # Only spot pairs named BASEQUOTE whose currency is the quote currency.
            if len(symbol) == 6 and symbol.isalpha() and symbol[3:] == currency:
                quotes[(symbol[:3], currency)] = last
    return FxRates(quotes)


def rates(*, version: int | None = None) -> FxRates:
    """The rates of this refdata version (read now if not given): one query per version."""
    return refcache.cached(refcache.generation(version), "fx.rates", load)
