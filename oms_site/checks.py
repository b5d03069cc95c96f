"""System checks of the project's own deployment rules (run by `manage.py check --deploy`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register

# The fallback SECRET_KEY in settings.py starts with this: it is public, so it signs nothing
# in production (sessions, CSRF tokens, password reset links could all be forged).
DEV_SECRET_KEY_PREFIX = "dev-only-"


@register(Tags.security, deploy=True)
def check_secret_key_is_not_the_development_one(app_configs: Any, **kwargs: Any) -> list[Any]:
    """Django's own check accepts the long development key; production must set its own."""
    if str(settings.SECRET_KEY).startswith(DEV_SECRET_KEY_PREFIX):
        return [
            Warning(
                "SECRET_KEY is the development fallback from settings.py, which is public.",
                hint="Set the SECRET_KEY environment variable to 50 or more random characters.",
                id="oms.W001",
            )
        ]
    return []
