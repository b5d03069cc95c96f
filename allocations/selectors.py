"""Reads of accounts and the book, always starting from what the user may see."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import django_filters
from django.contrib.postgres.fields import ArrayField
from django.db.models import (
    CharField,
    DecimalField,
    Exists,
    ExpressionWrapper,
    F,
    Max,
    Min,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.expressions import RawSQL

from allocations.models import Account, Allocation, AllocationKind, CashBalance, Position
from oms_site.lookups import AnyOf
from oms_site.roles import role_keys, sees_everything
from orders import fx
from orders.models import Execution, Order


def account_scope_q(user: Any, prefix: str = "") -> Q:
    """A Q that keeps only rows of accounts the user is entitled to (prefix: path to account)."""
    if sees_everything(user):
        return Q()
    keys = role_keys(user)
    q = Q(pk__in=[])
    if "pm" in keys:
        q |= Q(**{f"{prefix}managers": user})
    if "trader" in keys:
        q |= Q(**{f"{prefix}desk__traders": user})
    return q


def accounts_visible_to(*, user: Any) -> QuerySet[Account]:
    """Accounts the user may see: PMs their own, traders their desks', oversight roles all."""
    qs = Account.objects.all()
    if sees_everything(user):
        return qs
    keys = role_keys(user)
    if not keys & {"pm", "trader"}:
        return qs.none()
    ids = Account.objects.filter(account_scope_q(user)).values("pk")
    return qs.filter(pk__in=ids)


def of_visible_accounts(qs: QuerySet, *, user: Any) -> QuerySet:
    """Rows of `qs` (with a non-null `account`) whose account the user may see.

    Oversight roles see every account: their rows are not filtered by a semi-join with the
    whole accounts table (the same rows, every account key being a real account), which only
    made a year's count of 920,000 allocations hash-join 1,000 accounts (120 -> 35 ms).
    """
    if sees_everything(user):
        return qs
    return qs.filter(account__in=accounts_visible_to(user=user))


def account_ids_visible_to(*, user: Any) -> set[int]:
    """The ids of the accounts the user may see."""
    return set(accounts_visible_to(user=user).values_list("pk", flat=True))


# --------------------------------------------------------------------------------------------
# The book: positions, cash, allocations, executions, NAV (issue 6)
# --------------------------------------------------------------------------------------------

_MONEY_OUT: Any = DecimalField(max_digits=38, decimal_places=8)


def _reference_price() -> Any:
    return F("instrument__price__last")


def positions_visible_to(*, user: Any) -> QuerySet[Position]:
    """Positions of visible accounts, with market price, market value and unrealised P&L.

    Market value is quantity × the instrument's reference (last) price, in the instrument's
    currency; a position without a reference price has none.
    """
    qs = of_visible_accounts(Position.objects.all(), user=user)
    return (
        qs.select_related("account", "instrument", "instrument__price")
        .annotate(
            market_price=_reference_price(),
            market_value=ExpressionWrapper(
                F("quantity") * _reference_price(), output_field=_MONEY_OUT
            ),
            unrealised_pnl=ExpressionWrapper(
                F("quantity") * (_reference_price() - F("avg_cost")), output_field=_MONEY_OUT
            ),
        )
        .order_by("account__code", "instrument__symbol")
    )


def cash_visible_to(*, user: Any) -> QuerySet[CashBalance]:
    """Cash balances (settled and pending, per currency) of visible accounts."""
    return (
        of_visible_accounts(CashBalance.objects.all(), user=user)
        .select_related("account")
        .annotate(total=ExpressionWrapper(F("settled") + F("pending"), output_field=_MONEY_OUT))
        .order_by("account__code", "currency")
    )


def allocations_visible_to(*, user: Any) -> QuerySet[Allocation]:
    """Allocation rows of visible accounts, newest first.

    A PM's or trader's account ids are read first and sent as one array: PostgreSQL then
    knows how many accounts (and so how many of the table's rows) the page is drawn from, and
    walks the newest rows by primary key instead of reading, joining and sorting every row of
    the accounts for a page of 50 (a PM of 15 accounts among 1,000, 13,800 of 920,000 rows:
    30 -> 2 ms).
    """
    qs = Allocation.objects.all()
    if not sees_everything(user):
        ids = list(accounts_visible_to(user=user).values_list("pk", flat=True))
        qs = qs.filter(AnyOf(F("account_id"), ids))
    return qs.select_related("account", "instrument", "broker").order_by("-pk")


def _execution_ids(orders: Any, blocks: Any) -> QuerySet[Execution, Any]:
    """Ids of the executions of these orders or blocks: directly or through a placement.

    `orders` and `blocks` are what an `__in` (or an exact lookup) takes. Why a union of
    four reads instead of one OR of the four conditions (same rows): PostgreSQL cannot answer
    an OR spanning the execution and its placement from indexes, so it walked the whole
    executions table backwards by primary key, joining every row's placement, until it had
    a page (40-80 ms for one order's 3 fills at 50,000 executions). Each branch here is an
    index scan, and the planner sees how few rows they give.
    """
    own = Execution.objects.values("pk")
    return own.filter(order_id__in=orders).union(
        own.filter(block_id__in=blocks),
        own.filter(placement__order_id__in=orders),
        own.filter(placement__block_id__in=blocks),
        all=True,
    )


def executions_of_block(block_id: Any) -> Q:
    """Executions of a block: its own, or through one of its placements."""
    return Q(pk__in=_execution_ids([], [block_id]))


def executions_of_order(order_id: Any) -> Q:
    """Executions of an order: its own or its block's, directly or through a placement."""
    return Q(
        pk__in=_execution_ids([order_id], Order.objects.filter(pk=order_id).values("block_id"))
    )


def executions_visible_to(*, user: Any, few: bool = False) -> QuerySet[Execution]:
    """Executions of visible orders, or of blocks holding at least one visible order.

    `few`: the caller narrows the list to a few rows (an order's, a block's, a day's). The
    same rows either way; only the shape of the check differs. With `few`, each row is
    checked by four EXISTS (an index probe each: ?order= of a PM's order 101 -> 3 ms at
    50,000 executions); without, PostgreSQL hashes the user's orders and blocks once and
    scans, which is cheaper for the whole list (the EXISTS shape: 79 -> 95 ms for a PM).
    """
    qs = Execution.objects.select_related("broker", "instrument", "placement")
    if sees_everything(user):
        return qs.order_by("-pk")
    if not role_keys(user) & {"pm", "trader"}:
        return qs.none()
    if few:
        ids = list(accounts_visible_to(user=user).values_list("pk", flat=True))
        visible = Order.objects.filter(AnyOf(F("account_id"), ids))
        return qs.filter(
            Exists(visible.filter(pk=OuterRef("order_id")))
            | Exists(visible.filter(block_id=OuterRef("block_id")))
            | Exists(visible.filter(pk=OuterRef("placement__order_id")))
            | Exists(visible.filter(block_id=OuterRef("placement__block_id")))
        ).order_by("-pk")
    visible_orders = Order.objects.filter(account_scope_q(user, prefix="account__"))
    order_ids = visible_orders.values("pk")
    block_ids = visible_orders.filter(block__isnull=False).values("block_id")
    return qs.filter(
        Q(order_id__in=order_ids)
        | Q(placement__order_id__in=order_ids)
        | Q(block_id__in=block_ids)
        | Q(placement__block_id__in=block_ids)
    ).order_by("-pk")


# Every non-zero amount of an account's book with its currency: positions at their reference
# price (a position without one counts nothing, as before) and cash of every currency.
_BOOK_AMOUNTS = (
    "SELECT p.quantity * rp.last AS amount, i.currency AS cur FROM allocations_position p"
    " JOIN orders_instrument i ON i.id = p.instrument_id"
    " JOIN orders_referenceprice rp ON rp.instrument_id = p.instrument_id"
    ' WHERE p.account_id = "allocations_account"."id" AND p.quantity <> 0'
    " UNION ALL SELECT c.settled + c.pending, c.currency FROM allocations_cashbalance c"
    ' WHERE c.account_id = "allocations_account"."id" AND c.settled + c.pending <> 0'
)
# Each amount with its rate to the account's base currency (NULL: no rate); the rates come as
# three arrays from orders.fx (same currency: 1).
_CONVERTED = (
    'SELECT m.amount, m.cur, CASE WHEN m.cur = "allocations_account"."base_currency"'
    " THEN 1::numeric ELSE (SELECT r.rate FROM unnest(%s::text[], %s::text[], %s::numeric[])"
    ' AS r(src, dst, rate) WHERE r.src = m.cur AND r.dst = "allocations_account"."base_currency")'
    f" END AS rate FROM ({_BOOK_AMOUNTS}) m"
)
_NAV_SQL = (
    "(SELECT CASE WHEN bool_or(x.rate IS NULL) THEN NULL"
    f" ELSE COALESCE(SUM(x.amount * x.rate), 0) END FROM ({_CONVERTED}) x)"
)
_NAV_MISSING_SQL = (
    'ARRAY(SELECT DISTINCT x.cur || \'/\' || "allocations_account"."base_currency"'
    f" FROM ({_CONVERTED}) x WHERE x.rate IS NULL ORDER BY 1)"
)


def _rate_params() -> tuple[list[str], list[str], list[Decimal]]:
    # Read afresh (one query): through the refdata cache it would be one or two (the version,
    # then the rates when it changed), and the book's reads are not a hot path.
    return fx.load().table()


# Constant statements; the rates are bound parameters.
def _nav_expression(params: tuple[list[str], list[str], list[Decimal]]) -> Any:
    return RawSQL(_NAV_SQL, params, output_field=_MONEY_OUT)  # noqa: S611


def _nav_missing_expression(params: tuple[list[str], list[str], list[Decimal]]) -> Any:
    return RawSQL(_NAV_MISSING_SQL, params, output_field=ArrayField(CharField()))  # noqa: S611


def accounts_with_book(*, user: Any) -> QuerySet[Account]:
    """Visible accounts with their cash balances prefetched, `nav` and `nav_missing_rates`.

    NAV is in the account's base currency: cash (settled + pending) of every currency plus the
    market value of positions at reference prices (a position without a reference price counts
    nothing), each converted at `orders.fx`'s rate to the base currency. When some non-zero
    amount has no rate, `nav` is None (never a partial sum) and `nav_missing_rates` names the
    missing rates ("JPY/USD"), sorted; otherwise it is empty.
    """
    params = _rate_params()
    return (
        accounts_visible_to(user=user)
        .select_related("custodian", "desk")
        .prefetch_related(
            Prefetch("cash_balances", queryset=CashBalance.objects.order_by("currency"))
        )
        .annotate(nav=_nav_expression(params), nav_missing_rates=_nav_missing_expression(params))
        .order_by("code")
    )


def account_nav(*, account_id: int) -> Decimal:
    """One account's NAV in its base currency (see accounts_with_book); 0 for no such account.

    Raises fx.MissingRate naming every missing rate rather than returning a partial NAV.
    """
    params = _rate_params()
    found = (
        Account.objects.filter(pk=account_id)
        .annotate(nav=_nav_expression(params), missing=_nav_missing_expression(params))
        .values("nav", "missing", "base_currency")
        .first()
    )
    if found is None:
        return Decimal(0)
    if found["nav"] is None:
        raise fx.MissingRate(tuple(label.split("/")) for label in found["missing"])
    return found["nav"]  # type: ignore[no-any-return]


def allocation_net_lines(*, trade_date: date, custodian_id: int | None = None) -> list[dict]:
    """Allocation rows netted per (order, block, trade date): one settlement instruction each.

    The sums of an order's rows are its allocation at the block's average price (see
    allocations.services); the price is that of the latest row. Orders whose quantity nets to
    zero (fully reversed) are left out.
    """
    qs = Allocation.objects.filter(trade_date=trade_date)
    if custodian_id is not None:
        qs = qs.filter(account__custodian_id=custodian_id)
    latest = Allocation.objects.filter(
        order=OuterRef("order"), trade_date=trade_date, block=OuterRef("block")
    ).order_by("-pk")
    rows = (
        qs.values("order", "block", "account", "instrument", "broker", "side", "currency")
        .annotate(
            quantity=Sum("quantity"),
            gross=Sum("gross"),
            commission=Sum("commission"),
            fees=Sum("fees"),
            net=Sum("net"),
            settlement_date=Max("settlement_date"),
            first_id=Min("pk"),
            price=Subquery(latest.values("price")[:1]),
        )
        .order_by("first_id")
    )
    return [dict(r, trade_date=trade_date) for r in rows if r["quantity"]]


class _CodeInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    """A comma-separated list of codes (`?account=ACC001,ACC002`)."""


class PositionFilter(django_filters.FilterSet):
    """?account=<code> (comma-separated for several), ?instrument=<symbol>."""

    account = _CodeInFilter(field_name="account__code")
    instrument = django_filters.CharFilter(field_name="instrument__symbol")

    class Meta:
        model = Position
        fields: list[str] = []


class CashFilter(django_filters.FilterSet):
    """?account=<code>, ?currency=."""

    account = _CodeInFilter(field_name="account__code")
    currency = django_filters.CharFilter(field_name="currency")

    class Meta:
        model = CashBalance
        fields: list[str] = []


class AllocationFilter(django_filters.FilterSet):
    """?account=<code>&trade_date=&order=&block=&execution=&kind=&cash_settled=."""

    account = _CodeInFilter(field_name="account__code")
    trade_date = django_filters.DateFilter(field_name="trade_date")
    trade_date_after = django_filters.DateFilter(field_name="trade_date", lookup_expr="gte")
    trade_date_before = django_filters.DateFilter(field_name="trade_date", lookup_expr="lte")
    order = django_filters.NumberFilter(field_name="order_id")
    block = django_filters.NumberFilter(field_name="block_id")
    execution = django_filters.NumberFilter(field_name="execution_id")
    instrument = django_filters.CharFilter(field_name="instrument__symbol")
    kind = django_filters.ChoiceFilter(choices=AllocationKind.choices)
    cash_settled = django_filters.BooleanFilter(field_name="cash_settled")

    class Meta:
        model = Allocation
        fields: list[str] = []


class ExecutionFilter(django_filters.FilterSet):
    """?order=<id> (its own fills, or its block's) and ?block=<id>, ?trade_date=."""

    order = django_filters.NumberFilter(method="filter_order")
    block = django_filters.NumberFilter(method="filter_block")
    trade_date = django_filters.DateFilter(field_name="trade_date")

    class Meta:
        model = Execution
        fields: list[str] = []

    def filter_order(self, queryset: QuerySet, name: str, value: Any) -> QuerySet:
        return queryset.filter(executions_of_order(value))

    def filter_block(self, queryset: QuerySet, name: str, value: Any) -> QuerySet:
        return queryset.filter(executions_of_block(value))


class AccountFilter(django_filters.FilterSet):
    """?code=, ?desk=<code>, ?custodian=<code>."""

    code = _CodeInFilter(field_name="code")
    desk = django_filters.CharFilter(field_name="desk__code")
    custodian = django_filters.CharFilter(field_name="custodian__code")

    class Meta:
        model = Account
        fields: list[str] = []
