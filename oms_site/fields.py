"""Decimal precisions shared by every app (never float)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models

QTY_DIGITS = {"max_digits": 24, "decimal_places": 8}
PRICE_DIGITS = {"max_digits": 24, "decimal_places": 8}
MONEY_DIGITS = {"max_digits": 24, "decimal_places": 2}
PCT_DIGITS = {"max_digits": 12, "decimal_places": 6}
# A sum of quantity * price, exact: a product of a quantity and a price has their scales'
# sum (8 + 8 = 16 decimals) and their integer digits' sum (16 + 16 = 32); a sum of such
# products stays below 10^32 while the quantities summed stay within one block's (or order's)
# quantity (cum_qty <= quantity, 16 integer digits).
NOTIONAL_DIGITS = {"max_digits": 48, "decimal_places": 16}

ZERO = Decimal("0")
CENT = Decimal("0.01")


def QtyField(**kwargs: Any) -> models.DecimalField:
    """A quantity: 24 digits, 8 decimals (crypto trades in fractions)."""
    return models.DecimalField(max_digits=24, decimal_places=8, **kwargs)


def PriceField(**kwargs: Any) -> models.DecimalField:
    """A price: 24 digits, 8 decimals."""
    return models.DecimalField(max_digits=24, decimal_places=8, **kwargs)


def NotionalField(**kwargs: Any) -> models.DecimalField:
    """An exact sum of quantity * price (NOTIONAL_DIGITS): 48 digits, 16 decimals."""
    return models.DecimalField(max_digits=48, decimal_places=16, **kwargs)


def MoneyField(**kwargs: Any) -> models.DecimalField:
    """An amount of money: 24 digits, 2 decimals."""
    return models.DecimalField(max_digits=24, decimal_places=2, **kwargs)


def PctField(**kwargs: Any) -> models.DecimalField:
    """A percentage: 12 digits, 6 decimals."""
    return models.DecimalField(max_digits=12, decimal_places=6, **kwargs)
