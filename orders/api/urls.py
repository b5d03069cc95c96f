"""API routes of the orders app."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
