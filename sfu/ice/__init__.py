"""ICE: a sans-IO full ICE agent (RFC 8445, 8838 trickle, 7675 consent) and candidate helpers."""

from .agent import IceAgent, IceConfig, IceRole, IceState
from .candidate import (
    Candidate,
    CandidateType,
    candidate_foundation,
    candidate_priority,
    is_mdns_name,
)
from .checklist import CandidatePair, PairState, pair_priority
from .events import (
    ConsentExpired,
    FirstCheckSent,
    IceEvent,
    IceStateChanged,
    RemoteCandidateDiscovered,
    SelectedPairChanged,
)
from .stun import is_stun, stun_username

__all__ = [
    "Candidate",
    "CandidatePair",
    "CandidateType",
    "ConsentExpired",
    "FirstCheckSent",
    "IceAgent",
    "IceConfig",
    "IceEvent",
    "IceRole",
    "IceState",
    "IceStateChanged",
    "PairState",
    "RemoteCandidateDiscovered",
    "SelectedPairChanged",
    "candidate_foundation",
    "candidate_priority",
    "is_mdns_name",
    "is_stun",
    "pair_priority",
    "stun_username",
]
