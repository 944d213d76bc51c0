"""The names a runner asks the gateway for, pure.

A runner reaches builder B through the gateway by asking (TLS SNI, and the name buildctl verifies)
for `B.<domain>`: the gateway's certificate covers `*.<domain>` and its map is keyed by these names.
The domain is never resolved (the runner connects to the gateway's address); it is not the
builders' own `*.svc` names, so the gateway's wildcard certificate is never valid for a builder's
own name. The grant certificate names B alone (its CN); the gateway requires the first label of
the asked name to equal it.
"""

from __future__ import annotations

import re

DEFAULT_DOMAIN = "builders.warmbuild.internal"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def gateway_server_name(builder: str, domain: str = DEFAULT_DOMAIN) -> str:
    """`<builder>.<domain>`; ValueError for a builder name that is not one DNS label."""
    if not _LABEL.match(builder):
        raise ValueError(f"builder name {builder!r} is not one DNS label: the gateway cannot route to it")
    return f"{builder}.{domain.strip('.').lower()}"


def check_domain(domain: str) -> str:
    """The domain, lower case; ValueError unless it is a DNS name of labels."""
    domain = domain.strip().strip(".").lower()
    if not domain or not all(_LABEL.match(label) for label in domain.split(".")):
        raise ValueError(f"gateway domain {domain!r} is not a DNS name")
    return domain
