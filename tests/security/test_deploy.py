"""Production settings: `check --deploy` is clean, and the hardening it relies on is in force."""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.core.checks import run_checks

ROOT = Path(__file__).resolve().parents[2]
DEV_KEY = "dev-only-Zs8Qw4Lm2Xv7Rt1Yp6Nc3Hb9Kd5Jf0Ga8Ue2Wo4Ti7Sl1Mr6Vq3Xe9Bh5"
PRODUCTION = {
    "DEBUG": "0",
    "HTTPS": "1",
    "SECRET_KEY": "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(64)),
    "ALLOWED_HOSTS": "oms.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://oms.example.com",
}
# `manage.py check --deploy --fail-level WARNING`, then the hardening settings it relies on, in
# one process (each start of manage.py costs seconds on a busy machine).
CHECK_AND_DUMP = """
import json
from django.conf import settings as s
from django.core.management import call_command
call_command("check", deploy=True, fail_level="WARNING")
print(json.dumps({name: getattr(s, name) for name in (
    "DEBUG", "ALLOWED_HOSTS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
    "SESSION_COOKIE_HTTPONLY", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_CONTENT_TYPE_NOSNIFF", "X_FRAME_OPTIONS",
    "CSRF_TRUSTED_ORIGINS", "SECURE_PROXY_SSL_HEADER",
)}))
"""


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in PRODUCTION}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_in_production_and_settings_are_hardened() -> None:
    result = _manage("shell", "-c", CHECK_AND_DUMP, env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "System check identified no issues (0 silenced)." in lines
    assert json.loads(lines[-1]) == {
        "DEBUG": False,
        "ALLOWED_HOSTS": ["oms.example.com"],
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "X_FRAME_OPTIONS": "DENY",
        "CSRF_TRUSTED_ORIGINS": ["https://oms.example.com"],
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }


def test_check_deploy_refuses_the_public_development_secret_key(settings: Any) -> None:
    # given production forgot SECRET_KEY: settings.py falls back to its (long, public) dev key,
    # which Django's own W009 accepts (in-process: a third manage.py start costs seconds)
    settings.SECRET_KEY = DEV_KEY
    # when / then
    ids = {m.id for m in run_checks(include_deployment_checks=True, tags=["security"])}
    assert "oms.W001" in ids
    assert "security.W009" not in ids
    settings.SECRET_KEY = PRODUCTION["SECRET_KEY"]
    assert "oms.W001" not in {
        m.id for m in run_checks(include_deployment_checks=True, tags=["security"])
    }


def test_the_development_key_is_the_settings_fallback() -> None:
    # the key the check above guards against is the one settings.py really falls back to
    source = (ROOT / "oms_site" / "settings.py").read_text()
    assert f'"{DEV_KEY}"' in source
