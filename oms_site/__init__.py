"""The OMS project package: settings, URLs, ASGI, Celery, and the shared kernel."""

from oms_site.celery import app as celery_app

__all__ = ["celery_app"]
