"""Schema-driven fuzzing: schemathesis reads /api/schema/ from the app and calls every operation.

Each generated request (valid and invalid bodies, query strings and headers) is sent through the
WSGI application as every role, with that role's API token, in a savepoint rolled back afterwards.
No response may be a 5xx; documented responses must match their schema and content type; and a
PM's or trader's response never carries the other PM's account (ACC-B), a role-less user's
carries no account at all. Path parameters are the world's ACC-A rows, so the bodies reach real
rows rather than 404. Deterministic: derandomized, no example database, a few examples each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from oms_site.wsgi import application
from tests.security.conftest import World
from tests.security.test_api_matrix import MATRIX, _value

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 6
FUZZ_ROLES = ("norole", "pm", "trader", "compliance", "backoffice", "admin")
# Which row of the world fills the path parameter of each templated route.
TARGETS = {
    "/"
    + op.route.replace("<int:pk>", "{id}")
    .replace("<str:code>", "{code}")
    .replace("<slug:name>", "{name}"): op.own
    for op in MATRIX
    if op.own
}
# Kill switches are firm-wide controls that every trader sees and may lift (API.md), target
# account included; every other response is held to FORBIDDEN.
FIRM_WIDE = ("/api/v1/kill-switch/", "/api/v1/kill-switch/{id}/lift/")
# What each role must never see in any response.
FORBIDDEN = {
    "norole": (b"ACC-A", b"ACC-B"),
    "pm": (b"ACC-B", b"pm_b"),
    "trader": (b"ACC-B", b"pm_b"),
}

# Examples from the schema and fuzzing, valid and invalid data; not the coverage phase (hundreds
# of boundary cases per operation) nor the stateful one.
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20261121,
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "generation": {"mode": "all", "deterministic": True, "database": "none"},
    }
)
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application, config=CONFIG)


@pytest.fixture(scope="module")
def tokens(world: World, django_db_blocker: Any) -> dict[str, str]:
    with django_db_blocker.unblock():
        return {role: Token.objects.create(user=world.users[role]).key for role in FUZZ_ROLES}


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    # Django closes "old" connections at the end of each WSGI request, which would end the
    # test's transaction; its own test client disconnects these handlers the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_fuzz(case: Any, world: World, tokens: dict[str, str]) -> None:
    target = TARGETS.get(case.path)
    if target is not None:
        name = next(iter(case.operation.path_parameters)).name
        case.path_parameters = {name: _value(world, target)}
    for role in FUZZ_ROLES:
        atomic = transaction.atomic()
        atomic._from_testcase = True  # type: ignore[attr-defined]
        with atomic:
            response = case.call(headers={"Authorization": f"Token {tokens[role]}"})
            transaction.set_rollback(True)
        case.validate_response(
            response,
            checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
        )
        for text in () if case.path in FIRM_WIDE else FORBIDDEN.get(role, ()):
            assert text not in response.content, (
                role,
                response.status_code,
                response.content[:500],
            )
