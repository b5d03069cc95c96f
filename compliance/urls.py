"""Browser pages of compliance officers."""

from django.urls import path

from compliance import views

urlpatterns = [path("compliance/", views.queue, name="compliance-queue")]
