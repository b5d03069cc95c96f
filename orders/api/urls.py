"""API routes of the orders app: entry/lifecycle (order_urls) and routing (routing_urls)."""

from django.urls import include, path

urlpatterns = [
    path("", include("orders.api.order_urls")),
    path("", include("orders.api.routing_urls")),
]
