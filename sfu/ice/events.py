"""Typed events an ``IceAgent`` hands out through ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .candidate import Candidate

if TYPE_CHECKING:
    from .agent import IceState
    from .checklist import CandidatePair

__all__ = [
    "ConsentExpired",
    "FirstCheckSent",
    "IceEvent",
    "IceStateChanged",
    "RemoteCandidateDiscovered",
    "SelectedPairChanged",
]


@dataclass(frozen=True)
class IceStateChanged:
    """The agent entered ``state``; ``reason`` says why for FAILED, DISCONNECTED and CLOSED."""

    state: IceState
    reason: str | None = None


@dataclass(frozen=True)
class SelectedPairChanged:
    """Media now goes over ``pair`` (its ``socket_key`` and ``remote.addr``)."""

    pair: CandidatePair


@dataclass(frozen=True)
class FirstCheckSent:
    """The first check toward ``remote`` was handed out by ``datagrams_to_send``.

    A server behind a NAT may withhold its own candidates until this (container NAT race).
    """

    remote: Candidate


@dataclass(frozen=True)
class RemoteCandidateDiscovered:
    """A peer-reflexive remote candidate was learned from an incoming check."""

    candidate: Candidate


@dataclass(frozen=True)
class ConsentExpired:
    """No consent response for ``consent_timeout`` (RFC 7675): stop sending media."""

    reason: str


IceEvent = (
    IceStateChanged
    | SelectedPairChanged
    | FirstCheckSent
    | RemoteCandidateDiscovered
    | ConsentExpired
)
