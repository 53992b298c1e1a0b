"""Interop: our agent on a real UDP socket against aioice.Connection, on 127.0.0.1.

aioice leaves 127.0.0.1 out of gather_candidates(), so its loopback host candidate is made
with its public get_component_candidates() after an address-less gather.
"""

from __future__ import annotations

import asyncio
from typing import cast

import aioice
import pytest

from sfu.ice import Candidate, CandidateType, IceAgent, IceRole, IceState, candidate_priority


class _AgentProtocol(asyncio.DatagramProtocol):
    """The smallest adapter: receive -> agent, agent -> sendto, one call_at timer."""

    def __init__(self, agent: IceAgent) -> None:
        self.agent = agent
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.app_data: asyncio.Queue[bytes] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.agent.receive(data, "udp", addr, self.loop.time()):
            self.app_data.put_nowait(data)
        self.pump()

    def pump(self) -> None:
        assert self.transport is not None
        for _, addr, data in self.agent.datagrams_to_send(self.loop.time()):
            self.transport.sendto(data, addr)
        if self._timer is not None:
            self._timer.cancel()
        when = self.agent.get_timer()
        self._timer = None if when is None else self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.agent.handle_timer(self.loop.time())
        self.pump()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()


@pytest.mark.parametrize("role", [IceRole.CONTROLLED, IceRole.CONTROLLING])
async def test_agent_against_aioice(role: IceRole) -> None:
    """The brief's case is ours controlled; the reverse runs too, as it costs nothing."""
    loop = asyncio.get_running_loop()
    agent = IceAgent(role)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _AgentProtocol(agent), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    ours = Candidate(
        "1", 1, "udp", candidate_priority(CandidateType.HOST), "127.0.0.1", port, CandidateType.HOST
    )
    agent.add_local_candidate(ours, "udp")

    conn = aioice.Connection(
        ice_controlling=role == IceRole.CONTROLLED, components=1, use_ipv4=False, use_ipv6=False
    )
    try:
        await conn.gather_candidates()
        theirs = await conn.get_component_candidates(component=1, addresses=["127.0.0.1"])
        assert len(theirs) == 1
        conn.remote_username, conn.remote_password = agent.local_ufrag, agent.local_pwd
        await conn.add_remote_candidate(aioice.Candidate.from_sdp(ours.to_sdp()))
        await conn.add_remote_candidate(None)

        now = loop.time()
        agent.set_remote_credentials(conn.local_username, conn.local_password, now)
        agent.add_remote_candidate(Candidate.from_sdp(theirs[0].to_sdp()), now)
        agent.add_remote_candidate(None, now)
        agent.start(now)
        proto.pump()

        await asyncio.wait_for(conn.connect(), 5.0)
        for _ in range(100):
            if agent.selected_pair is not None:
                break
            await asyncio.sleep(0.01)
        pair = agent.selected_pair
        assert pair is not None and agent.state in (IceState.CONNECTED, IceState.COMPLETED)
        assert pair.remote.addr == ("127.0.0.1", theirs[0].port) and pair.nominated
        assert agent.role == role

        await conn.send(b"ping")
        assert await asyncio.wait_for(proto.app_data.get(), 2.0) == b"ping"
        transport.sendto(b"pong", pair.remote_addr)
        assert await asyncio.wait_for(conn.recv(), 2.0) == b"pong"
        assert agent.stats()["counters"]["requests answered"] >= 1  # type: ignore[index]
    finally:
        await conn.close()
        proto.close()
