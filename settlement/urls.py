"""Browser pages of the back office."""

from django.urls import path

from settlement import views

urlpatterns = [path("backoffice/", views.backoffice, name="backoffice")]
