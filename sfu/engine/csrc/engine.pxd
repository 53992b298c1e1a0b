# Declarations of csrc/engine.h and csrc/packet.h for Cython (cimport sfu.engine.csrc.engine).
# Every function is safe to call without the GIL and never calls back into Python.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "packet.h" nogil:
    int sfu_classify(const uint8_t *p, size_t n)
    int sfu_keyframe_start(int gate, const uint8_t *p, size_t n)


cdef extern from "engine.h" nogil:
    int SFU_ENGINE_RECV_SIZE
    int SFU_ENGINE_BATCH
    int SFU_ENGINE_OUT_SLOTS
    int SFU_ENGINE_CTL_CAP
    int SFU_ENGINE_MAX_SOCKETS

    int SFU_GATE_NONE
    int SFU_GATE_VP8
    int SFU_GATE_VP9
    int SFU_GATE_H264

    int SFU_CTL_STUN
    int SFU_CTL_DTLS
    int SFU_CTL_RTCP
    int SFU_CTL_TURN
    int SFU_CTL_STREAM
    int SFU_ENGINE_STREAM_REPORTS

    ctypedef struct sfu_engine:
        pass

    ctypedef struct sfu_addr:
        uint16_t family
        uint16_t port
        uint32_t scope
        uint8_t ip[16]

    ctypedef struct sfu_ctl_entry:
        int kind
        int socket_id
        int has_relay
        uint32_t len
        int64_t transport_id
        sfu_addr addr
        sfu_addr relay
        uint8_t data[2048]

    ctypedef struct sfu_engine_counters:
        uint64_t datagrams_in
        uint64_t datagrams_out
        uint64_t dropped_unknown
        uint64_t control_delivered
        uint64_t control_dropped
        uint64_t send_errors

    ctypedef struct sfu_transport_counters:
        uint64_t packets_in
        uint64_t bytes_in
        uint64_t packets_out
        uint64_t bytes_out
        uint64_t rtcp_in
        uint64_t rtcp_out
        uint64_t srtp_errors
        uint64_t unrouted

    ctypedef struct sfu_stream_counters:
        uint32_t ssrc
        uint32_t last_rtp_ts
        uint64_t packets
        uint64_t bytes
        int64_t highest_seq
        int64_t base_seq
        int64_t lost
        double jitter
        double last_send_time
        uint64_t retransmitted

    ctypedef struct sfu_consumer_spec:
        int64_t consumer_id
        int64_t src_transport
        int64_t dst_transport
        uint32_t src_ssrc
        uint32_t dst_ssrc
        uint32_t clock_rate
        uint32_t cache_size
        uint8_t pt_map[128]
        int keyframe_gate

    int sfu_addr_parse(sfu_addr *out, const char *host, long port)
    int sfu_addr_format(const sfu_addr *a, char *buf, size_t cap)

    sfu_engine *sfu_engine_new()
    void sfu_engine_free(sfu_engine *e)
    int sfu_engine_run(sfu_engine *e)
    void sfu_engine_request_stop(sfu_engine *e)
    void sfu_engine_shutdown(sfu_engine *e)

    int sfu_engine_add_socket(sfu_engine *e, int fd, int family)
    int sfu_engine_close_socket(sfu_engine *e, int socket_id)
    int sfu_engine_send(
        sfu_engine *e, int socket_id, const sfu_addr *to, const uint8_t *data, size_t len
    )

    int sfu_engine_bind(sfu_engine *e, int64_t transport_id, int socket_id, const sfu_addr *addr)
    int sfu_engine_set_destination(
        sfu_engine *e, int64_t transport_id, int socket_id, const sfu_addr *addr,
        const sfu_addr *relay, int channel
    )
    int sfu_engine_bind_channel(
        sfu_engine *e, int socket_id, const sfu_addr *server, int channel, const sfu_addr *peer
    )
    int sfu_engine_unbind_channel(
        sfu_engine *e, int socket_id, const sfu_addr *server, int channel
    )
    int sfu_engine_set_srtp(
        sfu_engine *e, int64_t transport_id, int profile, const uint8_t *local_key,
        const uint8_t *local_salt, const uint8_t *remote_key, const uint8_t *remote_salt
    )
    int sfu_engine_remove_transport(sfu_engine *e, int64_t transport_id)
    int sfu_engine_add_ingest(sfu_engine *e, int64_t transport_id, int socket_id, uint32_t ssrc)
    int sfu_engine_expect_rids(
        sfu_engine *e, int64_t transport_id, int mid_id, int rid_id, int rrid_id
    )

    int sfu_engine_add_producer(
        sfu_engine *e, int64_t transport_id, uint32_t ssrc, uint32_t clock_rate,
        uint32_t cache_size
    )
    int sfu_engine_remove_producer(sfu_engine *e, int64_t transport_id, uint32_t ssrc)
    int sfu_engine_add_consumer(sfu_engine *e, const sfu_consumer_spec *spec)
    int sfu_engine_remove_consumer(sfu_engine *e, int64_t consumer_id)
    int sfu_engine_pause_consumer(sfu_engine *e, int64_t consumer_id, int paused)
    int sfu_engine_switch_consumer(
        sfu_engine *e, int64_t consumer_id, int64_t src_transport, uint32_t src_ssrc,
        uint32_t clock_rate
    )
    int sfu_engine_consumer_source(
        sfu_engine *e, int64_t consumer_id, int64_t *src_transport, uint32_t *src_ssrc
    )

    int sfu_engine_send_rtcp(sfu_engine *e, int64_t transport_id, const uint8_t *data, size_t len)
    int sfu_engine_retransmit(
        sfu_engine *e, int64_t consumer_id, const uint16_t *seqs, size_t n
    )

    void sfu_engine_get_counters(sfu_engine *e, sfu_engine_counters *out)
    int sfu_engine_transport_stats(
        sfu_engine *e, int64_t transport_id, sfu_transport_counters *t,
        sfu_stream_counters *inbound, size_t in_cap, size_t *in_n,
        sfu_stream_counters *outbound, size_t out_cap, size_t *out_n
    )

    int sfu_engine_ctl_fd(const sfu_engine *e)
    void sfu_engine_ctl_clear_fd(sfu_engine *e)
    size_t sfu_engine_ctl_take(sfu_engine *e, size_t *first)
    const sfu_ctl_entry *sfu_engine_ctl_entry(const sfu_engine *e, size_t index)
    void sfu_engine_ctl_release(sfu_engine *e, size_t n)
