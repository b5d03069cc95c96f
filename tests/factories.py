"""factory_boy factories shared by the whole suite."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from allocations.models import Account, CashBalance, Custodian, Desk, Position
from oms_site import roles
from orders.models import Broker, FixSession, Instrument, Issuer, Order, ReferencePrice

PASSWORD = "test-pass-123"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def role(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        if extracted:
            if not Group.objects.filter(name=extracted).exists():
                roles.roles_sync()
            self.groups.add(Group.objects.get(name=extracted))
        self.save()


class IssuerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Issuer
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"ISS{n:04d}")
    name = factory.LazyAttribute(lambda o: f"Issuer {o.code}")
    country = "US"
    sector = "Technology"


class InstrumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Instrument
        django_get_or_create = ("symbol",)
        skip_postgeneration_save = True

    symbol = factory.Sequence(lambda n: f"SYM{n}")
    isin = factory.Sequence(lambda n: f"US{n:09d}0")
    name = factory.LazyAttribute(lambda o: f"{o.symbol} Inc")
    asset_class = "equity"
    currency = "USD"
    lot_size = Decimal("1")
    tick_size = Decimal("0.01")
    issuer = factory.SubFactory(IssuerFactory)
    sector = "Technology"
    country = "US"
    shares_outstanding = Decimal("100000000")
    settlement_cycle = 1
    calendar_code = "XNYS"
    tradable = True
    price = factory.RelatedFactory(
        "tests.factories.ReferencePriceFactory", factory_related_name="instrument"
    )


def fx_pair(symbol: str, last: str) -> Instrument:
    """An FX spot instrument BASEQUOTE (currency = quote) whose reference price is the rate."""
    return InstrumentFactory(  # type: ignore[no-any-return]
        symbol=symbol,
        isin=None,
        asset_class="fx",
        currency=symbol[3:],
        shares_outstanding=None,
        price__last=Decimal(last),
    )


class ReferencePriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReferencePrice
        django_get_or_create = ("instrument",)

    bid = Decimal("99.95")
    ask = Decimal("100.05")
    last = Decimal("100.00")
    as_of = factory.LazyFunction(timezone.now)


class CustodianFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Custodian
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"CUST{n}")
    name = factory.LazyAttribute(lambda o: f"{o.code} Bank")
    bic = "CUSTUS33XXX"
    settlement_format = "csv"


class DeskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Desk
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"D{n}")
    name = factory.LazyAttribute(lambda o: f"Desk {o.code}")


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"ACCT{n:03d}")
    name = factory.LazyAttribute(lambda o: f"Fund {o.code}")
    client = "Client"
    custodian = factory.SubFactory(CustodianFactory)
    custodian_account = factory.LazyAttribute(lambda o: f"CA-{o.code}")
    desk = factory.SubFactory(DeskFactory)
    base_currency = "USD"
    short_selling_allowed = False


class CashBalanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CashBalance
        django_get_or_create = ("account", "currency")

    account = factory.SubFactory(AccountFactory)
    currency = "USD"
    settled = Decimal("1000000.00")


class PositionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Position
        django_get_or_create = ("account", "instrument")

    account = factory.SubFactory(AccountFactory)
    instrument = factory.SubFactory(InstrumentFactory)
    quantity = Decimal("1000")
    avg_cost = Decimal("100")


class BrokerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Broker
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"BRK{n}")
    name = factory.LazyAttribute(lambda o: f"Broker {o.code}")
    bic = "BROKUS33XXX"
    rank = factory.Sequence(lambda n: n + 1)


class FixSessionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FixSession

    broker = factory.SubFactory(BrokerFactory)
    host = "127.0.0.1"
    port = 9878
    sender_comp_id = "OMS"
    target_comp_id = factory.LazyAttribute(lambda o: o.broker.code)
    fix_version = "FIX.4.4"
    heartbeat_seconds = 30


def unsaved_market_buy(
    account: Account, instrument: Instrument, creator: object, quantity: str
) -> Order:
    """A market buy as order entry hands it to the pre-trade check: built, not saved."""
    return Order(
        account=account,
        instrument=instrument,
        side="buy",
        quantity=Decimal(quantity),
        order_type="market",
        created_by=creator,
        created_at=timezone.now(),
    )
