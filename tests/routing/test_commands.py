"""manage.py fix_session: add (validated, audited), list, enable, disable."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from oms_site.models import AuditEvent
from orders.models import FixSession
from tests import factories as f

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("fix_session", *args, stdout=out)
    return out.getvalue()


def test_add_list_disable_enable():
    f.BrokerFactory(code="BRKZ")
    assert run("add", "--broker", "BRKZ", "--port", "9900", "--heartbeat", "15") == (
        f"added FIX.4.4:OMS->BRKZ (id {FixSession.objects.get().pk})\n"
    )
    session = FixSession.objects.get()
    assert (session.host, session.port, session.target_comp_id, session.heartbeat_seconds) == (
        "127.0.0.1",
        9900,
        "BRKZ",
        15,
    )
    assert "FIX.4.4:OMS->BRKZ" in run("list")
    run("disable", "FIX.4.4:OMS->BRKZ")
    assert FixSession.objects.get().enabled is False
    run("enable", str(session.pk))
    assert FixSession.objects.get().enabled is True
    assert list(
        AuditEvent.objects.filter(object_type="orders.fixsession")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["fix_session.added", "fix_session.disabled", "fix_session.enabled"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "port: must be 1..65535, got 70000"),
        (["--port", "9000", "--version", "FIX.5.0"], "version: must be one of FIX.4.2, FIX.4.4"),
        (["--port", "9000", "--heartbeat", "0"], "heartbeat: must be 1..3600 seconds, got 0"),
        (["--port", "9000", "--sender", "bad id"], "sender: CompID must be 1-32 of A-Z"),
        (["--port", "9000", "--host", "bad host!"], "host: not a host name or address"),
    ],
)
def test_add_validates(args, message):
    f.BrokerFactory(code="BRKZ")
    with pytest.raises(CommandError) as exc:
        run("add", "--broker", "BRKZ", *args)
    assert message in str(exc.value)
    assert FixSession.objects.count() == 0


def test_add_unknown_broker_and_duplicate():
    with pytest.raises(CommandError, match="broker: unknown broker 'NOPE'"):
        run("add", "--broker", "NOPE", "--port", "9000")
    f.BrokerFactory(code="BRKZ")
    run("add", "--broker", "BRKZ", "--port", "9000")
    with pytest.raises(CommandError, match="exists"):
        run("add", "--broker", "BRKZ", "--port", "9001")
