"""A URLconf with only the orders-entry API, to check its part of the OpenAPI schema alone."""

from django.urls import include, path

urlpatterns = [path("api/v1/", include("orders.api.order_urls"))]
