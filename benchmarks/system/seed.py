"""Seed the run's private database: migrate, demo data, API tokens; print what clients need.

Run as `python -m benchmarks.system.seed --fix-port N` with the run's DATABASE_URL; prints one
line `SEED{json}` with the tokens, each PM's routable accounts (those of the desk that has a
trader), US equities to trade and existing holdings to sell from.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from allocations.models import Account, CashBalance, Position
    from compliance.models import RestrictedEntry
    from oms_site.demo import seed_demo
    from orders.models import Instrument

    parser = argparse.ArgumentParser()
    parser.add_argument("--fix-port", type=int, required=True)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    seed_demo(fix_port=args.fix_port)
    users = get_user_model().objects.filter(
        username__in=["pm1", "pm2", "trader1", "compliance1", "backoffice1"]
    )
    tokens = {u.username: Token.objects.get_or_create(user=u)[0].key for u in users}
    # A day of orders must not run into buying power: the run measures the system, not limits.
    CashBalance.objects.update(settled=Decimal("1000000000"))
    restricted = set(RestrictedEntry.objects.values_list("instrument_id", flat=True))
    restricted_issuers = set(RestrictedEntry.objects.values_list("issuer_id", flat=True))
    instruments = [
        {"symbol": i.symbol, "price": str(i.price.last)}
        for i in Instrument.objects.filter(
            asset_class="equity", country="US", tradable=True, lot_size=1
        )
        .exclude(pk__in=restricted)
        .exclude(issuer_id__in=restricted_issuers)
        .select_related("price")
        .order_by("symbol")
        if Decimal(5) <= i.price.last <= Decimal(400)
    ]
    accounts: dict[str, list[str]] = {}
    holdings: dict[str, list[tuple[str, str, str]]] = {}
    for pm in ("pm1", "pm2"):
        # Only the EQ desk has a trader: orders of the other desk's accounts could never route.
        mine = Account.objects.filter(managers__username=pm, desk__code="EQ", active=True)
        accounts[pm] = sorted(mine.values_list("code", flat=True))
        holdings[pm] = [
            (p.account.code, p.instrument.symbol, str(p.instrument.price.last))
            for p in Position.objects.filter(account__in=mine, quantity__gte=1000)
            .exclude(instrument_id__in=restricted)
            .exclude(instrument__issuer_id__in=restricted_issuers)
            .select_related("account", "instrument__price")
        ]
    print(
        "SEED"
        + json.dumps(
            {
                "tokens": tokens,
                "accounts": accounts,
                "holdings": holdings,
                "instruments": instruments,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
