"""API routes of the allocations app (the book): mounted under /api/v1/."""

from django.urls import path

from allocations.api import views

urlpatterns = [
    path("accounts/", views.AccountListView.as_view(), name="api-accounts"),
    path("accounts/<str:code>/", views.AccountDetailView.as_view(), name="api-account"),
    path("executions/", views.ExecutionListView.as_view(), name="api-executions"),
    path("executions/<int:pk>/", views.ExecutionDetailView.as_view(), name="api-execution"),
    path("allocations/", views.AllocationListView.as_view(), name="api-allocations"),
    path(
        "allocations/reallocate/", views.ReallocateView.as_view(), name="api-allocations-reallocate"
    ),
    path("allocations/<int:pk>/", views.AllocationDetailView.as_view(), name="api-allocation"),
    path("positions/", views.PositionListView.as_view(), name="api-positions"),
    path("cash/", views.CashListView.as_view(), name="api-cash"),
]
