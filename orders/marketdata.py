"""The simulated market-data feed: a bounded random walk of every reference price."""

from __future__ import annotations

from django.db import connection, transaction

# One statement moves every price: last walks by up to ±0.1%, rounded to the tick, never below
# one tick; bid/ask sit half a spread (5 bp, at least one tick) around it.
_TICK_SQL = """
WITH moved AS (
    SELECT rp.instrument_id,
           i.tick_size AS tick,
           GREATEST(i.tick_size,
                    ROUND(rp.last * (1 + (random() - 0.5) * 0.002) / i.tick_size) * i.tick_size) AS new_last
    FROM orders_referenceprice rp JOIN orders_instrument i ON i.id = rp.instrument_id
)
UPDATE orders_referenceprice rp
SET last = m.new_last,
    bid = GREATEST(m.tick, m.new_last - GREATEST(m.tick, ROUND(m.new_last * 0.0005 / m.tick) * m.tick)),
    ask = m.new_last + GREATEST(m.tick, ROUND(m.new_last * 0.0005 / m.tick) * m.tick),
    as_of = NOW()
FROM moved m
WHERE rp.instrument_id = m.instrument_id
"""


def market_data_tick() -> int:
    """Move every reference price one step; returns the number of instruments moved."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_TICK_SQL)
        return cursor.rowcount
