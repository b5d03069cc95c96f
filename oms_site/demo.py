"""Deterministic demo data: re-runnable, never duplicates (natural keys, fixed random seed)."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from oms_site import roles
from oms_site.audit import audit_record

DEMO_USERS = [
    ("admin", None, True),
    ("pm1", roles.PM, False),
    ("pm2", roles.PM, False),
    ("trader1", roles.TRADER, False),
    ("compliance1", roles.COMPLIANCE, False),
    ("backoffice1", roles.BACK_OFFICE, False),
]

SECTORS = [
    "Technology",
    "Financials",
    "Health Care",
    "Energy",
    "Industrials",
    "Consumer Discretionary",
    "Consumer Staples",
    "Utilities",
    "Materials",
    "Communication Services",
    "Real Estate",
]
# (country, currency, calendar, settlement cycle, ISIN prefix, count)
EQUITY_MARKETS = [
    ("US", "USD", "XNYS", 1, "US", 180),
    ("GB", "GBP", "XLON", 2, "GB", 50),
    ("DE", "EUR", "XETR", 2, "DE", 40),
    ("JP", "JPY", "XTKS", 2, "JP", 30),
]
SYLLABLES = [
    "ab",
    "ar",
    "co",
    "del",
    "ex",
    "fi",
    "gen",
    "hal",
    "in",
    "jo",
    "kra",
    "lu",
    "mon",
    "nor",
    "or",
    "pa",
    "qui",
    "ro",
    "sol",
    "tek",
    "ul",
    "ver",
    "wes",
    "xa",
    "yor",
    "zen",
]
SUFFIXES = ["Corp", "Holdings", "Group", "Industries", "Systems", "Partners", "Labs", "Energy"]

CUSTODIANS = [
    ("CUSTA", "Atlantic Custody Bank", "ATLCUS33XXX", "csv"),
    ("CUSTB", "Bavaria Depot AG", "BAVDDEFFXXX", "mt54x"),
    ("CUSTC", "Crown Trust Services", "CRWNGB2LXXX", "csv"),
]
BROKERS = [
    ("BRKA", "Alpha Securities", "ALPHUS33XXX", 1, ("5", "0.002", "1.00", "0.2")),
    ("BRKB", "Beta Capital Markets", "BETAUS33XXX", 2, ("3", "0.003", "2.00", "0.2")),
    ("BRKC", "Gamma Execution", "GAMMUS33XXX", 3, ("4", "0", "5.00", "0.1")),
]
OUR_SENDER = "OMS"


def _isin_check_digit(body: str) -> str:
    digits = "".join(str(int(c, 36)) for c in body)
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 0:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return str((10 - total % 10) % 10)


def make_isin(prefix: str, n: int) -> str:
    """A syntactically valid ISIN (with check digit) for demo instrument number n."""
    body = f"{prefix}{n:09d}"
    return body + _isin_check_digit(body)


def _name(rng: random.Random) -> str:
    word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{word} {rng.choice(SUFFIXES)}"


def demo_password() -> str:
    """The demo users' password (DEMO_PASSWORD, or a fixed default printed by quick start)."""
    import os

    return os.environ.get("DEMO_PASSWORD", "oms-demo-2026")


@transaction.atomic
def seed_demo(*, fix_host: str = "127.0.0.1", fix_port: int = 9878) -> dict[str, int]:
    """Create or refresh the demo data set; returns counts of what exists afterwards."""
    from allocations.models import (
        Account,
        AccountGroup,
        CashBalance,
        CommissionSchedule,
        Custodian,
        Desk,
        Position,
    )
    from orders.models import Broker, FixSession, Instrument, Issuer, ReferencePrice

    roles.roles_sync()
    rng = random.Random(20261121)
    User = get_user_model()
    password = demo_password()
    users: dict[str, Any] = {}
    for username, role, superuser in DEMO_USERS:
        user, created = User.objects.get_or_create(
            username=username,
            defaults={
                "is_staff": True,
                "is_superuser": superuser,
                "email": f"{username}@example.com",
            },
        )
        if created:
            user.set_password(password)
            user.save()
            audit_record(
                action="demo.user_created",
                object_type="auth.user",
                object_id=user.pk,
                after={"username": username},
            )
        if role:
            user.groups.add(Group.objects.get(name=role))
        if superuser:
            user.groups.add(Group.objects.get(name=roles.ADMINISTRATOR))
        users[username] = user

    custodians = {}
    for code, name, bic, fmt in CUSTODIANS:
        custodians[code], _ = Custodian.objects.update_or_create(
            code=code, defaults={"name": name, "bic": bic, "settlement_format": fmt}
        )
    desk, _ = Desk.objects.update_or_create(code="EQ", defaults={"name": "Equities desk"})
    desk.traders.add(users["trader1"])
    desk2, _ = Desk.objects.update_or_create(code="MA", defaults={"name": "Multi-asset desk"})
    group_pension, _ = AccountGroup.objects.update_or_create(
        code="PENSION", defaults={"name": "Pension mandates"}
    )
    group_ucits, _ = AccountGroup.objects.update_or_create(
        code="UCITS", defaults={"name": "UCITS funds"}
    )

    brokers = {}
    for i, (code, name, bic, rank, (bps, per_share, minimum, fees)) in enumerate(BROKERS):
        broker, _ = Broker.objects.update_or_create(
            code=code, defaults={"name": name, "bic": bic, "rank": rank}
        )
        brokers[code] = broker
        CommissionSchedule.objects.update_or_create(
            broker=broker,
            defaults={
                "bps": Decimal(bps),
                "per_share": Decimal(per_share),
                "min_per_ticket": Decimal(minimum),
                "fees_bps": Decimal(fees),
            },
        )
        FixSession.objects.update_or_create(
            sender_comp_id=OUR_SENDER,
            target_comp_id=code,
            fix_version="FIX.4.4",
            defaults={
                "broker": broker,
                "host": fix_host,
                "port": fix_port,
                "heartbeat_seconds": 10 + i,
            },
        )

    now = timezone.now()
    counter = 0
    instruments: list[Any] = []

    def add_instrument(
        *,
        symbol: str,
        isin: str | None,
        name: str,
        asset_class: str,
        currency: str,
        issuer: Any,
        sector: str,
        country: str,
        lot: str,
        tick: str,
        cycle: int,
        cal: str,
        shares: Decimal | None,
        price: Decimal,
    ) -> None:
        inst, _ = Instrument.objects.update_or_create(
            symbol=symbol,
            defaults={
                "isin": isin,
                "name": name,
                "asset_class": asset_class,
                "currency": currency,
                "issuer": issuer,
                "sector": sector,
                "country": country,
                "lot_size": Decimal(lot),
                "tick_size": Decimal(tick),
                "settlement_cycle": cycle,
                "calendar_code": cal,
                "shares_outstanding": shares,
            },
        )
        half_spread = max(Decimal(tick), (price * Decimal("0.0005")).quantize(Decimal(tick)))
        ReferencePrice.objects.get_or_create(
            instrument=inst,
            defaults={
                "bid": price - half_spread,
                "ask": price + half_spread,
                "last": price,
                "as_of": now,
            },
        )
        instruments.append(inst)

    equity_issuers = []
    for country, currency, cal, cycle, prefix, count in EQUITY_MARKETS:
        for _ in range(count):
            counter += 1
            name = _name(rng)
            sector = SECTORS[counter % len(SECTORS)]
            issuer, _ = Issuer.objects.update_or_create(
                code=f"ISS{counter:04d}",
                defaults={"name": name, "country": country, "sector": sector},
            )
            equity_issuers.append(issuer)
            symbol = ("".join(w[0] for w in name.split()) + f"{counter:03d}").upper()
            price = Decimal(rng.randint(500, 50000)) / 100
            lot = "100" if country == "JP" else "1"
            tick = "1" if country == "JP" else "0.01"
            if country == "JP":
                price = Decimal(rng.randint(500, 9000))
            add_instrument(
                symbol=symbol,
                isin=make_isin(prefix, counter),
                name=name,
                asset_class="equity",
                currency=currency,
                issuer=issuer,
                sector=sector,
                country=country,
                lot=lot,
                tick=tick,
                cycle=cycle,
                cal=cal,
                shares=Decimal(rng.randint(50, 5000)) * 1_000_000,
                price=price,
            )
    for i, issuer in enumerate(equity_issuers[:40]):
        counter += 1
        add_instrument(
            symbol=f"{issuer.code}-B{2030 + i % 8}",
            isin=make_isin("XS", counter),
            name=f"{issuer.name} {3 + i % 5}% {2030 + i % 8}",
            asset_class="bond",
            currency="USD",
            issuer=issuer,
            sector=issuer.sector,
            country=issuer.country,
            lot="1000",
            tick="0.001",
            cycle=2,
            cal="XNYS",
            shares=None,
            price=Decimal(rng.randint(9000, 10500)) / 100,
        )
    gov, _ = Issuer.objects.update_or_create(
        code="GOVFX", defaults={"name": "FX market", "country": "US", "sector": "FX"}
    )
    for pair, px in [
        ("EURUSD", "1.0850"),
        ("GBPUSD", "1.2700"),
        ("USDJPY", "151.20"),
        ("AUDUSD", "0.6600"),
        ("USDCHF", "0.8800"),
        ("USDCAD", "1.3600"),
        ("NZDUSD", "0.6100"),
        ("EURGBP", "0.8550"),
    ]:
        add_instrument(
            symbol=pair,
            isin=None,
            name=f"{pair[:3]}/{pair[3:]} spot",
            asset_class="fx",
            currency=pair[3:],
            issuer=gov,
            sector="FX",
            country="US",
            lot="1000",
            tick="0.0001",
            cycle=2,
            cal="XNYS",
            shares=None,
            price=Decimal(px),
        )
    cme, _ = Issuer.objects.update_or_create(
        code="CME", defaults={"name": "CME Group", "country": "US", "sector": "Financials"}
    )
    for sym, px in [
        ("ESZ6", "5900.00"),
        ("NQZ6", "20500.00"),
        ("CLF7", "72.50"),
        ("GCG7", "2650.00"),
        ("ZNH7", "110.50"),
    ]:
        add_instrument(
            symbol=sym,
            isin=None,
            name=f"{sym} future",
            asset_class="future",
            currency="USD",
            issuer=cme,
            sector="Derivatives",
            country="US",
            lot="1",
            tick="0.25" if sym.startswith(("ES", "NQ")) else "0.01",
            cycle=1,
            cal="XNYS",
            shares=None,
            price=Decimal(px),
        )
    for i, issuer in enumerate(equity_issuers[:10]):
        counter += 1
        add_instrument(
            symbol=f"{issuer.code}-C{100 + i * 5}",
            isin=None,
            name=f"{issuer.name} call {100 + i * 5}",
            asset_class="option",
            currency="USD",
            issuer=issuer,
            sector=issuer.sector,
            country="US",
            lot="1",
            tick="0.01",
            cycle=1,
            cal="XNYS",
            shares=None,
            price=Decimal(rng.randint(100, 2000)) / 100,
        )
    chain, _ = Issuer.objects.update_or_create(
        code="CRYPTO", defaults={"name": "Crypto networks", "country": "US", "sector": "Crypto"}
    )
    for sym, px in [
        ("BTCUSD", "91000.00"),
        ("ETHUSD", "3100.00"),
        ("SOLUSD", "140.00"),
        ("ADAUSD", "0.4500"),
        ("XRPUSD", "2.1000"),
        ("DOTUSD", "4.2000"),
        ("LTCUSD", "85.00"),
        ("AVAXUSD", "25.00"),
    ]:
        add_instrument(
            symbol=sym,
            isin=None,
            name=f"{sym[:-3]} / USD",
            asset_class="crypto",
            currency="USD",
            issuer=chain,
            sector="Crypto",
            country="US",
            lot="0.0001",
            tick="0.01" if Decimal(px) > 10 else "0.0001",
            cycle=0,
            cal="24/7",
            shares=None,
            price=Decimal(px),
        )

    cust_codes = list(custodians)
    us_equities = [i for i in instruments if i.asset_class == "equity" and i.country == "US"]
    accounts = []
    for n in range(1, 31):
        code = f"ACC{n:03d}"
        account, created = Account.objects.update_or_create(
            code=code,
            defaults={
                "name": f"Demo Fund {n}",
                "client": f"Client {(n - 1) // 3 + 1}",
                "custodian": custodians[cust_codes[(n - 1) % 3]],
                "custodian_account": f"{cust_codes[(n - 1) % 3]}-{100000 + n}",
                "desk": desk if n <= 20 else desk2,
                "base_currency": "USD",
                "short_selling_allowed": n % 5 == 0,
            },
        )
        account.managers.add(users["pm1"] if n <= 15 else users["pm2"])
        account.groups.add(group_pension if n % 2 == 0 else group_ucits)
        accounts.append(account)
        if created or not CashBalance.objects.filter(account=account).exists():
            CashBalance.objects.get_or_create(
                account=account,
                currency="USD",
                defaults={"settled": Decimal(10_000_000 + n * 100_000)},
            )
            for inst in us_equities[(n * 3) % 150 : (n * 3) % 150 + 5]:
                Position.objects.get_or_create(
                    account=account,
                    instrument=inst,
                    defaults={"quantity": Decimal(1000 * (1 + n % 4)), "avg_cost": inst.price.last},
                )
    rules = _seed_compliance(instruments=instruments, issuers=equity_issuers)
    _ = settings
    return {
        "rules": rules,
        "users": len(users),
        "instruments": len(instruments),
        "accounts": len(accounts),
        "custodians": len(custodians),
        "brokers": len(brokers),
    }


DEMO_RULES = [
    # (name, rule_type, severity, params)
    ("Restricted list", "restricted_list", "block", {}),
    (
        "Fat finger (warn)",
        "fat_finger",
        "warn",
        {"max_quantity": "100000", "max_notional": "5000000", "max_price_deviation_pct": "10"},
    ),
    ("Fat finger (hard limit)", "fat_finger", "block", {"max_notional": "25000000"}),
    ("Buying power", "buying_power", "block", {}),
    ("Holdings and short selling", "short_selling", "block", {}),
    ("Issuer concentration 10%", "concentration", "warn", {"dimension": "issuer", "max_pct": "10"}),
    (
        "Sector concentration 40%",
        "concentration",
        "block",
        {"dimension": "sector", "max_pct": "40"},
    ),
    ("Ownership 5% of shares outstanding", "ownership", "warn", {"max_pct": "5"}),
    ("Conflicting orders", "conflicting_orders", "warn", {}),
    ("Duplicate orders within 60 s", "duplicate_orders", "warn", {"window_seconds": "60"}),
]


def _seed_compliance(*, instruments: list[Any], issuers: list[Any]) -> int:
    """Demo rules and restricted-list entries (two instruments and one whole issuer)."""
    from compliance.models import RestrictedEntry, Rule

    for name, rule_type, severity, params in DEMO_RULES:
        Rule.objects.get_or_create(
            name=name, defaults={"rule_type": rule_type, "severity": severity, "params": params}
        )
    equities = [i for i in instruments if i.asset_class == "equity"]
    for inst, reason in (
        (equities[7], "Inside information: pending merger"),
        (equities[42], "Sanctions screening"),
    ):
        RestrictedEntry.objects.get_or_create(
            instrument=inst, account=None, defaults={"reason": reason, "source": "demo"}
        )
    RestrictedEntry.objects.get_or_create(
        issuer=issuers[99],
        account=None,
        defaults={"reason": "Firm is underwriter of a pending offering", "source": "demo"},
    )
    return Rule.objects.count()
