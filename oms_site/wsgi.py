"""WSGI entry point (management and tools; the web server runs ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oms_site.settings")
application = get_wsgi_application()
