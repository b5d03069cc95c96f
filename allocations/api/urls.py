"""API routes of the allocations app."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
