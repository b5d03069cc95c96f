"""Rows for settlement tests: the golden day of test_formats, written through the database."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

from django.db import connection

from allocations.models import Allocation
from orders.models import Execution, Order
from tests import factories as f

TRADE_DATE = dt.date(2026, 11, 25)  # the Wednesday before US Thanksgiving
_exec_ids = itertools.count(1)


def golden_reference(*, settlement_format: str = "csv") -> dict[str, Any]:
    """The custodian, accounts, instruments and brokers of the golden day."""
    custodian = f.CustodianFactory(code="BNY", bic="IRVTUS3N", settlement_format=settlement_format)
    accounts = {
        code: f.AccountFactory(code=code, custodian=custodian, custodian_account=ca)
        for code, ca in (("ACC-001", "BNY-77001"), ("ACC-002", "BNY-77002"))
    }
    instruments = {
        symbol: f.InstrumentFactory(symbol=symbol, isin=isin, **extra)
        for symbol, isin, extra in (
            ("AAPL", "US0378331005", {}),
            ("MSFT", "US5949181045", {}),
            ("TSLA", "US88160R1014", {}),
            ("NVDA", "US67066G1040", {}),
            (
                "VOD",
                "GB00BH4HYN58",
                {"currency": "GBP", "settlement_cycle": 2, "calendar_code": "XLON"},
            ),
        )
    }
    brokers = {
        code: f.BrokerFactory(code=code, bic=bic)
        for code, bic in (("GS", "GOLDUS33"), ("MS", "MSNYUS33"), ("BARC", "BARCGB22"))
    }
    user = f.UserFactory(username="settle_pm")
    return {
        "custodian": custodian,
        "accounts": accounts,
        "instruments": instruments,
        "brokers": brokers,
        "user": user,
    }


def make_order(
    ref: dict[str, Any], *, account: str, symbol: str, side: str, quantity: str
) -> Order:
    """A routed order of the reference data (status does not matter to settlement)."""
    return Order.objects.create(
        account=ref["accounts"][account],
        instrument=ref["instruments"][symbol],
        side=side,
        quantity=Decimal(quantity),
        order_type="market",
        created_by=ref["user"],
        status="filled",
    )


def make_allocation(
    ref: dict[str, Any],
    *,
    order: Order,
    broker: str,
    quantity: str,
    price: str,
    gross: str,
    commission: str = "0",
    fees: str = "0",
    net: str | None = None,
    trade_date: dt.date = TRADE_DATE,
    pk: int | None = None,
    reversal_of: Allocation | None = None,
) -> Allocation:
    """One allocation row (with its execution) of an order; kind follows the quantity's sign."""
    qty = Decimal(quantity)
    gross_d, commission_d, fees_d = Decimal(gross), Decimal(commission), Decimal(fees)
    if net is None:
        buy = order.side in ("buy", "buy_to_cover")
        net_d = gross_d + commission_d + fees_d if buy else gross_d - commission_d - fees_d
    else:
        net_d = Decimal(net)
    n = next(_exec_ids)
    execution = Execution.objects.create(
        session_key="FIX.4.4:OMS->SIM",
        exec_id=f"E{n}-{order.pk}",
        order=order,
        broker=ref["brokers"][broker],
        instrument=order.instrument,
        side=order.side,
        exec_type="trade",
        last_qty=abs(qty),
        last_px=Decimal(price),
        trade_date=trade_date,
    )
    kind = "fill" if qty > 0 else "reversal" if qty < 0 else "reprice"
    values: dict[str, Any] = {
        "execution": execution,
        "order": order,
        "account": order.account,
        "instrument": order.instrument,
        "broker": ref["brokers"][broker],
        "side": order.side,
        "kind": kind,
        "quantity": qty,
        "price": Decimal(price),
        "gross": gross_d,
        "commission": commission_d,
        "fees": fees_d,
        "net": net_d,
        "currency": order.instrument.currency,
        "trade_date": trade_date,
        "settlement_date": trade_date + dt.timedelta(days=5),
        "reversal_of": reversal_of,
    }
    if pk is not None:
        values["id"] = pk
    return Allocation.objects.create(**values)


def golden_day(ref: dict[str, Any]) -> list[Allocation]:
    """The five allocations of tests/settlement/golden (ids 1001-1005), one order each."""
    spec = [
        (
            1001,
            "ACC-001",
            "AAPL",
            "buy",
            "GS",
            "100",
            "189.50",
            "18950.00",
            "5.00",
            "0.12",
            "18955.12",
        ),
        (
            1002,
            "ACC-002",
            "MSFT",
            "sell",
            "MS",
            "250",
            "412.3456",
            "103086.40",
            "12.50",
            "2.31",
            "103071.59",
        ),
        (
            1003,
            "ACC-001",
            "TSLA",
            "sell_short",
            "GS",
            "50",
            "240.1",
            "12005.00",
            "3",
            "0.29",
            "12001.71",
        ),
        (
            1004,
            "ACC-002",
            "NVDA",
            "buy_to_cover",
            "GS",
            "10",
            "140.25",
            "1402.50",
            "1.00",
            "0",
            "1403.50",
        ),
        (
            1005,
            "ACC-001",
            "VOD",
            "buy",
            "BARC",
            "10000",
            "0.7250",
            "7250.00",
            "7.25",
            "36.25",
            "7293.50",
        ),
    ]
    rows = []
    for pk, account, symbol, side, broker, qty, price, gross, commission, fees, net in spec:
        order = make_order(ref, account=account, symbol=symbol, side=side, quantity=qty)
        rows.append(
            make_allocation(
                ref,
                order=order,
                broker=broker,
                quantity=qty,
                price=price,
                gross=gross,
                commission=commission,
                fees=fees,
                net=net,
                pk=pk,
            )
        )
    # Later rows must get larger ids, as they would in production.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('allocations_allocation', 'id'), "
            "(SELECT max(id) FROM allocations_allocation))"
        )
    return rows
