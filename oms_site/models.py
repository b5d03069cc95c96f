"""The audit kernel's tables: an append-only, hash-chained event log.

Events are chained per *stream* (one stream per audited object), so unrelated writers never wait
on one global lock; the stream head row is locked only by writers of the same object.
PostgreSQL itself refuses UPDATE and DELETE on the event table (see migration 0002).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class JsonTextField(models.JSONField):
    """A JSONField stored as PostgreSQL `json` (its text, checked) instead of `jsonb`.

    For the audit payloads, which are hashed as the canonical text the writer sends and only
    ever read back whole: jsonb parses every document into its binary tree on the way in, which
    for a 1,000-account fill's ~190 KB allocations payload was most of the audit write's
    PostgreSQL time (about 2.9 ms of CPU, against 0.1 ms for json's syntax check of the same
    text). json keeps the text exactly as sent, so what is stored is what was hashed; it has no
    equality or containment operators, so nothing filters on these columns by value (key paths
    still read). Read as text, like Django's jsonb columns, and parsed by `from_db_value`.
    """

    def db_type(self, connection: Any) -> str:
        return "json"

    def select_format(self, compiler: Any, sql: str, params: Any) -> Any:
        # psycopg would parse a json value itself (Django has it leave only jsonb as text), and
        # JSONField.from_db_value expects the text.
        return f"({sql})::text", params


class AuditEvent(models.Model):
    """One audited change: who, what, when, which object, before/after; never updated."""

    stream = models.CharField(max_length=200)
    seq = models.PositiveBigIntegerField()
    occurred_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=80)
    object_type = models.CharField(max_length=80)
    object_id = models.CharField(max_length=64)
    before = JsonTextField(null=True, blank=True)
    after = JsonTextField(null=True, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream", "seq"], name="audit_event_stream_seq_uniq"),
            models.CheckConstraint(condition=models.Q(seq__gte=1), name="audit_event_seq_positive"),
        ]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_event_object_idx"),
            models.Index(fields=["occurred_at"], name="audit_event_time_idx"),
            models.Index(fields=["action"], name="audit_event_action_idx"),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.stream}#{self.seq} {self.action}"


class AuditStream(models.Model):
    """Head of one hash chain: the last sequence number and hash written to the stream."""

    stream = models.CharField(max_length=200, primary_key=True)
    last_seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="")

    def __str__(self) -> str:
        return f"{self.stream}@{self.last_seq}"
