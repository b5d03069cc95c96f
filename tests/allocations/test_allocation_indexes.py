"""The allocation table's indexes: each costs a 1,000-account fill 1,000 insertions, so the set
is kept to the look-ups that need one (see Allocation.Meta and migrations 0003, 0005, 0009)."""

from __future__ import annotations

from typing import Any

from django.db import connection


def test_the_allocation_table_has_exactly_its_seven_indexes(db: Any) -> None:
    # given the migrated schema
    # when the allocation table's index definitions are read
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes "
            "WHERE tablename = 'allocations_allocation' ORDER BY indexname"
        )
        found = cursor.fetchall()
    # then the trade date's index is keyed by the date alone, the account included
    assert found == [
        ("allocation_cash_due_idx", "btree (settlement_date) WHERE (NOT cash_settled)"),
        ("allocation_order_block_id_idx", "btree (order_id, block_id, id)"),
        ("allocation_trade_date_idx", "btree (trade_date) INCLUDE (account_id)"),
        ("allocations_allocation_account_id_fa2f12b8", "btree (account_id)"),
        ("allocations_allocation_block_id_65837d91", "btree (block_id)"),
        ("allocations_allocation_execution_id_9e78bf50", "btree (execution_id)"),
        ("allocations_allocation_pkey", "btree (id)"),
    ]
