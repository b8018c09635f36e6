// Session: the call state of one connection (docs/protocol.md is its specification).
//
// A Session owns one FrameConnection and the two tables of calls on it: those this side opened
// (request id → pending completion) and those the peer opened (request id → running handler).
// One handle_frame() switches on the frame type and calls one handle_<type>() each. Either side
// may open calls, whichever side connected.
//
// Threading: every member is thread-safe. Frames arrive on the connection's executor; calls may be
// started, streamed and finished from any thread. One mutex guards the tables; completion
// handlers always run with no Session lock held. Handlers given to a Session are called exactly
// once.
//
// Users normally reach a Session through Client, Server and ServerCall (client.hpp, server.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include "flatpipe/buffer.hpp"
#include "flatpipe/message.hpp"
#include "flatpipe/rpc/call.hpp"
#include "flatpipe/status.hpp"
#include "flatpipe/transport/transport.hpp"
#include "flatpipe/util/buffer_queue.hpp"
#include "flatpipe/util/id_map.hpp"
#include "flatpipe/util/unique_function.hpp"

namespace flatpipe {

class MethodTable;
struct MethodInfo;

using ResponseHandler = UniqueFunction<void(Result<Buffer>)>;
// A stream read: a message, nullopt at the clean end of the stream, or the failure.
using ReadResult = Result<std::optional<Buffer>>;
using ReadHandler = UniqueFunction<void(ReadResult)>;
using StatusHandler = UniqueFunction<void(Status)>;

struct SessionOptions {
  // Speak only what a netpipe peer understands: no handshake, no new frame types or flags.
  // Set by a connecting side (endpoint ?mode=netpipe); an accepting side detects it.
  bool netpipe_compat = false;
  // Largest frame body accepted; announced to the peer in full mode.
  std::uint32_t max_frame = wire::kDefaultMaxFrame;
  // Messages this side accepts per stream before it grants more credit (full mode).
  std::uint32_t initial_credit = 64;
  // Ping after this long without receiving anything; dead after 3x (full mode). 0 = off.
  std::chrono::milliseconds keepalive{0};
  // How long a connecting side waits for the peer's handshake answer.
  std::chrono::milliseconds handshake_timeout{5000};
  // Compatible mode: messages queued on one stream before the connection stops reading.
  std::size_t compat_stream_queue = 256;
  // On a connection that may lose frames (ConnectionTraits::reliable false, e.g. udp), a call
  // started without a deadline gets one this far ahead, so a lost request or reply ends the call
  // with DEADLINE_EXCEEDED instead of leaving it open for ever. 0 = no implicit deadline.
  std::chrono::milliseconds unreliable_call_timeout{10000};
};

// Counters, for tests and monitoring.
struct SessionStats {
  std::uint64_t frames_received = 0;
  std::uint64_t frames_ignored = 0;   // for calls that do not exist, or of unknown types
  std::uint64_t calls_opened = 0;     // by this side
  std::uint64_t calls_accepted = 0;   // opened by the peer
  std::uint64_t messages_dropped_latest = 0;  // replaced under `latest` QoS
};

namespace detail {

// One call, either direction. Guarded by the owning Session's mutex.
struct CallState {
  // User-provided, so make_shared does not zero all ~800 bytes before running the member
  // initializers (every member has one).
  CallState() noexcept {}

  std::uint32_t id = 0;
  std::uint32_t method = 0;
  CallKind kind = CallKind::unary;
  bool outgoing = false;
  bool open = true;                   // still in the Session's table
  bool netpipe_client_stream = false; // incoming: opened by StreamData; answered netpipe's way
  std::optional<Clock::time_point> deadline;

  // Inbound stream.
  BufferQueue inbox;
  bool in_done = false;               // the peer ended its direction
  ReadHandler reader;                 // a read waiting for a message
  std::uint32_t consumed = 0;         // read since the last CREDIT we sent
  bool pausing_reads = false;         // compat: this stream's backlog paused the connection

  // Outbound stream.
  std::uint32_t credit = 0;
  bool out_done = false;              // we ended our direction
  bool end_pending = false;           // ended, but StreamEnd waits behind an unsent message
  StreamQos qos = StreamQos::reliable;
  std::optional<Buffer> blocked_message;  // a reliable write waiting for credit/room
  StatusHandler blocked_done;
  std::optional<Buffer> latest_pending;   // `latest` QoS: the freshest unsent message
  std::optional<Buffer> holdback;         // compat client stream: sent with Final at the end

  // Outgoing calls: the outcome.
  std::optional<Status> final_status;
  Buffer response;
  bool got_response = false;          // compat client stream: first StreamData is the reply
  Metadata trailing;
  ResponseHandler on_response;

  // Incoming calls.
  std::optional<CallContext> context;
  Buffer request;
  // A handler finished its stream while a `latest` message still waited for credit: the end
  // (StreamEnd with these flags and trailer) goes out after that message (end_pending is set).
  std::uint16_t end_flags = 0;
  std::string end_trailer;
};

}  // namespace detail

class Session final : public FrameSink, public std::enable_shared_from_this<Session> {
 public:
  enum class Role : std::uint8_t { connector, acceptor };

  // `methods` serves calls the peer opens (may be null: every call then gets UNIMPLEMENTED).
  // `handler_executor`: where handlers run; a null executor runs them on the I/O thread.
  // `blocking_spin`: how long a blocking call, read or write on this connection (Client::call,
  // ClientStream::read, ServerCall::write, ...) polls for its outcome before it sleeps; Client and
  // Server pass their Runtime's RuntimeOptions::idle_spin.
  Session(Role role, std::shared_ptr<FrameConnection> connection, asio::io_context& io, SessionOptions options,
          std::shared_ptr<const MethodTable> methods, asio::any_io_executor handler_executor,
          std::chrono::microseconds blocking_spin = std::chrono::microseconds(0));
  ~Session() override;

  // Starts reading. A connector in full mode sends its handshake; `ready` is called once when
  // calls may start (handshake answered, or at once in compatible mode) or with why the
  // connection failed (UNAVAILABLE; DEADLINE_EXCEEDED when the handshake timed out).
  void start(StatusHandler ready = nullptr);
  // Called once, after every open call was failed, when the connection ends.
  void set_on_closed(std::function<void(const Status&)> fn);

  // ---- calls this side opens ----

  // A unary call; `done` gets the response or the failure.
  void start_unary(std::uint32_t method, Buffer request, const CallOptions& options, ResponseHandler done);
  // A streaming call. For server streaming `request` is the single request message.
  Result<std::shared_ptr<detail::CallState>> open_stream(std::uint32_t method, CallKind kind, Buffer request,
                                                         const CallOptions& options);
  // A one-way Notification (no reply, no error even for an unknown method).
  Status notify(std::uint32_t method, Buffer payload);
  // Fails the call locally with `why` and tells the peer (Cancel). No-op once it completed.
  void cancel(const std::shared_ptr<detail::CallState>& call, Status why);
  // The response of a client-streaming call (after write_done), or the end status of a server
  // streaming / bidi call (an empty Buffer on success).
  void await_response(const std::shared_ptr<detail::CallState>& call, ResponseHandler done);

  // ---- streams, either side ----

  // Sends one message on the call's stream. `done` gets OK once the message is sent or queued
  // within the reader's credit (a reliable write without credit completes when credit arrives),
  // or why it cannot be sent. One write may wait at a time: a second gets FAILED_PRECONDITION.
  void write(const std::shared_ptr<detail::CallState>& call, Buffer message, StatusHandler done);
  // Ends this side's direction of the stream (StreamEnd; Final for a netpipe client stream).
  void write_done(const std::shared_ptr<detail::CallState>& call);
  // Takes the next message of the call's inbound stream. One read may wait at a time.
  void read(const std::shared_ptr<detail::CallState>& call, ReadHandler done);

  // ---- calls the peer opened ----

  // Ends an incoming call: unary and client streaming answer with the response (Response or
  // Error); server streaming and bidi end the stream (StreamEnd, or StreamError for a failure).
  // Ignored once the call is over (cancelled, expired, or already finished).
  void finish(const std::shared_ptr<detail::CallState>& call, Result<Buffer> outcome);

  // ---- the connection ----

  // Stops accepting new calls from the peer (GOAWAY in full mode); open calls go on. `drained`
  // runs once no incoming call is open.
  void drain(std::function<void()> drained);
  // Closes the connection; every open call fails with UNAVAILABLE. Never blocks.
  void close(Status why = Status(StatusCode::unavailable, "connection closed by this side"));
  bool is_open() const;
  bool is_full_mode() const;
  std::string peer() const;
  std::size_t open_calls() const;
  SessionStats stats() const;
  // A builder for a message to send on this connection, in memory the transport sends without
  // copying (shared memory for shm; the heap otherwise). Thread-safe.
  MessageBuilder builder(std::size_t initial_size = 1024) const {
    return MessageBuilder(conn_->make_body_allocator(), initial_size);
  }
  asio::io_context& io() const noexcept { return io_; }
  // The constructor's `blocking_spin`, for the blocking forms of the client and server APIs.
  std::chrono::microseconds blocking_spin() const noexcept { return blocking_spin_; }
  // True when the caller runs on this session's I/O context (where blocking would deadlock).
  bool on_io_thread() const noexcept;

  // FrameSink (the connection's executor).
  void on_frame(wire::Frame&& frame) override;
  void on_frame_error(const Status& why) override;
  void on_writable() override;
  void on_closed(const Status& why) override;

 private:
  using CallPtr = std::shared_ptr<detail::CallState>;
  using CallMap = IdMap<CallPtr>;
  class Deferred;
  enum class Mode : std::uint8_t { pending, full, compat, closed };

  void handle_frame(wire::Frame&& f, Deferred& later);
  void handle_hello(wire::Frame& f, Deferred& later);
  void handle_hello_ack(wire::Frame& f, Deferred& later);
  void handle_request(wire::Frame& f, Deferred& later);
  void handle_reply(wire::Frame& f, Deferred& later);
  void handle_notification(wire::Frame& f, Deferred& later);
  void handle_stream_data(wire::Frame& f, Deferred& later);
  void handle_stream_end(wire::Frame& f, Deferred& later);
  void handle_stream_error(wire::Frame& f, Deferred& later);
  void handle_cancel(wire::Frame& f, Deferred& later);
  void handle_credit(wire::Frame& f, Deferred& later);
  void handle_goaway(wire::Frame& f, Deferred& later);

  CallPtr open_call_locked(std::uint32_t method, CallKind kind, const CallOptions& options);
  CallPtr accept_call_locked(const wire::Frame& f, CallKind kind, const wire::HeaderBlock& headers, Buffer request);
  CallPtr find_stream_call_locked(std::uint32_t id, bool inbound_data);
  void dispatch_locked(CallPtr call, const MethodInfo* method, Deferred& later);
  static void run_handler(const std::shared_ptr<Session>& self, const CallPtr& call, const MethodInfo& method);
  void deliver_locked(const CallPtr& call, Buffer message, Deferred& later);
  void complete_out_locked(const CallPtr& call, Status status, Buffer response, Deferred& later);
  void end_in_locked(const CallPtr& call, Deferred& later);
  void remove_locked(const CallPtr& call);
  void send_locked(wire::OutFrame&& frame);
  // RESOURCE_EXHAUSTED when a payload of this size may not be sent to the peer.
  std::optional<Status> too_large_locked(std::size_t payload) const;
  std::uint16_t call_headers_locked(const CallOptions& options, std::string& extra) const;
  void send_stream_data_locked(const CallPtr& call, Buffer message, std::uint16_t extra_flags = 0);
  void send_error_locked(std::uint32_t id, std::uint32_t method, const Status& status,
                         wire::FrameType type = wire::FrameType::error);
  void grant_credit_locked(const CallPtr& call);
  void send_end_locked(const CallPtr& call, Deferred& later);
  // The successful end of an incoming server-streaming or bidi call: StreamEnd, then the call
  // leaves the table.
  void end_incoming_stream_locked(const CallPtr& call, std::uint16_t bits, std::string trailer, Deferred& later);
  // What every finished incoming call does last: leaves the table and releases waiters.
  void retire_incoming_locked(const CallPtr& call, const Status& status, Deferred& later);
  void release_writer_locked(const CallPtr& call, Deferred& later);
  void fail_protocol_locked(StatusCode code, std::string why);
  void track_deadline_locked(const CallPtr& call);
  void arm_deadline_timer(Clock::time_point at);
  void on_deadline_timer();
  void start_keepalive();
  void on_keepalive_timer();
  void check_drained_locked(Deferred& later);
  std::uint32_t next_request_id_locked();
  bool full_locked() const noexcept { return mode_ == Mode::full; }
  // Credit-based flow control runs only in full mode, when the peer announced it, and on a
  // reliable connection (a lost CREDIT frame would stall a stream for ever).
  bool credit_flow_locked() const noexcept {
    return mode_ == Mode::full && (features_ & wire::feature::flow_control) && traits_.reliable;
  }
  // FAILED_PRECONDITION for a reliable stream on a connection that may lose frames.
  Status unreliable_stream_refusal() const;
  // `given` itself, or (on an unreliable connection, for a call without a deadline) a copy in
  // `adjusted` with the implicit deadline applied: the per-call path copies nothing otherwise.
  const CallOptions& effective_options(const CallOptions& given, std::optional<CallOptions>& adjusted) const;

  const Role role_;
  const std::shared_ptr<FrameConnection> conn_;
  asio::io_context& io_;
  const SessionOptions options_;
  const std::shared_ptr<const MethodTable> methods_;
  const asio::any_io_executor handler_executor_;
  const std::chrono::microseconds blocking_spin_;
  const std::string peer_;
  const ConnectionTraits traits_;

  mutable std::mutex mu_;
  Mode mode_ = Mode::pending;
  CallMap out_calls_;
  CallMap in_calls_;
  std::uint32_t next_id_ = 0;
  std::uint32_t peer_credit_ = 0;     // initial credit the peer grants per stream
  std::uint32_t peer_max_frame_ = wire::kDefaultMaxFrame;
  std::uint32_t features_ = 0;
  bool draining_ = false;             // we accept no new calls
  bool peer_draining_ = false;        // the peer accepts no new calls
  bool conn_congested_ = false;       // the connection reported above_high_water
  bool ping_outstanding_ = false;     // a PING of ours awaits its PONG
  std::size_t paused_streams_ = 0;    // compat: streams whose backlog paused reading
  std::vector<std::weak_ptr<detail::CallState>> congested_writers_;
  std::function<void()> on_drained_;
  std::function<void(const Status&)> on_closed_;
  StatusHandler ready_;
  std::optional<Status> closed_reason_;
  SessionStats stats_;

  // Deadlines: a min-heap of (time, request id, outgoing); entries whose call is gone are skipped.
  struct DeadlineEntry {
    Clock::time_point at;
    std::uint32_t id;
    bool outgoing;
    bool operator>(const DeadlineEntry& o) const noexcept { return at > o.at; }
  };
  std::priority_queue<DeadlineEntry, std::vector<DeadlineEntry>, std::greater<>> deadlines_;
  Clock::time_point timer_at_ = Clock::time_point::max();  // when the timer is armed for
  asio::steady_timer deadline_timer_;  // touched on the I/O thread only
  asio::steady_timer keepalive_timer_;
  asio::steady_timer handshake_timer_;
  std::atomic<std::int64_t> last_rx_ns_{0};
};

}  // namespace flatpipe
