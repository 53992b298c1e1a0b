# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of the C forwarding engine (csrc/engine.c, csrc/loop.c) for sfu.engine.cengine.

``Core`` owns one ``sfu_engine``: its tables, sockets and buffers. ``Core.run`` is the loop; it
releases the GIL for its whole life and returns after ``request_stop``. Control datagrams are
read back with ``drain`` when ``ctl_fd`` is readable. Arguments are plain Python values
(ints, bytes, ``(host, port)`` tuples); the typed dataclasses live in cengine.py.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.errno cimport EEXIST, EINVAL, ENOENT, ENOMEM
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from sfu.engine.csrc.engine cimport (
    SFU_ENGINE_BATCH,
    SFU_ENGINE_CTL_CAP,
    SFU_ENGINE_RECV_SIZE,
    SFU_ENGINE_STREAM_REPORTS,
    sfu_addr,
    sfu_addr_format,
    sfu_addr_parse,
    sfu_classify,
    sfu_consumer_spec,
    sfu_ctl_entry,
    sfu_engine,
    sfu_engine_add_consumer,
    sfu_engine_add_ingest,
    sfu_engine_add_producer,
    sfu_engine_add_socket,
    sfu_engine_bind,
    sfu_engine_bind_channel,
    sfu_engine_close_socket,
    sfu_engine_consumer_source,
    sfu_engine_counters,
    sfu_engine_expect_rids,
    sfu_engine_ctl_clear_fd,
    sfu_engine_ctl_entry,
    sfu_engine_ctl_fd,
    sfu_engine_ctl_release,
    sfu_engine_ctl_take,
    sfu_engine_free,
    sfu_engine_get_counters,
    sfu_engine_new,
    sfu_engine_pause_consumer,
    sfu_engine_remove_consumer,
    sfu_engine_remove_producer,
    sfu_engine_remove_transport,
    sfu_engine_request_stop,
    sfu_engine_retransmit,
    sfu_engine_run,
    sfu_engine_send,
    sfu_engine_send_rtcp,
    sfu_engine_set_destination,
    sfu_engine_set_srtp,
    sfu_engine_shutdown,
    sfu_engine_switch_consumer,
    sfu_engine_transport_stats,
    sfu_engine_unbind_channel,
    sfu_keyframe_start,
    sfu_stream_counters,
    sfu_transport_counters,
)
from sfu.engine.csrc.srtp cimport (
    SFU_SRTP_AES_CM_SALT_LEN,
    SFU_SRTP_GCM_SALT_LEN,
    SFU_SRTP_MASTER_KEY_LEN,
    SFU_SRTP_PROFILE_AEAD_AES_128_GCM,
    SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80,
)

from sfu.engine.base import (
    KEYFRAME_CODECS,
    ControlKind,
    ControlPacket,
    StreamStats,
    TransportStats,
)

RECV_SIZE = SFU_ENGINE_RECV_SIZE
BATCH = SFU_ENGINE_BATCH
CTL_CAPACITY = SFU_ENGINE_CTL_CAP
STREAM_REPORTS = SFU_ENGINE_STREAM_REPORTS

# index: SFU_CTL_* value (1..5, the ControlKind values)
_KINDS = (
    None,
    ControlKind.STUN,
    ControlKind.DTLS,
    ControlKind.RTCP,
    ControlKind.TURN,
    ControlKind.STREAM,
)


def classify(data: bytes) -> int:
    """RFC 7983 kind of a datagram (the values of sfu.rtp.demux.PacketKind), computed in C."""
    cdef const uint8_t[:] view = data
    if view.shape[0] == 0:
        return sfu_classify(NULL, 0)
    return sfu_classify(&view[0], <size_t>view.shape[0])


cdef int _gate(str codec) except -1:
    """The SFU_GATE_* value of a keyframe gate codec ("" = none)."""
    if not codec:
        return 0
    if codec not in KEYFRAME_CODECS:
        raise ValueError(f"no keyframe rule for {codec!r}")
    return KEYFRAME_CODECS.index(codec) + 1


def starts_keyframe(str codec, bytes packet not None) -> bool:
    """Whether an RTP packet starts a keyframe of ``codec``, computed in C (sfu_keyframe_start)."""
    cdef int gate = _gate(codec)
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(packet)
    if gate == 0:
        raise ValueError("no codec given")
    return sfu_keyframe_start(gate, p, <size_t>len(packet)) != 0


cdef int _parse(sfu_addr *out, object addr) except -1:
    host, port = addr
    cdef bytes raw = str(host).encode("ascii", "replace")
    if sfu_addr_parse(out, raw, int(port)) != 0:
        raise ValueError(f"not a numeric (host, port) address: {addr!r}")
    return 0


cdef tuple _format(const sfu_addr *a):
    cdef char buf[96]
    if sfu_addr_format(a, buf, sizeof(buf)) != 0:
        return ("", a.port)
    return (buf.decode("ascii"), a.port)


cdef int _check(int rc) except -1:
    if rc == 0:
        return 0
    if rc == -ENOMEM:
        raise MemoryError()
    if rc == -EEXIST:
        raise ValueError("already exists")
    if rc == -ENOENT:
        raise KeyError("unknown id")
    if rc == -EINVAL:
        raise ValueError("invalid argument")
    raise OSError(-rc, "sfu engine error")


cdef object _stream(const sfu_stream_counters *s):
    return StreamStats(
        s.ssrc,
        s.packets,
        s.bytes,
        s.highest_seq,
        s.base_seq,
        s.jitter,
        s.lost,
        s.last_rtp_ts,
        s.last_send_time,
        s.retransmitted,
    )


cdef class Core:
    """One C engine: call the methods from one thread (the event loop), ``run`` from another."""

    cdef sfu_engine *_e

    def __cinit__(self):
        self._e = sfu_engine_new()
        if self._e == NULL:
            raise MemoryError("sfu_engine_new failed")

    def __dealloc__(self):
        if self._e != NULL:
            sfu_engine_free(self._e)
            self._e = NULL

    # -- loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        """The forwarding loop (blocks, without the GIL, until request_stop)."""
        cdef int rc
        with nogil:
            rc = sfu_engine_run(self._e)
        return rc

    def request_stop(self) -> None:
        with nogil:
            sfu_engine_request_stop(self._e)

    def shutdown(self) -> None:
        """Close the sockets (after run returned)."""
        with nogil:
            sfu_engine_shutdown(self._e)

    @property
    def ctl_fd(self) -> int:
        return sfu_engine_ctl_fd(self._e)

    def drain(self) -> list:
        """Control datagrams queued by the loop, as ControlPackets (clears ctl_fd)."""
        cdef size_t first, n, i
        cdef const sfu_ctl_entry *x
        sfu_engine_ctl_clear_fd(self._e)
        n = sfu_engine_ctl_take(self._e, &first)
        out = []
        try:
            for i in range(n):
                x = sfu_engine_ctl_entry(self._e, first + i)
                out.append(
                    ControlPacket(
                        _KINDS[x.kind],
                        x.socket_id,
                        _format(&x.addr),
                        PyBytes_FromStringAndSize(<const char *>x.data, x.len),
                        x.transport_id,
                        _format(&x.relay) if x.has_relay else None,
                    )
                )
        finally:
            sfu_engine_ctl_release(self._e, n)
        return out

    # -- sockets --------------------------------------------------------------------------------

    def add_socket(self, int fd, int family) -> int:
        """Take ownership of a bound non-blocking UDP socket's descriptor; returns its id."""
        cdef int rc
        with nogil:
            rc = sfu_engine_add_socket(self._e, fd, family)
        if rc < 0:
            raise OSError(-rc, "cannot add the socket to the engine")
        return rc

    def close_socket(self, int socket_id) -> None:
        with nogil:
            sfu_engine_close_socket(self._e, socket_id)

    def send(self, int socket_id, object addr, bytes data not None) -> bool:
        cdef sfu_addr a
        cdef int rc
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(data)
        cdef size_t n = <size_t>len(data)
        _parse(&a, addr)
        with nogil:
            rc = sfu_engine_send(self._e, socket_id, &a, p, n)
        return rc == 1

    # -- transports -----------------------------------------------------------------------------

    def bind(self, int64_t transport_id, int socket_id, object addr) -> None:
        cdef sfu_addr a
        cdef int rc
        _parse(&a, addr)
        with nogil:
            rc = sfu_engine_bind(self._e, transport_id, socket_id, &a)
        _check(rc)

    def set_destination(
        self, int64_t transport_id, int socket_id, object addr, object server, int channel
    ) -> None:
        cdef sfu_addr a, r
        cdef sfu_addr *rp = NULL
        cdef int rc
        _parse(&a, addr)
        if server is not None:
            _parse(&r, server)
            rp = &r
        with nogil:
            rc = sfu_engine_set_destination(self._e, transport_id, socket_id, &a, rp, channel)
        _check(rc)

    def bind_channel(self, int socket_id, object server, int channel, object peer) -> None:
        cdef sfu_addr s, p
        cdef int rc
        _parse(&s, server)
        _parse(&p, peer)
        with nogil:
            rc = sfu_engine_bind_channel(self._e, socket_id, &s, channel, &p)
        _check(rc)

    def unbind_channel(self, int socket_id, object server, int channel) -> None:
        cdef sfu_addr s
        _parse(&s, server)
        with nogil:
            sfu_engine_unbind_channel(self._e, socket_id, &s, channel)

    def set_srtp(
        self,
        int64_t transport_id,
        int profile,
        bytes local_key not None,
        bytes local_salt not None,
        bytes remote_key not None,
        bytes remote_salt not None,
    ) -> None:
        cdef int rc
        cdef Py_ssize_t salt_len
        if profile == SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80:
            salt_len = SFU_SRTP_AES_CM_SALT_LEN
        elif profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM:
            salt_len = SFU_SRTP_GCM_SALT_LEN
        else:
            raise ValueError(f"unsupported SRTP profile {profile}")
        if len(local_key) != SFU_SRTP_MASTER_KEY_LEN or len(remote_key) != SFU_SRTP_MASTER_KEY_LEN:
            raise ValueError(f"SRTP master keys must be {SFU_SRTP_MASTER_KEY_LEN} bytes")
        if len(local_salt) != salt_len or len(remote_salt) != salt_len:
            raise ValueError(f"SRTP master salts must be {salt_len} bytes for this profile")
        cdef const uint8_t *lk = <const uint8_t *>PyBytes_AS_STRING(local_key)
        cdef const uint8_t *ls = <const uint8_t *>PyBytes_AS_STRING(local_salt)
        cdef const uint8_t *rk = <const uint8_t *>PyBytes_AS_STRING(remote_key)
        cdef const uint8_t *rs = <const uint8_t *>PyBytes_AS_STRING(remote_salt)
        with nogil:
            rc = sfu_engine_set_srtp(self._e, transport_id, profile, lk, ls, rk, rs)
        _check(rc)

    def remove_transport(self, int64_t transport_id) -> None:
        with nogil:
            sfu_engine_remove_transport(self._e, transport_id)

    def add_ingest(self, int64_t transport_id, int socket_id, uint32_t ssrc) -> None:
        cdef int rc
        with nogil:
            rc = sfu_engine_add_ingest(self._e, transport_id, socket_id, ssrc)
        _check(rc)

    def expect_rids(self, int64_t transport_id, int mid_id, int rid_id, int rrid_id) -> None:
        cdef int rc
        with nogil:
            rc = sfu_engine_expect_rids(self._e, transport_id, mid_id, rid_id, rrid_id)
        _check(rc)

    # -- producers and consumers ----------------------------------------------------------------

    def add_producer(
        self, int64_t transport_id, uint32_t ssrc, uint32_t clock_rate, uint32_t cache_size
    ) -> None:
        cdef int rc
        with nogil:
            rc = sfu_engine_add_producer(self._e, transport_id, ssrc, clock_rate, cache_size)
        _check(rc)

    def remove_producer(self, int64_t transport_id, uint32_t ssrc) -> None:
        with nogil:
            sfu_engine_remove_producer(self._e, transport_id, ssrc)

    def add_consumer(
        self,
        int64_t consumer_id,
        int64_t src_transport,
        uint32_t src_ssrc,
        int64_t dst_transport,
        uint32_t dst_ssrc,
        uint32_t clock_rate,
        uint32_t cache_size,
        object payload_type_map,
        str keyframe_gate = "",
    ) -> None:
        cdef sfu_consumer_spec spec
        cdef int i, rc
        memset(&spec, 0, sizeof(spec))
        spec.keyframe_gate = _gate(keyframe_gate)
        spec.consumer_id = consumer_id
        spec.src_transport = src_transport
        spec.src_ssrc = src_ssrc
        spec.dst_transport = dst_transport
        spec.dst_ssrc = dst_ssrc
        spec.clock_rate = clock_rate
        spec.cache_size = cache_size
        for i in range(128):
            spec.pt_map[i] = <uint8_t>i
        for pt_in, pt_out in payload_type_map:
            if not (0 <= pt_in <= 127 and 0 <= pt_out <= 127):
                raise ValueError(f"payload types must be 0..127: {(pt_in, pt_out)!r}")
            spec.pt_map[<int>pt_in] = <uint8_t>pt_out
        with nogil:
            rc = sfu_engine_add_consumer(self._e, &spec)
        if rc == -EEXIST:
            raise ValueError(f"consumer {consumer_id} exists")
        _check(rc)

    def remove_consumer(self, int64_t consumer_id) -> None:
        with nogil:
            sfu_engine_remove_consumer(self._e, consumer_id)

    def pause_consumer(self, int64_t consumer_id, bint paused) -> None:
        with nogil:
            sfu_engine_pause_consumer(self._e, consumer_id, paused)

    def switch_consumer(
        self, int64_t consumer_id, int64_t src_transport, uint32_t src_ssrc, uint32_t clock_rate
    ) -> bool:
        cdef int rc
        with nogil:
            rc = sfu_engine_switch_consumer(
                self._e, consumer_id, src_transport, src_ssrc, clock_rate
            )
        if rc == -ENOENT:
            return False
        _check(rc)
        return True

    def consumer_source(self, int64_t consumer_id) -> object:
        cdef int64_t tid = 0
        cdef uint32_t ssrc = 0
        cdef int rc
        with nogil:
            rc = sfu_engine_consumer_source(self._e, consumer_id, &tid, &ssrc)
        if rc != 0:
            return None
        return (tid, ssrc)

    # -- RTCP, retransmissions ------------------------------------------------------------------

    def send_rtcp(self, int64_t transport_id, bytes packet not None) -> None:
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(packet)
        cdef size_t n = <size_t>len(packet)
        cdef int rc
        with nogil:
            rc = sfu_engine_send_rtcp(self._e, transport_id, p, n)
        _check(rc)

    def retransmit(self, int64_t consumer_id, object seqs) -> int:
        cdef list values = [int(s) & 0xFFFF for s in seqs]
        cdef size_t n = <size_t>len(values), i
        cdef uint16_t *arr
        cdef int found
        if n == 0:
            return 0
        arr = <uint16_t *>malloc(n * sizeof(uint16_t))
        if arr == NULL:
            raise MemoryError()
        for i in range(n):
            arr[i] = <uint16_t>values[i]
        with nogil:
            found = sfu_engine_retransmit(self._e, consumer_id, arr, n)
        free(arr)
        return found

    # -- statistics -----------------------------------------------------------------------------

    def counters(self) -> tuple:
        """(datagrams_in, datagrams_out, dropped_unknown, control_delivered, control_dropped,
        send_errors)."""
        cdef sfu_engine_counters c
        with nogil:
            sfu_engine_get_counters(self._e, &c)
        return (
            c.datagrams_in,
            c.datagrams_out,
            c.dropped_unknown,
            c.control_delivered,
            c.control_dropped,
            c.send_errors,
        )

    def transport_stats(self, int64_t transport_id) -> object:
        cdef sfu_transport_counters t
        cdef sfu_stream_counters *inb = NULL
        cdef sfu_stream_counters *outb = NULL
        cdef size_t in_cap = 8, out_cap = 8, in_n = 0, out_n = 0, i
        cdef int rc
        try:
            while True:
                free(inb)
                free(outb)
                inb = <sfu_stream_counters *>malloc(in_cap * sizeof(sfu_stream_counters))
                outb = <sfu_stream_counters *>malloc(out_cap * sizeof(sfu_stream_counters))
                if inb == NULL or outb == NULL:
                    raise MemoryError()
                with nogil:
                    rc = sfu_engine_transport_stats(
                        self._e, transport_id, &t, inb, in_cap, &in_n, outb, out_cap, &out_n
                    )
                if rc != 0:
                    return None
                if in_n <= in_cap and out_n <= out_cap:
                    break
                in_cap = max(in_cap, in_n)
                out_cap = max(out_cap, out_n)
            inbound = {}
            outbound = {}
            for i in range(in_n):
                inbound[inb[i].ssrc] = _stream(&inb[i])
            for i in range(out_n):
                outbound[outb[i].ssrc] = _stream(&outb[i])
            return TransportStats(
                transport_id,
                t.packets_in,
                t.bytes_in,
                t.packets_out,
                t.bytes_out,
                t.rtcp_in,
                t.rtcp_out,
                t.srtp_errors,
                t.unrouted,
                inbound,
                outbound,
            )
        finally:
            free(inb)
            free(outb)
