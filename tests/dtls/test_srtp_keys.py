"""The exported keys really work: SRTP/SRTCP round trips with pylibsrtp, both profiles."""

from __future__ import annotations

import pytest
from pylibsrtp import Error, Policy, Session

from sfu.dtls import Certificate, DtlsRole, DtlsSession, DtlsState, SrtpKeys, SrtpProfile

from . import Link

_PYLIBSRTP_PROFILE = {
    SrtpProfile.AES_CM_128_HMAC_SHA1_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpProfile.AEAD_AES_128_GCM: Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}

RTP = bytes.fromhex("80600001000000100000abcd") + b"media payload " * 10
RTCP_RR = bytes.fromhex("81c90007000000010000abcd") + bytes(24)  # RR with one report block


def _sender(keys: SrtpKeys) -> Session:
    return Session(
        policy=Policy(
            key=keys.local_key + keys.local_salt,
            ssrc_type=Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=_PYLIBSRTP_PROFILE[keys.profile],
        )
    )


def _receiver(keys: SrtpKeys) -> Session:
    return Session(
        policy=Policy(
            key=keys.remote_key + keys.remote_salt,
            ssrc_type=Policy.SSRC_ANY_INBOUND,
            srtp_profile=_PYLIBSRTP_PROFILE[keys.profile],
        )
    )


def _handshake(profile: SrtpProfile) -> tuple[SrtpKeys, SrtpKeys]:
    cert_c, cert_s = Certificate.generate(), Certificate.generate()
    client = DtlsSession(cert_c, DtlsRole.CLIENT, cert_s.fingerprints(), profiles=(profile,))
    server = DtlsSession(cert_s, DtlsRole.SERVER, cert_c.fingerprints())
    link = Link(client, server)
    client.start(0.0)
    link.pump()
    assert client.state is server.state is DtlsState.CONNECTED
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.profile is profile
    return client.srtp_keys, server.srtp_keys


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_srtp_round_trip_both_directions(profile: SrtpProfile) -> None:
    client_keys, server_keys = _handshake(profile)
    for tx_keys, rx_keys in ((client_keys, server_keys), (server_keys, client_keys)):
        tx, rx = _sender(tx_keys), _receiver(rx_keys)
        protected = tx.protect(RTP)
        assert protected != RTP and protected[:12] == RTP[:12]
        assert rx.unprotect(protected) == RTP
        protected_rtcp = tx.protect_rtcp(RTCP_RR)
        assert rx.unprotect_rtcp(protected_rtcp) == RTCP_RR


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_own_keys_do_not_unprotect_own_packets(profile: SrtpProfile) -> None:
    """local and remote keys differ: a packet we protect is not readable with our
    remote keys (catches a client/server swap in the key layout)."""
    client_keys, _ = _handshake(profile)
    protected = _sender(client_keys).protect(RTP)
    with pytest.raises(Error):
        _receiver(client_keys).unprotect(protected)


def test_key_layout_rfc5764() -> None:
    """client_key | server_key | client_salt | server_salt, mirrored per role."""
    profile = SrtpProfile.AES_CM_128_HMAC_SHA1_80
    material = bytes(range(60))
    client = SrtpKeys.from_keying_material(profile, material, DtlsRole.CLIENT)
    server = SrtpKeys.from_keying_material(profile, material, DtlsRole.SERVER)
    assert client.local_key == material[0:16] and client.remote_key == material[16:32]
    assert client.local_salt == material[32:46] and client.remote_salt == material[46:60]
    assert (server.local_key, server.local_salt) == (client.remote_key, client.remote_salt)
    assert (server.remote_key, server.remote_salt) == (client.local_key, client.local_salt)
    with pytest.raises(ValueError):
        SrtpKeys.from_keying_material(profile, material[:56], DtlsRole.CLIENT)
    assert "local_key" not in repr(client)
