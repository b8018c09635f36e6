// ShmConnection: a FrameConnection whose frames travel through shared memory
// (docs/transports/shm.md).
//
// Sending: send() copies a descriptor (the V2 header and where the payload lies) into this
// side's descriptor ring. A body that lies in this side's heap (built with make_body_allocator())
// is passed as it is; any other body is copied once into the heap, or, when larger than a quarter
// of the heap, into a sealed memfd sent over the Unix socket. Frames that find no room (ring,
// heap or lease table full) wait in a local queue, in order, until the peer frees room; the
// queue's size is the back-pressure (above_high_water / on_writable).
//
// Receiving: on the I/O thread, descriptors are copied out of the peer's ring, checked, and
// handed to the sink as Frames whose payload points into the read-only mapping of the peer's
// segment. The payload's owner is a lease: when its last copy dies (any thread), the lease id
// goes back to the sender through this side's release ring and the sender reuses the space.
//
// Waking: the reader polls while busy and for `spin` after its last work, then publishes "asleep"
// in its sleep word and waits for the Unix socket to become readable; a writer that sees the
// peer asleep sends a one-byte doorbell record. The socket's end (EOF) is the peer's death.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include "flatpipe/transport/transport.hpp"
#include "transport/shm/shm_segment.hpp"

namespace flatpipe::shm {

struct Tuning {
  std::uint64_t segment_size = kDefaultSegmentSize;  // this side's outgoing segment
  std::chrono::microseconds spin{50};                // polling after the last work before sleeping
};

// Counters of how frames left this side (tests check zero copy with them). Monotonic.
struct SendStats {
  std::uint64_t zero_copy = 0;  // body passed in place from the heap
  std::uint64_t copied = 0;     // body copied into the heap
  std::uint64_t large = 0;      // body copied into a message memfd
};

class Shared;

class ShmConnection final : public FrameConnection, public std::enable_shared_from_this<ShmConnection> {
 public:
  // Takes the connected socket (SOCK_SEQPACKET, non-blocking) and both segments, already
  // exchanged and checked. Not started.
  ShmConnection(asio::io_context& io, UniqueFd socket, OwnSegment mine, PeerSegment peer,
                const ConnectionLimits& limits, const Tuning& tuning, std::string peer_name);
  ~ShmConnection() override;

  void start(std::shared_ptr<FrameSink> sink) override;
  SendResult send(wire::OutFrame&& frame) override;
  void set_read_paused(bool paused) override;
  void set_max_frame(std::uint32_t max_frame) override;
  void close(const Status& why, bool flush) override;
  std::size_t queued_bytes() const override;
  std::string peer() const override { return peer_; }
  asio::any_io_executor executor() const override { return executor_; }
  std::unique_ptr<flatbuffers::Allocator> make_body_allocator() override;

  // Test visibility: whether [p, p + n) lies in this side's outgoing heap, and send counters.
  bool in_outgoing_heap(const void* p, std::size_t n) const;
  SendStats send_stats() const;

 private:
  struct Pending {
    wire::OutFrame frame;
    UniqueFd memfd;               // the large-message path: the payload, already copied
    std::size_t bytes = 0;        // frame.size() when queued (queued_bytes accounting)
    std::size_t payload_len = 0;  // extra + body
  };
  enum class Publish : std::uint8_t { done, no_room, socket_busy, broken };

  // Sending (any thread, send_mu_ held).
  Publish publish_locked(Pending& p);
  bool refresh_peer_tail_locked();
  void flush_locked();
  void ring_if_asleep_locked();
  void wait_for_room_locked();

  // Reading (I/O thread).
  void wake();
  void poll();
  bool step();
  bool deliver_batch();
  bool drain_releases();
  bool work_visible() const;
  std::uint64_t stale_seq() const noexcept;    // the seq the next peer slot holds until written
  bool peer_published() const noexcept;        // the next peer slot holds something new
  void sleep();
  void on_doorbell(const std::error_code& ec);
  void read_socket();
  bool decode(const Desc& d, wire::Frame& out, Status& why);
  void frame_error(Status why);
  void peer_fault(std::string why);
  void shutdown();
  void finish(Status why);

  const std::shared_ptr<Shared> sh_;
  const ConnectionLimits limits_;
  const Tuning tuning_;
  const std::string peer_;
  const asio::any_io_executor executor_;
  asio::posix::stream_descriptor sock_;  // I/O thread only (async_wait)
  asio::steady_timer close_timer_;       // I/O thread only
  std::atomic<std::uint32_t> max_frame_;
  std::atomic<bool> paused_{false};

  // ---- send side (send_mu_) ----
  mutable std::mutex send_mu_;
  std::deque<Pending> queue_;
  std::atomic<bool> queued_{false};   // !queue_.empty(), for the reader's loop without the lock
  std::size_t queued_bytes_ = 0;
  std::uint64_t desc_head_ = 0;       // descriptors published (the last one carries seq desc_head_)
  std::uint64_t peer_tail_seen_ = 0;  // the peer's desc_tail as last read (it only grows)
  std::uint32_t rung_sleep_ = 0;      // the peer sleep word we last rang for
  std::uint32_t wait_epoch_ = 0;
  bool waiting_room_ = false;         // our wait word is odd
  bool socket_wait_armed_ = false;    // an async_wait(write) will flush
  bool above_high_ = false;
  bool closing_ = false;
  bool close_after_flush_ = false;
  bool tx_broken_ = false;            // the peer corrupted its side of our rings
  std::optional<Status> close_reason_;
  std::shared_ptr<FrameSink> sink_;   // set in start(), cleared in finish() (I/O thread)
  SendStats stats_;

  // ---- receive side (I/O thread only) ----
  std::uint64_t rx_tail_ = 0;   // peer descriptors consumed
  std::uint32_t sleep_epoch_ = 0;
  std::deque<UniqueFd> rx_fds_;  // message memfds received, in order
  std::chrono::steady_clock::time_point idle_since_{};
  bool started_ = false;
  bool chain_active_ = false;  // a poll() is posted or running
  bool armed_ = false;         // an async_wait(read) is pending
  bool peer_gone_ = false;     // socket EOF or error
  bool rx_stopped_ = false;    // a frame error ended reading
  bool finished_ = false;
};

}  // namespace flatpipe::shm
