// What describes a call: its kind, its options (deadline, metadata), and on the callee's side
// its context (cancellation, deadline, metadata, peer).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flatpipe/wire/frame.hpp"

namespace flatpipe {

using Clock = std::chrono::steady_clock;
using wire::Metadata;

enum class CallKind : std::uint8_t {
  unary,          // one request, one response
  server_stream,  // one request, a stream of responses
  client_stream,  // a stream of requests, one response
  bidi,           // a stream each way
};

const char* call_kind_name(CallKind kind) noexcept;

// What a stream writer does when its reader has granted no credit (full mode).
enum class StreamQos : std::uint8_t {
  reliable,  // the write waits: nothing is lost, the writer slows to the reader's pace
  latest,    // the write returns at once; a newer message replaces the one waiting to be sent
};

struct CallOptions {
  // The call fails with DEADLINE_EXCEEDED at this time, whether or not the peer answers; in full
  // mode the peer is told, and cancels its handler then.
  std::optional<Clock::time_point> deadline;
  // Sent with the call in full mode (ignored towards netpipe peers, which have no metadata).
  Metadata metadata;
  // The QoS of the stream this side writes (client streaming and bidi).
  StreamQos qos = StreamQos::reliable;

  static CallOptions with_timeout(Clock::duration timeout) {
    CallOptions o;
    o.deadline = Clock::now() + timeout;
    return o;
  }
  CallOptions& timeout(Clock::duration t) {
    deadline = Clock::now() + t;
    return *this;
  }
  CallOptions& add_metadata(std::string key, std::string value) {
    metadata.emplace_back(std::move(key), std::move(value));
    return *this;
  }
};

// The callee's view of one call. Thread-safe. Lives as long as the ServerCall that hands it out.
class CallContext {
 public:
  // `peer` must outlive the context (it is the Session's description of its connection).
  CallContext(std::uint32_t request_id, std::uint32_t method_id, std::string_view peer,
              std::optional<Clock::time_point> deadline, Metadata metadata)
      : request_id_(request_id),
        method_id_(method_id),
        peer_(peer),
        deadline_(deadline),
        metadata_(std::move(metadata)) {}

  // True once the caller cancelled, its deadline passed, or the connection was lost. A handler
  // that sees it should stop; whatever it sends afterwards is discarded.
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
  // Runs `fn` once when the call is cancelled (at once if it already is). `fn` runs on the I/O
  // thread and must not block. Registrations are dropped when the call completes normally.
  void on_cancel(std::function<void()> fn);

  std::optional<Clock::time_point> deadline() const noexcept { return deadline_; }
  // The caller's metadata (full mode); empty from netpipe peers.
  const Metadata& metadata() const noexcept { return metadata_; }
  // The value of the first metadata entry named `key`, if any.
  std::optional<std::string_view> metadata_value(std::string_view key) const noexcept;
  // Trailing metadata sent with the final frame (full mode). Call before finishing the call.
  void add_trailing_metadata(std::string key, std::string value);

  std::uint32_t request_id() const noexcept { return request_id_; }
  std::uint32_t method_id() const noexcept { return method_id_; }
  std::string_view peer() const noexcept { return peer_; }

  // Runtime side: marks the call cancelled and runs the registered callbacks (caller's thread).
  void cancel();
  Metadata take_trailing_metadata();

 private:
  const std::uint32_t request_id_;
  const std::uint32_t method_id_;
  const std::string_view peer_;
  const std::optional<Clock::time_point> deadline_;
  const Metadata metadata_;
  std::atomic<bool> cancelled_{false};
  // Set once on_cancel() or add_trailing_metadata() was used: until then a finishing call has
  // nothing to take or drop and skips the lock.
  std::atomic<bool> touched_{false};
  std::mutex mu_;
  std::vector<std::function<void()>> on_cancel_;
  Metadata trailing_;
};

}  // namespace flatpipe
