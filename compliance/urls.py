"""Browser pages of compliance officers."""

from django.urls import path

from compliance import views

urlpatterns = [
    path("compliance/", views.queue, name="compliance-queue"),
    path("compliance/orders/<int:pk>/override/", views.override, name="compliance-override"),
    path("compliance/reports/run/", views.run_report, name="compliance-report-run"),
    path(
        "compliance/reports/<int:pk>/download/",
        views.report_download,
        name="compliance-report-csv",
    ),
]
