"""API routes of the settlement app."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
