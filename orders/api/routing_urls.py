"""API routes of routing, the kill switch and FIX sessions (mounted under /api/v1/)."""

from django.urls import path

from orders.api import routing_views as views

urlpatterns = [
    path("orders/<int:pk>/route/", views.OrderRouteView.as_view(), name="api-order-route"),
    path("blocks/<int:pk>/route/", views.BlockRouteView.as_view(), name="api-block-route"),
    path("kill-switch/", views.KillSwitchListCreateView.as_view(), name="api-kill-switch"),
    path(
        "kill-switch/<int:pk>/lift/",
        views.KillSwitchLiftView.as_view(),
        name="api-kill-switch-lift",
    ),
    path("fix-sessions/", views.FixSessionListView.as_view(), name="api-fix-sessions"),
]
