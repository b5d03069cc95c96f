"""Write services of the orders app, one module per area.

- `orders.services.orders`: order entry, amend, cancel, release, expiry, baskets, blocks.
- `orders.services.routing`: routing (outbox), best execution, kill switch.
- `orders.services.executions`: execution reports applied to placements, orders and blocks.

Import from the submodule (`from orders.services.orders import order_create`).
"""
