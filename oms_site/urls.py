"""Top-level URLs: pages, admin, accounts, the API and its schema."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from oms_site import views

api_v1 = [
    path("auth/token/", views.ObtainTokenView.as_view(), name="api-token"),
    path("", include("orders.api.urls")),
    path("", include("allocations.api.urls")),
    path("", include("compliance.api.urls")),
    path("", include("settlement.api.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", views.logout_view, name="logout"),
    path("healthz/", views.healthz, name="healthz"),
    path("admin/login/", views.ThrottledLoginView.as_view(), name="admin-login"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("orders.urls")),
    path("", include("compliance.urls")),
    path("", include("settlement.urls")),
]
