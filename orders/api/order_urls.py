"""API routes of order entry and lifecycle (mounted under /api/v1/)."""

from django.urls import path

from orders.api import views

urlpatterns = [
    path("instruments/", views.InstrumentListView.as_view(), name="api-instruments"),
    path("orders/", views.OrderListCreateView.as_view(), name="api-orders"),
    path("orders/<int:pk>/", views.OrderDetailView.as_view(), name="api-order-detail"),
    path("orders/<int:pk>/amend/", views.OrderAmendView.as_view(), name="api-order-amend"),
    path("orders/<int:pk>/cancel/", views.OrderCancelView.as_view(), name="api-order-cancel"),
    path("baskets/", views.BasketCreateView.as_view(), name="api-baskets"),
    path("blocks/", views.BlockListCreateView.as_view(), name="api-blocks"),
    path("blocks/<int:pk>/dissolve/", views.BlockDissolveView.as_view(), name="api-block-dissolve"),
]
