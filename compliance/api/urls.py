"""API routes of the compliance app."""

from django.urls import path

from compliance.api import views

urlpatterns = [
    path("orders/<int:pk>/override/", views.OrderOverrideView.as_view(), name="order-override"),
    path("compliance/queue/", views.QueueView.as_view(), name="compliance-queue-api"),
    path("compliance/reports/", views.ReportListView.as_view(), name="compliance-reports"),
    path(
        "compliance/reports/<int:pk>/",
        views.ReportDetailView.as_view(),
        name="compliance-report-detail",
    ),
    path(
        "compliance/reports/<int:pk>/download/",
        views.ReportDownloadView.as_view(),
        name="compliance-report-download",
    ),
    path("compliance/rules/", views.RuleListView.as_view(), name="compliance-rules"),
    path("compliance/rules/<int:pk>/", views.RuleDetailView.as_view(), name="compliance-rule"),
]
