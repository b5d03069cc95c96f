"""Browser pages of the trading desk and PMs."""

from django.urls import path

from orders import views

urlpatterns = [
    path("blotter/", views.blotter, name="blotter"),
    path("pm/", views.pm_orders, name="pm-orders"),
]
