"""API routes (routing_urls)."""

urlpatterns: list = []
