from django.apps import AppConfig


class OmsSiteConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "oms_site"
    verbose_name = "OMS kernel (audit)"

    def ready(self) -> None:
        from oms_site import checks  # noqa: F401  (registers the deploy checks)
