"""What an API key may hold. Stdlib only: the config and the endpoint commands both use it.

Messages here never include the key, nor any part of it.
"""

from __future__ import annotations

import re

#: RFC 6750's bearer token characters. The deployment's key goes into an HTTP header, into a
#: systemd EnvironmentFile (which reads quotes and backslashes) and through Ansible (which would
#: template a "{{"), so it holds nothing else.
DEPLOYMENT_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")
MAX_KEY_LENGTH = 1024
GENERATE_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def deployment_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be the key a deployment serves with, or None."""
    if not key.strip():
        return "is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if not DEPLOYMENT_KEY.fullmatch(key):
        return f"may hold only ASCII letters, digits and - . _ ~ + / =; {GENERATE_HINT}"
    return None


def client_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be sent to a server (an HTTP header carries printable ASCII only), or None."""
    if len(key) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if not all(" " <= char <= "~" for char in key):
        return ("holds a character an HTTP header cannot carry (non-ASCII or a control character); "
                "check that it is the deployment's key")
    return None
