"""The lab's matrix: server setups, client programs, flows, cells, and what each cell should do.

A *cell* is one server setup (how the server is deployed), one client kind (what stands between
the client and the internet), one flow (who offers), early checks on or off, one signaling delay
and one client program (aiortc, or Chromium). :func:`expectation` is the design's prediction for
a cell, with the reason, so a run can tell "failed as it must" from "failed".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .coturn import DEFAULT_USER
from .topology import HOST_IP, SERVICE_IP, STUN_PORT, ClientKind, PortSpec, ServerMode

HTTP_PORT = 8080
MEDIA_PORT = 40000
PROXY_PORT = 8000
REMAPPED_PORT = 50000
STUN = f"{SERVICE_IP}:{STUN_PORT}"
TURN_URL = f"turn:{SERVICE_IP}:{STUN_PORT}?transport=udp"
TURN_ARGS = ("--turn", TURN_URL, "--turn-user", DEFAULT_USER[0], "--turn-pass", DEFAULT_USER[1])


class Flow(enum.Enum):
    """Who sends the offer."""

    SERVER_OFFERS = "server-offers"  # streaming watch; the paper's Fig. 4
    CLIENT_OFFERS = "client-offers"  # echo test, client trickles after the offer (Fig. 5)


class Agent(enum.Enum):
    """The client program."""

    AIORTC = "aiortc"
    CHROMIUM = "chromium"

    @property
    def race_delay_ms(self) -> int:
        """From this one-way signaling delay on, this client's first check toward our srflx
        candidate reliably beats our reply when we do not check early (aiortc checks it ~40 ms
        after learning it, after our host candidate; Chromium ~50-100 ms after, so below
        100 ms it wins or loses the race by a few ms)."""
        return 50 if self is Agent.AIORTC else 100


@dataclass(frozen=True)
class ServerSetup:
    """One way of deploying the server, with the `sfu serve` flags that go with it."""

    name: str
    title: str
    mode: ServerMode
    args: tuple[str, ...] = ()
    published: tuple[tuple[PortSpec, PortSpec], ...] = ()
    host_firewall: bool = False
    needs_relay: bool = False

    @property
    def server_side_race(self) -> bool:
        """The server sits behind a NAT that remaps it when an unsolicited packet came first."""
        return self.mode is ServerMode.BRIDGE and not self.published and not self.host_firewall

    @property
    def drops_unsolicited(self) -> bool:
        """Only flows the server started get in (no published port, a default-deny firewall)."""
        return not self.published and self.host_firewall

    @property
    def reachable_unsolicited(self) -> bool:
        """Any client's packet reaches the server (public address or published port, no filter)."""
        return bool(self.published) or (
            self.mode in (ServerMode.HOST_NETWORK, ServerMode.MACVLAN) and not self.host_firewall
        )


SETUPS: tuple[ServerSetup, ...] = (
    ServerSetup("host", "host networking", ServerMode.HOST_NETWORK),
    ServerSetup(
        "host-fw",
        "host networking, INPUT drops new UDP",
        ServerMode.HOST_NETWORK,
        host_firewall=True,
    ),
    ServerSetup(
        "bridge-stun", "bridge, STUN only (the paper)", ServerMode.BRIDGE, ("--stun", STUN)
    ),
    ServerSetup(
        "bridge-stun-fw",
        "bridge, STUN only, Docker host INPUT drops new UDP",
        ServerMode.BRIDGE,
        ("--stun", STUN),
        host_firewall=True,
    ),
    ServerSetup(
        "bridge-range",
        f"bridge, published {MEDIA_PORT}-{MEDIA_PORT + 99}/udp, host address announced",
        ServerMode.BRIDGE,
        ("--announce", HOST_IP),
        published=((f"{MEDIA_PORT}-{MEDIA_PORT + 99}", f"{MEDIA_PORT}-{MEDIA_PORT + 99}"),),
    ),
    ServerSetup(
        "bridge-port",
        f"bridge, one published port {MEDIA_PORT}/udp, host address announced",
        ServerMode.BRIDGE,
        ("--announce", HOST_IP),
        published=((MEDIA_PORT, MEDIA_PORT),),
    ),
    ServerSetup(
        "bridge-port-remap",
        f"bridge, host port {REMAPPED_PORT} -> {MEDIA_PORT}/udp, "
        f"--announce {HOST_IP}:{REMAPPED_PORT}",
        ServerMode.BRIDGE,
        ("--announce", f"{HOST_IP}:{REMAPPED_PORT}"),
        published=((REMAPPED_PORT, MEDIA_PORT),),
    ),
    ServerSetup(
        "bridge-turn",
        "bridge, STUN + TURN (coturn), no published port",
        ServerMode.BRIDGE,
        ("--stun", STUN, *TURN_ARGS),
        needs_relay=True,
    ),
    ServerSetup("macvlan", "macvlan: the container's own public address", ServerMode.MACVLAN),
)
SETUP_BY_NAME = {s.name: s for s in SETUPS}
DEFAULT_SETUPS = tuple(s.name for s in SETUPS if s.name != "macvlan")


@dataclass(frozen=True)
class Expectation:
    """What a cell should do by design, and why."""

    ok: bool
    reason: str
    kind: str = "possible"  # "possible", "impossible", "race", "early-hurts"


class Trickle(enum.Enum):
    """When the aiortc client trickles its candidates in the client-offers flow."""

    AFTER_ANSWER = "answer"  # like the demo page: once the answer has arrived
    AFTER_OFFER = "offer"  # like an app sending onicecandidate at once


@dataclass(frozen=True)
class Cell:
    setup: ServerSetup
    client: ClientKind
    flow: Flow
    early: bool
    delay_ms: int
    agent: Agent = Agent.AIORTC
    trickle: Trickle = Trickle.AFTER_ANSWER

    @property
    def late_trickle(self) -> bool:
        """The client reveals its candidates only once it has the answer (and ours, if any)."""
        return self.agent is Agent.CHROMIUM or self.trickle is Trickle.AFTER_ANSWER

    @property
    def name(self) -> str:
        early = "on" if self.early else "off"
        text = (
            f"{self.setup.name} {self.client.value} {self.flow.value} "
            f"early={early} {self.delay_ms}ms"
        )
        if self.agent is not Agent.AIORTC:
            text += f" [{self.agent.value}]"
        elif self.flow is Flow.CLIENT_OFFERS and self.trickle is Trickle.AFTER_OFFER:
            text += " trickle=offer"
        return text

    @property
    def expected(self) -> Expectation | None:
        return expectation(self)


def expectation(cell: Cell) -> Expectation | None:
    """The outcome the design predicts (None: timing decides, no prediction)."""
    setup, client = cell.setup, cell.client
    if setup.needs_relay:
        return Expectation(True, "the relay works for every client; direct paths may win")
    if client is ClientKind.SYMMETRIC and not setup.reachable_unsolicited:
        return Expectation(
            False,
            "the client's port toward us is not its srflx port, and our side lets in only "
            "flows it started; needs a published port or TURN",
            "impossible",
        )
    if client is ClientKind.MASQUERADE and setup.server_side_race:
        return Expectation(
            False,
            "both NATs leave an UNREPLIED entry for the other's first packet, so whichever "
            "side sends second is remapped; needs a published port or TURN",
            "impossible",
        )
    if client is ClientKind.MASQUERADE and setup.drops_unsolicited and cell.early:
        return Expectation(
            False,
            "our first check leaves an UNREPLIED entry on the client's bare MASQUERADE, which "
            "remaps the client's flow; our firewall drops the remapped check (works only when "
            "the client sends first: early checks off)",
            "early-hurts",
        )
    if cell.early:
        return Expectation(True, "a path exists and our packet leaves first")
    client_first = cell.flow is Flow.SERVER_OFFERS or cell.late_trickle
    if (
        setup.server_side_race
        and client in (ClientKind.FILTERED, ClientKind.HOME)
        and cell.delay_ms >= cell.agent.race_delay_ms
        and client_first
    ):
        return Expectation(
            False,
            "the client's check reaches the Docker host before ours and our reply is "
            "remapped (signaling slower than the client's first check)",
            "race",
        )
    return None


@dataclass(frozen=True)
class MatrixSpec:
    """A cross product of cells (what `sfu natlab`'s options select)."""

    setups: tuple[str, ...] = DEFAULT_SETUPS
    clients: tuple[ClientKind, ...] = tuple(ClientKind)
    flows: tuple[Flow, ...] = tuple(Flow)
    early: tuple[bool, ...] = (True, False)
    delays_ms: tuple[int, ...] = (50,)
    chromium: bool = False  # also Chromium (client offers, the demo page) next to aiortc
    chromium_only: bool = False
    trickle: Trickle = Trickle.AFTER_ANSWER

    def __post_init__(self) -> None:
        unknown = [s for s in self.setups if s not in SETUP_BY_NAME]
        if unknown:
            raise ValueError(f"unknown server setup(s): {', '.join(unknown)}")
        if any(not 0 <= d <= 1000 for d in self.delays_ms):
            raise ValueError("signaling delays must be 0..1000 ms")

    def cells(self) -> list[Cell]:
        """Every cell, in run order (setup, early checks, client, delay, flow)."""
        out: list[Cell] = []
        chromium = (self.chromium or self.chromium_only) and Flow.CLIENT_OFFERS in self.flows
        for name in self.setups:
            setup = SETUP_BY_NAME[name]
            for early in self.early:
                for client in self.clients:
                    for delay in self.delays_ms:
                        if not self.chromium_only:
                            out += [
                                Cell(setup, client, flow, early, delay, trickle=self.trickle)
                                for flow in self.flows
                            ]
                        if chromium:
                            flow = Flow.CLIENT_OFFERS
                            out.append(Cell(setup, client, flow, early, delay, Agent.CHROMIUM))
        return out
