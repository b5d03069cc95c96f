"""API routes of the settlement app (settlement files, reconciliation, reports)."""

from django.urls import path

from settlement.api import views

urlpatterns = [
    path("settlement/runs/", views.SettlementRunsView.as_view(), name="settlement-runs"),
    path("settlement/files/", views.SettlementFileListView.as_view(), name="settlement-files"),
    path(
        "settlement/files/<int:pk>/",
        views.SettlementFileDetailView.as_view(),
        name="settlement-file",
    ),
    path(
        "settlement/files/<int:pk>/download/",
        views.SettlementFileDownloadView.as_view(),
        name="settlement-file-download",
    ),
    path(
        "reconciliation/statements/",
        views.StatementsView.as_view(),
        name="reconciliation-statements",
    ),
    path("reconciliation/breaks/", views.BreakListView.as_view(), name="reconciliation-breaks"),
    path(
        "reconciliation/breaks/<int:pk>/resolve/",
        views.BreakResolveView.as_view(),
        name="reconciliation-break-resolve",
    ),
    path("reports/", views.ReportListView.as_view(), name="reports"),
    path("reports/<slug:name>/", views.ReportView.as_view(), name="report"),
]
