"""The reference-data cache: PostgreSQL bumps the version on every change, so a cache is exact."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from allocations.models import Account, AccountGroup, CashBalance
from compliance.models import Rule
from oms_site import refcache
from oms_site.errors import ConflictError, ValidationError
from oms_site.models import AuditEvent
from orders.models import Instrument, Issuer, KillSwitch, Order, ReferencePrice
from orders.services.orders import order_create
from tests.orders.conftest import order_data

pytestmark = pytest.mark.django_db


def _bumped(change: Any) -> bool:
    before = refcache.refdata_version()
    change()
    return refcache.refdata_version() != before


def test_every_reference_table_bumps_the_version_and_orders_do_not(
    pm: Any, account: Any, instrument: Any, other_desk: Any, trader: Any
) -> None:
    rule = Rule.objects.create(name="r", rule_type="buying_power", severity="block")
    group = AccountGroup.objects.create(code="G1", name="Group 1")
    changes = {
        "instrument": lambda: Instrument.objects.filter(pk=instrument.pk).update(tradable=False),
        "price": lambda: ReferencePrice.objects.filter(instrument=instrument).update(
            last=Decimal("101")
        ),
        "issuer": lambda: Issuer.objects.filter(pk=instrument.issuer_id).update(name="x"),
        "rule": lambda: Rule.objects.filter(pk=rule.pk).update(active=False),
        "rule scope": lambda: rule.accounts.add(account),
        "account": lambda: Account.objects.filter(pk=account.pk).update(active=False),
        "account groups": lambda: account.groups.add(group),
        "account managers": lambda: account.managers.remove(pm),
        "desk traders": lambda: other_desk.traders.add(trader),
        "kill switch": lambda: KillSwitch.objects.create(
            scope="firm", target="", reason="x", engaged_by=pm
        ),
        "delete": lambda: Rule.objects.filter(pk=rule.pk).delete(),
    }
    for name, change in changes.items():
        assert _bumped(change), name
    # Orders, cash and positions are read live and never bump it.
    assert not _bumped(lambda: Order.objects.update(version=1))
    assert not _bumped(lambda: CashBalance.objects.update(pending=Decimal("1")))


def test_a_rolled_back_version_is_never_seen_again(instrument: Any) -> None:
    start = refcache.refdata_version()
    with transaction.atomic():
        Instrument.objects.filter(pk=instrument.pk).update(tradable=False)
        inside = refcache.refdata_version()
        transaction.set_rollback(True)
    assert refcache.refdata_version() == start
    Instrument.objects.filter(pk=instrument.pk).update(name="again")
    assert refcache.refdata_version() not in (start, inside)


def test_order_entry_reads_reference_data_from_the_cache_once_warm(book: Any, pm: Any) -> None:
    order_create(user=pm, data=order_data())
    with CaptureQueriesContext(connection) as ctx:
        order_create(user=pm, data=order_data())
    sql = " ".join(q["sql"] for q in ctx.captured_queries)
    for table in (
        'orders_instrument".',
        'allocations_account".',
        "orders_killswitch",
        "compliance_rule",
        "compliance_restrictedentry",
    ):
        assert table not in sql
    # Once, with the book's sums in the order's transaction: the order was validated under the
    # version this process saw last, which that read confirms.
    assert sql.count("oms_refdata_version") == 1


def test_an_order_validated_under_an_older_version_is_decided_again(
    book: Any, pm: Any, instrument: Any
) -> None:
    # given a warm cache, and a change of reference data this process has not read yet
    order_create(user=pm, data=order_data())
    Issuer.objects.filter(pk=instrument.issuer_id).update(name="renamed")
    orders_before = Order.objects.count()
    # when the next order comes
    with CaptureQueriesContext(connection) as ctx:
        order = order_create(user=pm, data=order_data())
    # then its first attempt stopped before writing (its check read another version, and read
    # the book again under it), and the second, under the version read then, wrote it once
    sql = [q["sql"] for q in ctx.captured_queries]
    assert sum("oms_refdata_version" in s for s in sql) == 4
    assert sum(s.startswith("INSERT INTO orders_order") for s in sql) == 1
    assert Order.objects.count() == orders_before + 1
    assert order.status == "approved"
    assert list(
        AuditEvent.objects.filter(stream=f"order:{order.pk}").values_list("action", flat=True)
    ) == ["order.created", "order.compliance_checked"]
    assert refcache.last_version() == refcache.refdata_version()


def test_a_refusal_is_never_decided_on_a_guessed_version(
    book: Any, pm: Any, instrument: Any
) -> None:
    # given an instrument this process cached as not tradable
    Instrument.objects.filter(pk=instrument.pk).update(tradable=False)
    with pytest.raises(ValidationError, match="not tradable"):
        order_create(user=pm, data=order_data())
    orders_before = Order.objects.count()
    # when it trades again, the next order is taken (not refused from the cache)
    Instrument.objects.filter(pk=instrument.pk).update(tradable=True)
    order = order_create(user=pm, data=order_data())
    assert order.status == "approved"
    assert Order.objects.count() == orders_before + 1


def test_changes_reach_the_next_order_at_once(book: Any, pm: Any, instrument: Any) -> None:
    # given a warm cache
    order_create(user=pm, data=order_data())
    # when the instrument stops trading, then
    Instrument.objects.filter(pk=instrument.pk).update(tradable=False)
    with pytest.raises(ValidationError, match="not tradable"):
        order_create(user=pm, data=order_data())
    Instrument.objects.filter(pk=instrument.pk).update(tradable=True)
    # when a kill switch is engaged, then
    switch = KillSwitch.objects.create(scope="account", target="ACC-A", reason="x", engaged_by=pm)
    with pytest.raises(ConflictError, match="kill switch"):
        order_create(user=pm, data=order_data())
    KillSwitch.objects.filter(pk=switch.pk).update(active=False)
    # when the PM no longer manages the account, then
    book["account"].managers.remove(pm)
    with pytest.raises(ValidationError, match=r"unknown account|do not manage"):
        order_create(user=pm, data=order_data())
    book["account"].managers.add(pm)
    # when a blocking rule appears, then
    Rule.objects.create(
        name="tiny", rule_type="fat_finger", severity="block", params={"max_quantity": "10"}
    )
    assert order_create(user=pm, data=order_data()).status == "blocked"


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_by_another_connection_is_seen(
    book: Any, pm: Any, instrument: Any
) -> None:
    order_create(user=pm, data=order_data())

    def elsewhere() -> None:
        try:
            Instrument.objects.filter(pk=instrument.pk).update(tradable=False)
        finally:
            connection.close()

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    with pytest.raises(ValidationError, match="not tradable"):
        order_create(user=pm, data=order_data())


def _fields(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def test_instruments_by_symbol_reads_what_select_related_reads(instrument: Any) -> None:
    from orders.services.orders import _instruments_by_symbol
    from tests import factories as f

    bare = f.InstrumentFactory(symbol='NO"PX\\', price=None, shares_outstanding=None)
    assert not ReferencePrice.objects.filter(instrument=bare).exists()
    symbols = ["ACME", bare.symbol, "MISSING"]
    with CaptureQueriesContext(connection) as queries:
        got = _instruments_by_symbol(symbols)
    assert len(queries.captured_queries) == 1
    expected = {
        i.symbol: i
        for i in Instrument.objects.filter(symbol__in=symbols).select_related("price", "issuer")
    }
    assert sorted(got) == ["ACME", 'NO"PX\\']
    for symbol, inst in got.items():
        want = expected[symbol]
        assert _fields(inst) == _fields(want)
        assert inst._state.adding is False
        assert inst._state.db == "default"
        assert _fields(inst.issuer) == _fields(want.issuer)
    acme = got["ACME"]
    assert _fields(acme.price) == _fields(expected["ACME"].price)
    assert acme.price.last == Decimal("100.00")
    assert acme.price.instrument is acme
    # The instrument without a price answers as select_related's does, with no query.
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(ReferencePrice.DoesNotExist):
            got['NO"PX\\'].price  # noqa: B018
        assert got["ACME"].issuer.code == expected["ACME"].issuer.code
    assert queries.captured_queries == []
    assert _instruments_by_symbol(["MISSING"]) == {}


def test_compliance_instrument_infos_read_what_the_orm_reads(instrument: Any) -> None:
    from compliance.context import _instrument_infos
    from tests import factories as f

    bare = f.InstrumentFactory(
        symbol="BARE", price=None, shares_outstanding=None, sector="", tradable=False
    )
    with CaptureQueriesContext(connection) as queries:
        got = _instrument_infos([instrument.pk, bare.pk, 0])
    assert len(queries.captured_queries) == 1
    assert sorted(got) == sorted([instrument.pk, bare.pk])
    acme = got[instrument.pk]
    assert (acme.id, acme.symbol, acme.issuer_id, acme.sector) == (
        instrument.pk,
        "ACME",
        instrument.issuer_id,
        "Technology",
    )
    assert acme.shares_outstanding == Decimal("100000000")
    assert acme.reference_price == Decimal("100.00")
    assert acme.tradable is True
    other = got[bare.pk]
    assert (other.symbol, other.sector, other.shares_outstanding) == ("BARE", None, None)
    assert other.reference_price == Decimal("0")
    assert other.tradable is False
    assert _instrument_infos([0]) == {}
