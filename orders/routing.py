"""Websocket URL routes."""

from django.urls import path

from orders.consumers import BlotterConsumer

websocket_urlpatterns = [path("ws/blotter/", BlotterConsumer.as_asgi())]
