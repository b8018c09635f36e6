// The per-connection call state machine. docs/protocol.md is the specification; the section
// names in comments below refer to it.
#include "flatpipe/rpc/session.hpp"

#include <asio/post.hpp>

#include <algorithm>
#include <array>
#include <variant>
#include <cinttypes>
#include <cstdio>

#include "flatpipe/log.hpp"
#include "flatpipe/rpc/server_call.hpp"

namespace flatpipe {

using wire::FrameType;
namespace flags = wire::flags;
namespace feature = wire::feature;

namespace {

constexpr std::uint32_t kAcceptorIdBase = 0x80000000u;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

std::string method_text(std::uint32_t method) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%" PRIu32 " (0x%08" PRIx32 ")", method, method);
  return buf;
}

// The logical payload of a frame as one contiguous Buffer (joins an in-process prefix).
Buffer whole_payload(const wire::Frame& f) {
  if (f.prefix.empty()) return f.payload;
  std::string joined(f.prefix.view());
  joined += f.payload.view();
  return Buffer::adopt(std::move(joined));
}

// The same, taking the payload out of `f` when there is no prefix to join (no reference-count
// traffic on the per-frame path). `f.payload` is then empty.
Buffer take_payload(wire::Frame& f) {
  if (f.prefix.empty()) return std::move(f.payload);
  return whole_payload(f);
}

// Splits [header block] body. `has_headers` follows the HEADERS flag. On success the body may
// have been taken out of `f` (take_payload); on failure `f` is untouched.
Result<std::pair<wire::HeaderBlock, Buffer>> split_headers(wire::Frame& f, bool has_headers) {
  if (!has_headers) return std::pair<wire::HeaderBlock, Buffer>{{}, take_payload(f)};
  if (!f.prefix.empty()) {
    auto block = wire::decode_header_block(f.prefix.span());
    if (!block) return block.status();
    if (block->second == f.prefix.size()) return std::pair{std::move(block->first), std::move(f.payload)};
    Buffer rest = whole_payload(f).slice(block->second);
    return std::pair{std::move(block->first), std::move(rest)};
  }
  auto block = wire::decode_header_block(f.payload.span());
  if (!block) return block.status();
  return std::pair{std::move(block->first), f.payload.slice(block->second)};
}

// netpipe's streaming client reacts to StreamData/StreamEnd/StreamError only, so a call that
// streams towards its caller, or that netpipe opened by StreamData, fails with StreamError
// (protocol.md "terminal frame rule").
FrameType failure_type(const detail::CallState& c) {
  return c.netpipe_client_stream || c.kind == CallKind::server_stream || c.kind == CallKind::bidi
             ? FrameType::stream_error
             : FrameType::error;
}

bool writes_outbound(const detail::CallState& c) {
  if (c.outgoing) return c.kind == CallKind::client_stream || c.kind == CallKind::bidi;
  return c.kind == CallKind::server_stream || c.kind == CallKind::bidi;
}

}  // namespace

// Work to run once the Session's lock is released: completion handlers and user callbacks, in
// the order added. A few entries live inline, so the per-frame path allocates nothing here.
class Session::Deferred {
 public:
  Deferred() = default;
  Deferred(const Deferred&) = delete;
  Deferred& operator=(const Deferred&) = delete;
  ~Deferred() {
    if (count_ > 0) run();
  }

  template <class F>
  void emplace_back(F&& fn) {
    push<Call0>(UniqueFunction<void()>(std::forward<F>(fn)));
  }
  void complete(ResponseHandler&& fn, Result<Buffer>&& arg) {
    if (fn) push<Respond>(std::move(fn), std::move(arg));
  }
  void complete(ReadHandler&& fn, ReadResult&& arg) {
    if (fn) push<Deliver>(std::move(fn), std::move(arg));
  }
  void complete(StatusHandler&& fn, Status arg) {
    if (fn) push<Report>(std::move(fn), std::move(arg));
  }

  // Runs everything added so far (and whatever those add), then empties.
  void run() {
    for (std::size_t i = 0; i < count_; ++i) {
      Entry& e = i < kInline ? *inline_[i] : overflow_[i - kInline];
      std::visit([](auto& item) { item.invoke(); }, e);
      if (i < kInline) inline_[i].reset();
    }
    if (count_ > kInline) overflow_.clear();
    count_ = 0;
  }

 private:
  struct Call0 {
    UniqueFunction<void()> fn;
    void invoke() { fn(); }
  };
  struct Respond {
    ResponseHandler fn;
    Result<Buffer> arg;
    void invoke() { fn(std::move(arg)); }
  };
  struct Deliver {
    ReadHandler fn;
    ReadResult arg;
    void invoke() { fn(std::move(arg)); }
  };
  struct Report {
    StatusHandler fn;
    Status arg;
    void invoke() { fn(std::move(arg)); }
  };
  using Entry = std::variant<Call0, Respond, Deliver, Report>;
  static constexpr std::size_t kInline = 4;

  // Builds the entry in place: the handler and its argument are moved once, not three times.
  template <class Item, class... A>
  void push(A&&... args) {
    if (count_ < kInline) {
      inline_[count_].emplace(std::in_place_type<Item>, std::forward<A>(args)...);
    } else {
      overflow_.emplace_back(std::in_place_type<Item>, std::forward<A>(args)...);
    }
    ++count_;
  }

  std::array<std::optional<Entry>, kInline> inline_;
  std::vector<Entry> overflow_;
  std::size_t count_ = 0;
};

const char* call_kind_name(CallKind kind) noexcept {
  switch (kind) {
    case CallKind::unary: return "unary";
    case CallKind::server_stream: return "server streaming";
    case CallKind::client_stream: return "client streaming";
    case CallKind::bidi: return "bidirectional streaming";
  }
  return "unknown";
}

Session::Session(Role role, std::shared_ptr<FrameConnection> connection, asio::io_context& io,
                 SessionOptions options, std::shared_ptr<const MethodTable> methods,
                 asio::any_io_executor handler_executor, std::chrono::microseconds blocking_spin)
    : role_(role),
      conn_(std::move(connection)),
      io_(io),
      options_(options),
      methods_(std::move(methods)),
      handler_executor_(std::move(handler_executor)),
      blocking_spin_(blocking_spin),
      peer_(conn_->peer()),
      traits_(conn_->traits()),
      deadline_timer_(io),
      keepalive_timer_(io),
      handshake_timer_(io) {}

Session::~Session() = default;


void Session::start(StatusHandler ready) {
  last_rx_ns_.store(now_ns());
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (role_ == Role::connector && !options_.netpipe_compat) {
      // Full mode: HELLO first, calls once HELLO_ACK is in (protocol.md "Modes").
      mode_ = Mode::full;
      ready_ = std::move(ready);
      wire::Hello hello;
      hello.max_frame = options_.max_frame;
      hello.initial_credit = options_.initial_credit;
      hello.keepalive_ms = static_cast<std::uint32_t>(options_.keepalive.count());
      send_locked(wire::OutFrame(FrameType::hello, 0, 0, 0, {}, wire::encode_hello(hello)));
      handshake_timer_.expires_after(options_.handshake_timeout);
      handshake_timer_.async_wait([weak = weak_from_this(), ms = options_.handshake_timeout.count()](
                                      const std::error_code& ec) {
        auto self = weak.lock();
        if (ec || !self) return;
        bool waiting;
        {
          std::lock_guard guard(self->mu_);
          waiting = static_cast<bool>(self->ready_);
        }
        if (waiting) {
          self->close(Status(StatusCode::deadline_exceeded,
                             "no handshake answer from " + self->peer_ + " within " + std::to_string(ms) +
                                 " ms (a netpipe server? connect with ?mode=netpipe)"));
        }
      });
    } else {
      if (role_ == Role::connector) mode_ = Mode::compat;  // an acceptor learns the mode from frame 1
      if (ready) later.complete(std::move(ready), Status());
    }
  }
  conn_->start(shared_from_this());
  later.run();
}

void Session::set_on_closed(std::function<void(const Status&)> fn) {
  std::optional<Status> already;
  {
    std::lock_guard lk(mu_);
    if (mode_ != Mode::closed) {
      on_closed_ = std::move(fn);
      return;
    }
    already = closed_reason_;
  }
  if (fn) fn(already.value_or(Status(StatusCode::unavailable, "closed")));
}

bool Session::on_io_thread() const noexcept { return io_.get_executor().running_in_this_thread(); }

// ---------------------------------------------------------------------------------------------
// Frames in

void Session::on_frame(wire::Frame&& frame) {
  // Only keepalive reads it; spare the per-frame clock read otherwise.
  if (options_.keepalive.count() > 0) last_rx_ns_.store(now_ns(), std::memory_order_relaxed);
  Deferred later;
  {
    std::lock_guard lk(mu_);
    ++stats_.frames_received;
    handle_frame(std::move(frame), later);
  }
  later.run();
}

void Session::handle_frame(wire::Frame&& f, Deferred& later) {
  if (mode_ == Mode::closed) return;
  const FrameType type = f.header.type;
  if (mode_ == Mode::pending) {
    // The accepting side learns the mode from the first frame (protocol.md "Modes").
    if (type == FrameType::hello) {
      handle_hello(f, later);
      return;
    }
    if (type == FrameType::request || type == FrameType::notification || type == FrameType::stream_data ||
        type == FrameType::cancel) {
      mode_ = Mode::compat;
      next_id_ = 0;
    } else {
      fail_protocol_locked(StatusCode::invalid_argument,
                           std::string("first frame is ") + wire::frame_type_name(type) + " (type " +
                               std::to_string(static_cast<int>(type)) + "), not a handshake or a call");
      return;
    }
  }
  if (ready_ && type != FrameType::hello_ack) {
    // A connector that gets anything but HELLO_ACK first is not talking to a flatpipe server,
    // or the server refused the handshake (GOAWAY with its reason).
    const std::string why =
        type == FrameType::goaway
            ? "peer refused the handshake: " + wire::decode_status(whole_payload(f).span(), true).to_string()
            : std::string("peer did not answer the flatpipe handshake (it sent ") + wire::frame_type_name(type) +
                  "); for a netpipe server use ?mode=netpipe";
    log(LogLevel::warn, "closing connection to " + peer_ + ": " + why);
    conn_->close(Status(StatusCode::unavailable, why), false);
    mode_ = Mode::compat;  // never answer anything on it
    return;
  }
  const bool full = full_locked();
  switch (type) {
    case FrameType::request: handle_request(f, later); return;
    case FrameType::response:
    case FrameType::error: handle_reply(f, later); return;
    case FrameType::notification: handle_notification(f, later); return;
    case FrameType::stream_data: handle_stream_data(f, later); return;
    case FrameType::stream_end: handle_stream_end(f, later); return;
    case FrameType::stream_error: handle_stream_error(f, later); return;
    case FrameType::cancel: handle_cancel(f, later); return;
    case FrameType::hello_ack:
      if (full && role_ == Role::connector) {
        handle_hello_ack(f, later);
        return;
      }
      break;
    case FrameType::ping:
      if (full) {
        send_locked(wire::OutFrame(FrameType::pong, 0, 0, 0, f.payload));
        return;
      }
      break;
    case FrameType::pong:
      if (full && ping_outstanding_) {  // liveness was noted on arrival
        ping_outstanding_ = false;
        return;
      }
      break;
    case FrameType::credit:
      if (full) {
        handle_credit(f, later);
        return;
      }
      break;
    case FrameType::goaway:
      if (full) {
        handle_goaway(f, later);
        return;
      }
      break;
    case FrameType::hello: break;  // a second handshake: ignored
  }
  ++stats_.frames_ignored;  // unknown or out-of-place types (protocol.md "Bad input")
}

void Session::handle_hello(wire::Frame& f, Deferred& later) {
  auto hello = wire::decode_hello(whole_payload(f).span());
  if (!hello) {
    // Tell the connector why (GOAWAY is understood by anything that sent a HELLO), then close.
    const Status why(hello.code(), "bad handshake: " + hello.status().message());
    log(LogLevel::warn, "closing connection to " + peer_ + ": " + why.message());
    send_locked(wire::OutFrame(FrameType::goaway, flags::status, 0, 0, {}, wire::encode_status(why, true)));
    conn_->close(Status(StatusCode::unavailable, why.message()), true);
    mode_ = Mode::compat;  // answer nothing else on it
    return;
  }
  mode_ = Mode::full;
  next_id_ = kAcceptorIdBase;
  features_ = hello->features & feature::all;
  peer_credit_ = hello->initial_credit;
  peer_max_frame_ = hello->max_frame;
  wire::Hello ack;
  ack.max_frame = options_.max_frame;
  ack.initial_credit = options_.initial_credit;
  ack.keepalive_ms = static_cast<std::uint32_t>(options_.keepalive.count());
  send_locked(wire::OutFrame(FrameType::hello_ack, 0, 0, 0, {}, wire::encode_hello(ack)));
  (void)later;
  start_keepalive();
}

void Session::handle_hello_ack(wire::Frame& f, Deferred& later) {
  if (!ready_) {
    ++stats_.frames_ignored;
    return;
  }
  auto hello = wire::decode_hello(whole_payload(f).span());
  if (!hello) {
    fail_protocol_locked(hello.code(), "bad handshake answer: " + hello.status().message());
    return;
  }
  features_ = hello->features & feature::all;
  peer_credit_ = hello->initial_credit;
  peer_max_frame_ = hello->max_frame;
  handshake_timer_.cancel();
  later.complete(std::move(ready_), Status());
  ready_ = nullptr;
  start_keepalive();
}

void Session::handle_request(wire::Frame& f, Deferred& later) {
  const auto& h = f.header;
  // Rejections before the call exists answer by the opening frame: a streaming Request fails
  // with StreamError, a unary one with Error.
  const bool streaming = (h.flags & flags::streaming) != 0;
  auto reject = [&](Status why) {
    send_error_locked(h.request_id, h.method_id, why, streaming ? FrameType::stream_error : FrameType::error);
  };
  if (draining_) {
    reject(Status(StatusCode::unavailable, "server is shutting down"));
    return;
  }
  if (in_calls_.contains(h.request_id)) {
    // protocol.md "Bad input": the open call is untouched.
    reject(Status(StatusCode::failed_precondition,
                  "request_id " + std::to_string(h.request_id) + " is already in use by an open call"));
    return;
  }
  if (full_locked() && ((role_ == Role::acceptor) != (h.request_id < kAcceptorIdBase))) {
    reject(Status(StatusCode::invalid_argument,
                  "request_id " + std::to_string(h.request_id) + " is outside the caller's id range"));
    return;
  }
  const MethodInfo* method = methods_ ? methods_->find(h.method_id) : nullptr;
  if (!method) {
    reject(Status(StatusCode::unimplemented, "no method with id " + method_text(h.method_id)));
    return;
  }
  if (h.flags & flags::compressed) {
    reject(Status(StatusCode::unimplemented, "compressed payloads are not supported"));
    return;
  }
  if (streaming != (method->kind != CallKind::unary)) {
    reject(Status(StatusCode::unimplemented, "method " + method_text(h.method_id) + " is " +
                                                 call_kind_name(method->kind) + ", called as " +
                                                 (streaming ? "a streaming call" : "unary")));
    return;
  }
  if (!traits_.reliable && method->qos == StreamQos::reliable &&
      (method->kind == CallKind::server_stream || method->kind == CallKind::bidi)) {
    reject(unreliable_stream_refusal());  // its handler could only lose messages silently
    return;
  }
  auto parts = split_headers(f, full_locked() && (h.flags & flags::headers));
  if (!parts) {
    reject(parts.status());
    return;
  }
  Buffer request;
  if (method->kind == CallKind::unary || method->kind == CallKind::server_stream) {
    request = std::move(parts->second);
  }
  auto call = accept_call_locked(f, method->kind, parts->first, std::move(request));
  call->qos = method->qos;
  dispatch_locked(std::move(call), method, later);
}

void Session::handle_notification(wire::Frame& f, Deferred& later) {
  const MethodInfo* method = methods_ ? methods_->find(f.header.method_id) : nullptr;
  if (!method || method->kind != CallKind::unary || draining_) {
    ++stats_.frames_ignored;  // one-way: nobody to tell
    return;
  }
  auto call = std::make_shared<detail::CallState>();
  call->id = f.header.request_id;
  call->method = f.header.method_id;
  call->kind = CallKind::unary;
  call->open = false;  // not in a table: finish() is a no-op, the result dropped
  call->request = take_payload(f);
  call->context.emplace(call->id, call->method, peer_, std::nullopt, Metadata{});
  dispatch_locked(std::move(call), method, later);
}

Session::CallPtr Session::accept_call_locked(const wire::Frame& f, CallKind kind, const wire::HeaderBlock& headers,
                                             Buffer request) {
  auto call = std::make_shared<detail::CallState>();
  call->id = f.header.request_id;
  call->method = f.header.method_id;
  call->kind = kind;
  call->outgoing = false;
  call->request = std::move(request);
  call->credit = peer_credit_;
  if (headers.timeout_us > 0 && (features_ & feature::deadlines)) {
    call->deadline = Clock::now() + std::chrono::microseconds(headers.timeout_us);
  }
  call->context.emplace(call->id, call->method, peer_, call->deadline, headers.metadata);
  in_calls_.emplace(call->id, call);
  ++stats_.calls_accepted;
  track_deadline_locked(call);
  return call;
}

void Session::dispatch_locked(CallPtr call, const MethodInfo* method, Deferred& later) {
  later.emplace_back([self = shared_from_this(), call = std::move(call), method]() mutable {
    if (self->handler_executor_) {
      const asio::any_io_executor& pool = self->handler_executor_;  // before `self` is moved from
      asio::post(pool, [self = std::move(self), call = std::move(call), method] {
        run_handler(self, call, *method);
      });
    } else {
      run_handler(self, call, *method);
    }
  });
}

// A handler that throws fails its call with INTERNAL instead of taking the I/O thread down.
void Session::run_handler(const std::shared_ptr<Session>& self, const CallPtr& call, const MethodInfo& method) {
  try {
    method.handler(ServerCall(self, call));
  } catch (const std::exception& e) {
    self->finish(call, Status(StatusCode::internal, std::string("handler threw: ") + e.what()));
  } catch (...) {
    self->finish(call, Status(StatusCode::internal, "handler threw an exception"));
  }
}

void Session::handle_reply(wire::Frame& f, Deferred& later) {
  const CallPtr* found = out_calls_.find(f.header.request_id);
  if (!found) {
    ++stats_.frames_ignored;  // e.g. the answer to a call that already timed out
    return;
  }
  CallPtr call = *found;
  const bool full = full_locked();
  auto parts = split_headers(f, full && (f.header.flags & flags::headers));
  if (!parts) {
    complete_out_locked(call, Status(StatusCode::internal, "malformed reply: " + parts.status().message()), {}, later);
    return;
  }
  call->trailing = std::move(parts->first.metadata);
  if (f.header.type == FrameType::response && (call->kind == CallKind::server_stream || call->kind == CallKind::bidi)) {
    // A netpipe server runs every method as unary.
    complete_out_locked(call,
                        Status(StatusCode::unimplemented, "peer answered a streaming call with a unary Response"),
                        {}, later);
  } else if (f.header.type == FrameType::response) {
    complete_out_locked(call, Status(), std::move(parts->second), later);
  } else {
    complete_out_locked(call, wire::decode_status(parts->second.span(), full && (f.header.flags & flags::status)), {},
                        later);
  }
}

Session::CallPtr Session::find_stream_call_locked(std::uint32_t id, bool inbound_data) {
  if (full_locked()) {
    const bool mine = (role_ == Role::connector) == (id < kAcceptorIdBase);
    const CallPtr* found = (mine ? out_calls_ : in_calls_).find(id);
    return found ? *found : nullptr;
  }
  // Compatible mode: both sides count from 0; prefer a call of ours that expects stream frames
  // (protocol.md "Ids").
  // A unary call of ours never receives stream frames, so it never matches.
  (void)inbound_data;
  if (const CallPtr* out = out_calls_.find(id); out && (*out)->kind != CallKind::unary) return *out;
  const CallPtr* in = in_calls_.find(id);
  return in ? *in : nullptr;
}

void Session::handle_stream_data(wire::Frame& f, Deferred& later) {
  const auto& h = f.header;
  CallPtr call = find_stream_call_locked(h.request_id, true);
  if (!call) {
    if (h.method_id == 0 || full_locked() || draining_) {
      ++stats_.frames_ignored;
      return;
    }
    // netpipe opens a client-streaming call with StreamData carrying the method id.
    const MethodInfo* method = methods_ ? methods_->find(h.method_id) : nullptr;
    if (!method || method->kind != CallKind::client_stream) {
      if (h.flags & flags::final) {  // answer once, at the end of the caller's stream
        send_error_locked(h.request_id, h.method_id,
                          method ? Status(StatusCode::unimplemented,
                                          "method " + method_text(h.method_id) + " is " +
                                              call_kind_name(method->kind) + ", not client streaming")
                                 : Status(StatusCode::unimplemented, "no method with id " + method_text(h.method_id)),
                          FrameType::stream_error);
      } else {
        ++stats_.frames_ignored;
      }
      return;
    }
    call = accept_call_locked(f, CallKind::client_stream, {}, {});
    call->netpipe_client_stream = true;
    dispatch_locked(call, method, later);
  }
  if (call->outgoing && call->kind == CallKind::client_stream) {
    // netpipe answers a client stream with one StreamData (the reply), then StreamEnd.
    if (!call->got_response) {
      call->response = take_payload(f);
      call->got_response = true;
    } else {
      ++stats_.frames_ignored;
    }
    return;
  }
  const bool reads_inbound = call->outgoing ? (call->kind == CallKind::server_stream || call->kind == CallKind::bidi)
                                            : (call->kind == CallKind::client_stream || call->kind == CallKind::bidi);
  if (!reads_inbound || call->in_done) {
    ++stats_.frames_ignored;
    return;
  }
  if (credit_flow_locked() && call->inbox.size() >= options_.initial_credit) {
    fail_protocol_locked(StatusCode::resource_exhausted,
                         "peer sent StreamData beyond its credit on request " + std::to_string(h.request_id));
    return;
  }
  if (!traits_.reliable && !call->reader && call->inbox.size() >= std::max<std::uint32_t>(1, options_.initial_credit)) {
    // No credit on a lossy connection (only `latest` streams travel on it): the reader keeps
    // the newest initial_credit messages and drops the oldest.
    call->inbox.pop_front();
    ++stats_.messages_dropped_latest;
  }
  deliver_locked(call, take_payload(f), later);
  // Final on the caller's data ends the caller's direction (netpipe sends no StreamEnd after the
  // last chunk of a client stream); on the callee's data it is advisory.
  if (!call->outgoing && (h.flags & flags::final)) end_in_locked(call, later);
}

void Session::deliver_locked(const CallPtr& call, Buffer message, Deferred& later) {
  if (call->reader) {
    ++call->consumed;
    grant_credit_locked(call);
    later.complete(std::move(call->reader), ReadResult(std::optional<Buffer>(std::move(message))));
    call->reader = nullptr;
    return;
  }
  call->inbox.push_back(std::move(message));
  if (!full_locked() && !call->pausing_reads && call->inbox.size() >= options_.compat_stream_queue) {
    // No credit towards a netpipe peer: stop reading until the application catches up.
    call->pausing_reads = true;
    if (paused_streams_++ == 0) conn_->set_read_paused(true);
  }
}

// The peer ended its direction of an incoming call.
void Session::end_in_locked(const CallPtr& call, Deferred& later) {
  call->in_done = true;
  if (call->reader && call->inbox.empty()) {
    later.complete(std::move(call->reader), ReadResult(std::optional<Buffer>()));
    call->reader = nullptr;
  }
}

void Session::handle_stream_end(wire::Frame& f, Deferred& later) {
  CallPtr call = find_stream_call_locked(f.header.request_id, false);
  if (!call) {
    ++stats_.frames_ignored;
    return;
  }
  if (call->outgoing) {
    auto parts = split_headers(f, full_locked() && (f.header.flags & flags::headers));
    if (parts) call->trailing = std::move(parts->first.metadata);
    Buffer response = call->kind == CallKind::client_stream ? call->response : Buffer{};
    complete_out_locked(call, Status(), std::move(response), later);
    return;
  }
  if (!call->in_done) end_in_locked(call, later);  // a StreamEnd after Final is accepted as is
}

void Session::handle_stream_error(wire::Frame& f, Deferred& later) {
  CallPtr call = find_stream_call_locked(f.header.request_id, false);
  if (!call || !call->outgoing) {
    ++stats_.frames_ignored;
    return;
  }
  const bool full = full_locked();
  auto parts = split_headers(f, full && (f.header.flags & flags::headers));
  Buffer text = parts ? parts->second : whole_payload(f);
  complete_out_locked(call, wire::decode_status(text.span(), full && (f.header.flags & flags::status)), {}, later);
}

void Session::handle_cancel(wire::Frame& f, Deferred& later) {
  const CallPtr* found = in_calls_.find(f.header.request_id);
  if (!found) {
    ++stats_.frames_ignored;
    return;
  }
  CallPtr call = *found;
  // protocol.md "Cancel": stop the handler, answer Error.
  send_error_locked(call->id, call->method, Status(StatusCode::cancelled, "cancelled by the caller"),
                    failure_type(*call));
  remove_locked(call);
  call->final_status = Status(StatusCode::cancelled, "cancelled by the caller");
  later.emplace_back([call] { call->context->cancel(); });  // before its reads and writes fail
  release_writer_locked(call, later);
  if (call->reader) {
    later.complete(std::move(call->reader), ReadResult(*call->final_status));
    call->reader = nullptr;
  }
  check_drained_locked(later);
}

void Session::handle_credit(wire::Frame& f, Deferred& later) {
  CallPtr call = find_stream_call_locked(f.header.request_id, false);
  if (!call || f.payload.size() + f.prefix.size() != 4) {
    ++stats_.frames_ignored;
    return;
  }
  const Buffer p = whole_payload(f);
  const std::uint64_t credit = std::uint64_t{call->credit} + wire::get_u32(p.data());
  call->credit = static_cast<std::uint32_t>(std::min<std::uint64_t>(credit, UINT32_MAX));
  release_writer_locked(call, later);
}

void Session::handle_goaway(wire::Frame& f, Deferred& later) {
  (void)later;
  const Buffer p = whole_payload(f);
  if (p.empty()) {
    ++stats_.frames_ignored;
    return;
  }
  const Status st = wire::decode_status(p.span(), (f.header.flags & flags::status) != 0);
  // decode_status maps code 0 to UNKNOWN for error frames; GOAWAY's code 0 means "draining".
  const bool graceful = (f.header.flags & flags::status) && !p.empty() && p.data()[0] == 0;
  if (graceful) {
    peer_draining_ = true;
    return;
  }
  log(LogLevel::warn, "peer " + peer_ + " is closing the connection: " + st.to_string());
  conn_->close(Status(StatusCode::unavailable, "peer closed the connection: " + st.to_string()), false);
}

void Session::on_frame_error(const Status& why) {
  std::lock_guard lk(mu_);
  fail_protocol_locked(why.code() == StatusCode::ok ? StatusCode::invalid_argument : why.code(),
                       "bad frame: " + why.message());
}

void Session::fail_protocol_locked(StatusCode code, std::string why) {
  log(LogLevel::warn, "closing connection to " + peer_ + ": " + why);
  if (full_locked() && (features_ & feature::goaway)) {
    send_locked(wire::OutFrame(FrameType::goaway, flags::status, 0, 0, {},
                               wire::encode_status(Status(code, why), true)));
  }
  conn_->close(Status(StatusCode::unavailable, "protocol error: " + why), true);
}

// ---------------------------------------------------------------------------------------------
// Frames out

std::optional<Status> Session::too_large_locked(std::size_t payload) const {
  // What one message of the connection can carry (one datagram, for udp).
  if (traits_.max_message < SIZE_MAX &&
      (traits_.max_message < wire::kHeaderSize || payload > traits_.max_message - wire::kHeaderSize)) {
    const std::size_t room = traits_.max_message < wire::kHeaderSize ? 0 : traits_.max_message - wire::kHeaderSize;
    return Status(StatusCode::resource_exhausted,
                  "message of " + std::to_string(payload) + " bytes does not fit one message of " + peer_ +
                      ": at most " + std::to_string(room) + " bytes of payload (" +
                      std::to_string(traits_.max_message) + " bytes with the 16-byte frame header); " +
                      "send it in parts or use a stream transport");
  }
  // The peer's limit in full mode; towards netpipe only what the 32-bit length can express.
  const std::uint64_t limit = mode_ == Mode::full ? peer_max_frame_ - wire::kHeaderSize : UINT32_MAX - wire::kHeaderSize;
  if (payload <= limit) return std::nullopt;
  return Status(StatusCode::resource_exhausted, "message of " + std::to_string(payload) +
                                                    " bytes exceeds the peer's limit of " + std::to_string(limit) +
                                                    " bytes");
}

void Session::send_locked(wire::OutFrame&& frame) {
  if (conn_->send(std::move(frame)) == SendResult::above_high_water) conn_congested_ = true;
}

void Session::send_error_locked(std::uint32_t id, std::uint32_t method, const Status& status, FrameType type) {
  const bool full = full_locked();
  send_locked(wire::OutFrame(type, full ? flags::status : 0, id, method, {}, wire::encode_status(status, full)));
}

void Session::send_stream_data_locked(const CallPtr& call, Buffer message, std::uint16_t extra_flags) {
  // The callee names the method on every frame; the caller only on the opening frame, except
  // that a netpipe client stream carries it on every chunk (it has no opening Request).
  const bool names_method = !call->outgoing || (call->kind == CallKind::client_stream && !full_locked());
  send_locked(wire::OutFrame(FrameType::stream_data, static_cast<std::uint16_t>(flags::streaming | extra_flags),
                             call->id, names_method ? call->method : 0, std::move(message)));
}

void Session::grant_credit_locked(const CallPtr& call) {
  if (!credit_flow_locked() || !call->open || call->in_done) return;
  if (call->consumed < std::max<std::uint32_t>(1, options_.initial_credit / 2)) return;
  std::string inc(4, '\0');
  wire::put_u32(reinterpret_cast<std::uint8_t*>(inc.data()), call->consumed);
  call->consumed = 0;
  send_locked(wire::OutFrame(FrameType::credit, 0, call->id, 0, {}, std::move(inc)));
}

// Sends what a writer was holding back, as far as credit and room allow.
void Session::release_writer_locked(const CallPtr& call, Deferred& later) {
  if (!call->open) {
    if (call->blocked_done) {
      Status why = call->final_status.value_or(Status(StatusCode::cancelled, "call ended"));
      if (why.ok()) why = Status(StatusCode::failed_precondition, "the call already finished");
      later.complete(std::move(call->blocked_done), why);
      call->blocked_done = nullptr;
      call->blocked_message.reset();
    }
    return;
  }
  const bool full = credit_flow_locked();
  while (true) {
    if (!call->latest_pending && !call->blocked_message) {
      if (call->end_pending) send_end_locked(call, later);  // StreamEnd costs no credit
      return;
    }
    if (full && call->credit == 0) return;
    if (conn_congested_) {
      congested_writers_.push_back(call);  // on_writable() resumes it
      return;
    }
    if (call->latest_pending) {
      send_stream_data_locked(call, std::move(*call->latest_pending));
      call->latest_pending.reset();
    } else {
      if (call->holdback) std::swap(*call->holdback, *call->blocked_message);
      send_stream_data_locked(call, std::move(*call->blocked_message));
      call->blocked_message.reset();
      later.complete(std::move(call->blocked_done), Status());
      call->blocked_done = nullptr;
    }
    if (full) --call->credit;
  }
}

void Session::on_writable() {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    conn_congested_ = false;
    auto writers = std::move(congested_writers_);
    congested_writers_.clear();
    for (auto& weak : writers) {
      if (auto call = weak.lock()) release_writer_locked(call, later);
    }
  }
  later.run();
}

// ---------------------------------------------------------------------------------------------
// Calls this side opens

std::uint32_t Session::next_request_id_locked() {
  // Full mode: the connector numbers in [0, 2^31), the acceptor in [2^31, 2^32).
  const bool ranged = mode_ == Mode::full;
  const std::uint32_t base = ranged && role_ == Role::acceptor ? kAcceptorIdBase : 0;
  const std::uint32_t span = ranged ? kAcceptorIdBase : 0;  // 0 = the whole 32-bit space
  for (;;) {
    std::uint32_t id = next_id_++;
    if (ranged) {
      id = base + ((id - base) % span);
      next_id_ = id + 1;
    }
    if (!out_calls_.contains(id)) return id;
  }
}

Session::CallPtr Session::open_call_locked(std::uint32_t method, CallKind kind, const CallOptions& options) {
  auto call = std::make_shared<detail::CallState>();
  call->id = next_request_id_locked();
  call->method = method;
  call->kind = kind;
  call->outgoing = true;
  call->deadline = options.deadline;
  call->qos = options.qos;
  call->credit = peer_credit_;
  out_calls_.emplace(call->id, call);
  ++stats_.calls_opened;
  track_deadline_locked(call);
  return call;
}

namespace {

// Why a new call cannot start, if it cannot.
std::optional<Status> refuse_call(bool closed, const std::optional<Status>& reason, bool peer_draining,
                                  bool handshaking, const CallOptions& options) {
  if (closed) return reason.value_or(Status(StatusCode::unavailable, "connection closed"));
  if (handshaking) return Status(StatusCode::unavailable, "connection is still handshaking");
  if (peer_draining) return Status(StatusCode::unavailable, "peer is shutting down and accepts no new calls");
  if (options.deadline && *options.deadline <= Clock::now()) {
    return Status(StatusCode::deadline_exceeded, "deadline already passed when the call started");
  }
  return std::nullopt;
}

}  // namespace

void Session::start_unary(std::uint32_t method, Buffer request, const CallOptions& given, ResponseHandler done) {
  std::optional<CallOptions> adjusted;
  const CallOptions& options = effective_options(given, adjusted);
  Deferred later;
  {
    std::lock_guard lk(mu_);
    std::string extra;
    const std::uint16_t bits = call_headers_locked(options, extra);
    std::optional<Status> why = refuse_call(mode_ == Mode::closed, closed_reason_, peer_draining_,
                                            static_cast<bool>(ready_), options);
    if (!why) why = too_large_locked(request.size() + extra.size());
    if (why) {
      later.complete(std::move(done), Result<Buffer>(*why));
    } else {
      CallPtr call = open_call_locked(method, CallKind::unary, options);
      call->on_response = std::move(done);
      send_locked(wire::OutFrame(FrameType::request, bits, call->id, method, std::move(request), std::move(extra)));
    }
  }
  later.run();
}

Result<std::shared_ptr<detail::CallState>> Session::open_stream(std::uint32_t method, CallKind kind, Buffer request,
                                                                 const CallOptions& given) {
  std::optional<CallOptions> adjusted;
  const CallOptions& options = effective_options(given, adjusted);
  std::lock_guard lk(mu_);
  if (kind == CallKind::unary) return Status(StatusCode::invalid_argument, "open_stream needs a streaming kind");
  if (!traits_.reliable && options.qos == StreamQos::reliable &&
      (kind == CallKind::client_stream || kind == CallKind::bidi)) {
    return unreliable_stream_refusal();
  }
  if (kind != CallKind::server_stream) request = {};
  std::string extra;
  std::uint16_t bits = call_headers_locked(options, extra);
  if (auto why = refuse_call(mode_ == Mode::closed, closed_reason_, peer_draining_, static_cast<bool>(ready_),
                             options)) {
    return *why;
  }
  if (auto big = too_large_locked(request.size() + extra.size())) return *big;
  CallPtr call = open_call_locked(method, kind, options);
  if (!full_locked() && kind == CallKind::client_stream) return call;  // netpipe: opened by its first StreamData
  bits |= kind == CallKind::server_stream ? flags::streaming | flags::requires_ack : flags::streaming;
  send_locked(wire::OutFrame(FrameType::request, bits, call->id, method, std::move(request), std::move(extra)));
  return call;
}

Status Session::unreliable_stream_refusal() const {
  const auto sep = peer_.find("://");
  const std::string scheme = sep == std::string::npos ? std::string("this transport") : peer_.substr(0, sep);
  return Status(StatusCode::failed_precondition,
                scheme + " cannot carry a reliable stream; use qos latest or a stream transport");
}

const CallOptions& Session::effective_options(const CallOptions& given, std::optional<CallOptions>& adjusted) const {
  if (traits_.reliable || given.deadline || options_.unreliable_call_timeout.count() <= 0) return given;
  adjusted.emplace(given);
  adjusted->deadline = Clock::now() + options_.unreliable_call_timeout;
  return *adjusted;
}

// The header block of a Request (deadline and metadata), full mode only. Returns the flag bits.
std::uint16_t Session::call_headers_locked(const CallOptions& options, std::string& extra) const {
  if (!full_locked() || (!options.deadline && options.metadata.empty())) return 0;
  wire::HeaderBlock block;
  if (options.deadline && (features_ & feature::deadlines)) {
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(*options.deadline - Clock::now());
    block.timeout_us = static_cast<std::uint64_t>(std::max<std::int64_t>(1, left.count()));
  }
  if (features_ & feature::metadata) block.metadata = options.metadata;
  wire::encode_header_block(block, extra);
  return flags::headers;
}

Status Session::notify(std::uint32_t method, Buffer payload) {
  std::lock_guard lk(mu_);
  if (mode_ == Mode::closed) return closed_reason_.value_or(Status(StatusCode::unavailable, "connection closed"));
  if (mode_ != Mode::full) {
    // netpipe servers answer a Notification as a Request, or take it for a reply to a call of theirs.
    return Status(StatusCode::failed_precondition, "notifications are not sent to netpipe peers");
  }
  if (auto big = too_large_locked(payload.size())) return *big;
  send_locked(wire::OutFrame(FrameType::notification, 0, 0, method, std::move(payload)));
  return {};
}

void Session::cancel(const CallPtr& call, Status why) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (!call->open || !call->outgoing) return;
    if (mode_ != Mode::closed) send_locked(wire::OutFrame(FrameType::cancel, 0, call->id, 0, {}));
    complete_out_locked(call, std::move(why), {}, later);
  }
  later.run();
}

void Session::await_response(const CallPtr& call, ResponseHandler done) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (call->final_status) {
      Result<Buffer> r = call->final_status->ok() ? Result<Buffer>(call->response) : Result<Buffer>(*call->final_status);
      later.complete(std::move(done), std::move(r));
    } else {
      call->on_response = std::move(done);
    }
  }
  later.run();
}

void Session::complete_out_locked(const CallPtr& call, Status status, Buffer response, Deferred& later) {
  if (!call->open) return;
  remove_locked(call);
  call->final_status = status;
  call->in_done = true;
  // A unary call's outcome has this one taker (await_response serves streams only), so the
  // response moves to it instead of being copied and kept.
  const bool sole_taker = call->on_response && call->kind == CallKind::unary;
  if (!sole_taker) call->response = std::move(response);
  if (call->on_response) {
    Result<Buffer> r = !status.ok()  ? Result<Buffer>(status)
                       : sole_taker ? Result<Buffer>(std::move(response))
                                    : Result<Buffer>(call->response);
    later.complete(std::move(call->on_response), std::move(r));
    call->on_response = nullptr;
  }
  if (call->reader && call->inbox.empty()) {
    ReadResult r = status.ok() ? ReadResult(std::optional<Buffer>()) : ReadResult(status);
    later.complete(std::move(call->reader), std::move(r));
    call->reader = nullptr;
  }
  release_writer_locked(call, later);
}

void Session::remove_locked(const CallPtr& call) {
  call->open = false;
  CallMap& map = call->outgoing ? out_calls_ : in_calls_;
  map.erase(call->id, call);  // only this call: its id may already serve a newer one
  if (call->pausing_reads) {
    call->pausing_reads = false;
    if (--paused_streams_ == 0 && mode_ != Mode::closed) conn_->set_read_paused(false);
  }
}

// ---------------------------------------------------------------------------------------------
// Streams

void Session::write(const CallPtr& call, Buffer message, StatusHandler done) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    Status refuse;
    if (!writes_outbound(*call)) {
      refuse = Status(StatusCode::failed_precondition,
                      std::string("this side of a ") + call_kind_name(call->kind) + " call does not write a stream");
    } else if (!call->open) {
      refuse = call->final_status.value_or(Status(StatusCode::cancelled, "call ended"));
      if (refuse.ok()) refuse = Status(StatusCode::failed_precondition, "the call already finished");
    } else if (call->out_done) {
      refuse = Status(StatusCode::failed_precondition, "the stream was already ended by this side");
    } else if (call->blocked_done) {
      refuse = Status(StatusCode::failed_precondition, "a write is already waiting on this stream");
    } else if (!traits_.reliable && call->qos == StreamQos::reliable) {
      refuse = unreliable_stream_refusal();
    } else if (auto big = too_large_locked(message.size())) {
      refuse = *big;
    }
    if (!refuse.ok()) {
      later.complete(std::move(done), refuse);
    } else if (credit_flow_locked()) {
      // Credit bounds what the reader must hold; the connection's high-water mark bounds what
      // this side queues (credit x message size could be large).
      if (call->credit > 0 && !call->latest_pending && !conn_congested_) {
        --call->credit;
        send_stream_data_locked(call, std::move(message));
        later.complete(std::move(done), Status());
      } else if (call->qos == StreamQos::latest) {
        if (call->latest_pending) ++stats_.messages_dropped_latest;
        call->latest_pending = std::move(message);
        later.complete(std::move(done), Status());
      } else {
        call->blocked_message = std::move(message);
        call->blocked_done = std::move(done);
        if (conn_congested_) congested_writers_.push_back(call);
      }
    } else if (conn_congested_ && call->qos == StreamQos::latest && !call->holdback) {
      // A `latest` writer never waits, with or without credit: the newest message waits instead.
      if (call->latest_pending) {
        ++stats_.messages_dropped_latest;
      } else {
        congested_writers_.push_back(call);
      }
      call->latest_pending = std::move(message);
      later.complete(std::move(done), Status());
    } else if (conn_congested_) {
      call->blocked_message = std::move(message);
      call->blocked_done = std::move(done);
      congested_writers_.push_back(call);
    } else {
      if (!full_locked() && call->outgoing && call->kind == CallKind::client_stream) {
        // netpipe marks the last message of a client stream Final: hold one back until we
        // know whether another follows.
        if (call->holdback) send_stream_data_locked(call, std::move(*call->holdback));
        call->holdback = std::move(message);
      } else {
        send_stream_data_locked(call, std::move(message));
      }
      later.complete(std::move(done), Status());
    }
  }
  later.run();
}

void Session::write_done(const CallPtr& call) {
  std::lock_guard lk(mu_);
  if (!call->open || call->out_done || !writes_outbound(*call) || !call->outgoing) return;
  call->out_done = true;
  if (call->latest_pending || call->blocked_message) {
    // The freshest `latest` message, or a reliable one still waiting for credit, goes first;
    // the end follows when credit lets it out (release_writer_locked).
    call->end_pending = true;
    return;
  }
  Deferred none;  // an outgoing call's end completes nothing
  send_end_locked(call, none);
}

void Session::send_end_locked(const CallPtr& call, Deferred& later) {
  call->end_pending = false;
  if (!call->outgoing) {
    end_incoming_stream_locked(call, call->end_flags, std::move(call->end_trailer), later);
    return;
  }
  if (!full_locked() && call->kind == CallKind::client_stream) {
    Buffer last = call->holdback ? std::move(*call->holdback) : Buffer{};
    call->holdback.reset();
    send_stream_data_locked(call, std::move(last), flags::final);
    return;
  }
  send_locked(wire::OutFrame(FrameType::stream_end, 0, call->id, 0, {}));
}

void Session::read(const CallPtr& call, ReadHandler done) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (!call->inbox.empty()) {
      Buffer m = call->inbox.pop_front();
      ++call->consumed;
      grant_credit_locked(call);
      if (call->pausing_reads && call->inbox.size() <= options_.compat_stream_queue / 2) {
        call->pausing_reads = false;
        if (--paused_streams_ == 0 && mode_ != Mode::closed) conn_->set_read_paused(false);
      }
      later.complete(std::move(done), ReadResult(std::optional<Buffer>(std::move(m))));
    } else if (call->final_status && !call->final_status->ok()) {
      later.complete(std::move(done), ReadResult(*call->final_status));
    } else if (call->final_status && !call->outgoing) {
      later.complete(std::move(done),
                     ReadResult(Status(StatusCode::failed_precondition, "the call already finished")));
    } else if (call->in_done || call->final_status) {
      later.complete(std::move(done), ReadResult(std::optional<Buffer>()));
    } else if (call->reader) {
      later.complete(std::move(done),
                     ReadResult(Status(StatusCode::failed_precondition, "a read is already waiting on this stream")));
    } else {
      call->reader = std::move(done);
    }
  }
  later.run();
}

// ---------------------------------------------------------------------------------------------
// Calls the peer opened

void Session::finish(const CallPtr& call, Result<Buffer> outcome) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (!call->open || call->outgoing) return;
    const bool full = full_locked();
    Metadata trailing = call->context->take_trailing_metadata();
    std::string extra;
    std::uint16_t bits = 0;
    if (full && !trailing.empty() && (features_ & feature::metadata)) {
      wire::HeaderBlock block;
      block.metadata = std::move(trailing);
      wire::encode_header_block(block, extra);
      bits = flags::headers;
    }
    if (outcome.ok() && call->kind != CallKind::server_stream && call->kind != CallKind::bidi) {
      if (auto big = too_large_locked(outcome->size() + extra.size())) outcome = *big;
    }
    const Status status = outcome.status();
    const bool streams_out = call->kind == CallKind::server_stream || call->kind == CallKind::bidi;
    if (call->end_pending) return;  // already finished; the end waits behind a `latest` message
    if (call->latest_pending) {
      if (status.ok() && streams_out) {
        // The freshest message is not lost to a clean end: it goes first, when credit allows,
        // and the end follows it (release_writer_locked -> send_end_locked).
        call->out_done = true;
        call->end_pending = true;
        call->end_flags = bits;
        call->end_trailer = std::move(extra);
        return;
      }
      ++stats_.messages_dropped_latest;
      call->latest_pending.reset();
    }
    if (call->netpipe_client_stream) {
      // Answered the way netpipe opened it: the reply as StreamData, then StreamEnd.
      if (status.ok()) {
        send_stream_data_locked(call, std::move(outcome).value());
        send_locked(wire::OutFrame(FrameType::stream_end, 0, call->id, call->method, {}));
      } else {
        send_error_locked(call->id, call->method, status, FrameType::stream_error);
      }
    } else if (status.ok()) {
      if (streams_out) {
        end_incoming_stream_locked(call, bits, std::move(extra), later);
        return;
      }
      send_locked(wire::OutFrame(FrameType::response, bits, call->id, call->method, std::move(outcome).value(),
                                 std::move(extra)));
    } else {
      if (full) {
        extra += wire::encode_status(status, true);
        bits |= flags::status;
      } else {
        extra = wire::encode_status(status, false);
      }
      send_locked(wire::OutFrame(failure_type(*call), bits, call->id, call->method, {}, std::move(extra)));
    }
    retire_incoming_locked(call, status, later);
  }
  later.run();
}

void Session::end_incoming_stream_locked(const CallPtr& call, std::uint16_t bits, std::string trailer,
                                         Deferred& later) {
  send_locked(wire::OutFrame(FrameType::stream_end, bits, call->id, call->method, {}, std::move(trailer)));
  retire_incoming_locked(call, Status(), later);
}

void Session::retire_incoming_locked(const CallPtr& call, const Status& status, Deferred& later) {
  remove_locked(call);
  // OK for a clean finish: a later read or write is refused with "the call already finished",
  // spelled out only then (no string per call here).
  call->final_status = status;
  release_writer_locked(call, later);
  if (call->reader) {
    later.complete(std::move(call->reader), ReadResult(std::optional<Buffer>()));
    call->reader = nullptr;
  }
  check_drained_locked(later);
}

// ---------------------------------------------------------------------------------------------
// Deadlines and keepalive

void Session::track_deadline_locked(const CallPtr& call) {
  if (!call->deadline) return;
  deadlines_.push({*call->deadline, call->id, call->outgoing});
  // Completed calls leave their entries behind; rebuild when they dominate.
  const std::size_t live = out_calls_.size() + in_calls_.size();
  if (deadlines_.size() > 64 && deadlines_.size() > 4 * live) {
    std::vector<DeadlineEntry> keep;
    while (!deadlines_.empty()) {
      const DeadlineEntry e = deadlines_.top();
      deadlines_.pop();
      const CallPtr* found = (e.outgoing ? out_calls_ : in_calls_).find(e.id);
      if (found && (*found)->deadline == e.at) keep.push_back(e);
    }
    for (const auto& e : keep) deadlines_.push(e);
  }
  if (*call->deadline < timer_at_) arm_deadline_timer(*call->deadline);
}

void Session::arm_deadline_timer(Clock::time_point at) {
  // Requires mu_. The timer is re-armed on the I/O thread so that only one thread touches it.
  timer_at_ = at;
  asio::post(io_, [weak = weak_from_this()] {
    auto self = weak.lock();
    if (!self) return;
    std::lock_guard lk(self->mu_);
    if (self->mode_ == Mode::closed || self->timer_at_ == Clock::time_point::max()) return;
    self->deadline_timer_.expires_at(self->timer_at_);
    self->deadline_timer_.async_wait([weak](const std::error_code& ec) {
      if (ec) return;  // re-armed or closed
      if (auto s = weak.lock()) s->on_deadline_timer();
    });
  });
}

void Session::on_deadline_timer() {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (mode_ == Mode::closed) return;
    const auto now = Clock::now();
    timer_at_ = Clock::time_point::max();
    while (!deadlines_.empty() && deadlines_.top().at <= now) {
      const DeadlineEntry e = deadlines_.top();
      deadlines_.pop();
      const CallPtr* found = (e.outgoing ? out_calls_ : in_calls_).find(e.id);
      if (!found || (*found)->deadline != e.at) continue;
      CallPtr call = *found;
      const Status expired(StatusCode::deadline_exceeded, "deadline exceeded");
      if (call->outgoing) {
        // netpipe callers send nothing when they time out, and some netpipe servers run a
        // handler for a Cancel: tell only flatpipe peers.
        if (full_locked()) send_locked(wire::OutFrame(FrameType::cancel, 0, call->id, 0, {}));
        complete_out_locked(call, expired, {}, later);
      } else {
        send_error_locked(call->id, call->method, expired, failure_type(*call));
        remove_locked(call);
        call->final_status = expired;
        later.emplace_back([call] { call->context->cancel(); });
        release_writer_locked(call, later);
        if (call->reader) {
          later.complete(std::move(call->reader), ReadResult(expired));
          call->reader = nullptr;
        }
      }
    }
    check_drained_locked(later);
    if (!deadlines_.empty()) arm_deadline_timer(deadlines_.top().at);
  }
  later.run();
}

void Session::start_keepalive() {
  // Requires mu_.
  if (options_.keepalive.count() <= 0 || !(features_ & feature::keepalive)) return;
  keepalive_timer_.expires_after(options_.keepalive);
  keepalive_timer_.async_wait([weak = weak_from_this()](const std::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->on_keepalive_timer();
  });
}

void Session::on_keepalive_timer() {
  bool dead = false;
  {
    std::lock_guard lk(mu_);
    if (mode_ == Mode::closed) return;
    const auto idle = std::chrono::nanoseconds(now_ns() - last_rx_ns_.load());
    if (idle >= 3 * options_.keepalive) {
      dead = true;
    } else {
      if (idle >= options_.keepalive) {
        std::string token(8, '\0');
        wire::put_u64(reinterpret_cast<std::uint8_t*>(token.data()), static_cast<std::uint64_t>(now_ns()));
        send_locked(wire::OutFrame(FrameType::ping, 0, 0, 0, {}, std::move(token)));
        ping_outstanding_ = true;
      }
      start_keepalive();
    }
  }
  if (dead) {
    log(LogLevel::warn, "keepalive: nothing from " + peer_ + " for 3 intervals, closing");
    close(Status(StatusCode::unavailable,
                 "keepalive timeout: nothing received from the peer for " +
                     std::to_string(3 * options_.keepalive.count()) + " ms"));
  }
}

// ---------------------------------------------------------------------------------------------
// The connection

void Session::drain(std::function<void()> drained) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    on_drained_ = std::move(drained);
    if (!draining_) {
      draining_ = true;
      if (full_locked() && (features_ & feature::goaway)) {
        send_locked(wire::OutFrame(FrameType::goaway, flags::status, 0, 0, {},
                                   wire::encode_status(Status(StatusCode::ok, "shutting down"), true)));
      }
    }
    check_drained_locked(later);
  }
  later.run();
}

void Session::check_drained_locked(Deferred& later) {
  if ((draining_ || mode_ == Mode::closed) && in_calls_.empty() && on_drained_) {
    later.emplace_back(std::move(on_drained_));
    on_drained_ = nullptr;
  }
}

void Session::close(Status why) { conn_->close(why, true); }

void Session::on_closed(const Status& why) {
  Deferred later;
  {
    std::lock_guard lk(mu_);
    if (mode_ == Mode::closed) return;
    mode_ = Mode::closed;
    const Status reason(why.code() == StatusCode::deadline_exceeded ? why.code() : StatusCode::unavailable,
                        why.message());
    closed_reason_ = reason;
    // Mark broken first, then fail every outstanding call with one error.
    CallMap outs = std::move(out_calls_);
    CallMap ins = std::move(in_calls_);
    out_calls_.clear();
    in_calls_.clear();
    outs.for_each([&](std::uint32_t, CallPtr& call) {
      call->open = true;  // complete_out_locked expects an open call
      complete_out_locked(call, reason, {}, later);
    });
    ins.for_each([&](std::uint32_t, CallPtr& call) {
      call->open = false;
      call->final_status = Status(StatusCode::cancelled, "connection lost: " + why.message());
      later.emplace_back([call] { call->context->cancel(); });
      release_writer_locked(call, later);
      if (call->reader) {
        later.complete(std::move(call->reader), ReadResult(*call->final_status));
        call->reader = nullptr;
      }
    });
    paused_streams_ = 0;
    if (ready_) {
      later.complete(std::move(ready_), reason);
      ready_ = nullptr;
    }
    handshake_timer_.cancel();
    deadline_timer_.cancel();
    keepalive_timer_.cancel();
    timer_at_ = Clock::time_point::max();
    check_drained_locked(later);
    if (on_closed_) {
      later.emplace_back([fn = std::move(on_closed_), reason] { fn(reason); });
      on_closed_ = nullptr;
    }
  }
  later.run();
}

bool Session::is_open() const {
  std::lock_guard lk(mu_);
  return mode_ != Mode::closed;
}

bool Session::is_full_mode() const {
  std::lock_guard lk(mu_);
  return mode_ == Mode::full;
}

std::string Session::peer() const { return peer_; }

std::size_t Session::open_calls() const {
  std::lock_guard lk(mu_);
  return out_calls_.size() + in_calls_.size();
}

SessionStats Session::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

}  // namespace flatpipe
