"""Browser pages of the back office."""

from django.urls import path

from settlement import views

urlpatterns = [
    path("backoffice/", views.backoffice, name="backoffice"),
    path("backoffice/runs/", views.run_now, name="backoffice-run"),
    path("backoffice/statements/", views.statement_upload, name="backoffice-statement"),
    path(
        "backoffice/breaks/<int:pk>/resolve/", views.break_resolve, name="backoffice-break-resolve"
    ),
    path("reports/<slug:name>/", views.report_page, name="report-page"),
]
