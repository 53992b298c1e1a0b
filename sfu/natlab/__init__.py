"""natlab: Docker-like NATs, clients and coturn in Linux network namespaces (needs root).

`with Lab(LabSpec(...)) as lab:` builds a container behind a faithful Docker bridge host,
an "internet" router running coturn on 192.0.2.1, and clients behind the chosen NATs.
"""

from .coturn import Coturn, CoturnSpec, rest_credentials
from .netns import CommandError, LabError, LabUnavailable, UdpPeer
from .topology import (
    ClientHost,
    ClientKind,
    Lab,
    LabSpec,
    ServerMode,
    cleanup_stale,
    docker_ruleset,
)

__all__ = [
    "ClientHost",
    "ClientKind",
    "CommandError",
    "Coturn",
    "CoturnSpec",
    "Lab",
    "LabError",
    "LabSpec",
    "LabUnavailable",
    "ServerMode",
    "UdpPeer",
    "cleanup_stale",
    "docker_ruleset",
    "rest_credentials",
]
