"""API routes (order_urls)."""

urlpatterns: list = []
