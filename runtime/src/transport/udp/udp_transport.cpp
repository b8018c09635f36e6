// udp://host:port — one frame body per datagram, best effort (docs/transports/udp.md).
//
// Wire: a datagram carries exactly one V2 frame body (16-byte header + payload), without the
// 4-byte length prefix of the stream transports (docs/protocol.md section 1.2); the datagram's
// own length delimits it. Nothing is retransmitted, acknowledged or reordered here: the
// connection reports ConnectionTraits{reliable = false, ordered = false, max_message = the
// largest datagram}, and the core refuses what it cannot carry.
//
// A UdpHub owns one socket, its send queue and its receive loop:
//  - listener: an unconnected socket bound to the endpoint; datagrams are demultiplexed by source
//    address into per-peer UdpConnections (a new address whose first datagram can open a call is
//    "accepted"); at most max_peers at a time, and a peer silent for idle_ms is closed, so
//    spoofed source addresses cannot grow memory without bound;
//  - connector: a socket connected to the server, with one UdpConnection.
// Everything that touches a sink runs on the hub's strand, one at a time (FrameSink contract).
//
// Endpoint parameters: max_datagram=N (largest datagram, 64..65507; default 65507, IPv6 65527),
// listener only: max_peers=N (default 1024), idle_ms=N (default 120000).
#include "transport/bind_endpoint.hpp"
#include "transport/udp/udp_counters.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <asio/bind_executor.hpp>
#include <asio/ip/udp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>

#include "flatpipe/log.hpp"
#include "flatpipe/transport/transport.hpp"

namespace flatpipe {

namespace detail {
UdpCounters& udp_counters() noexcept {
  static UdpCounters counters;
  return counters;
}
}  // namespace detail

namespace {

using asio::ip::udp;
using Strand = asio::strand<asio::io_context::executor_type>;
using SteadyClock = std::chrono::steady_clock;

constexpr std::size_t kMaxDatagramV4 = 65507;  // 65535 - 8 (UDP header) - 20 (IPv4 header)
constexpr std::size_t kMaxDatagramV6 = 65527;  // 65535 - 8 (UDP header); the IPv6 header is extra
constexpr std::size_t kMinDatagram = 64;
constexpr std::size_t kReceiveRoom = 65536;    // any datagram fits: never truncated
constexpr std::size_t kSlabSize = 256 * 1024;
constexpr std::size_t kInboxLimit = 1024;      // frames held for a paused or not yet started reader

detail::UdpCounters& counters() { return detail::udp_counters(); }

std::string format(const udp::endpoint& ep) {
  const auto addr = ep.address();
  std::string host = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
  return "udp://" + host + ":" + std::to_string(ep.port());
}

Result<std::size_t> number_param(const Endpoint& ep, std::string_view key, std::size_t fallback, std::size_t lo,
                                 std::size_t hi) {
  if (!ep.has_param(key)) return fallback;
  const std::string text = ep.param(key);
  std::size_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size() || value < lo || value > hi) {
    return Status(StatusCode::invalid_argument, std::string(key) + "=" + text + " in " + ep.to_string() +
                                                    " is not a number in [" + std::to_string(lo) + ", " +
                                                    std::to_string(hi) + "]");
  }
  return value;
}

// Can a frame of this type be the first one a new peer sends? (HELLO, or a call opening.)
bool opens_connection(wire::FrameType t) {
  return t == wire::FrameType::hello || t == wire::FrameType::request || t == wire::FrameType::notification ||
         t == wire::FrameType::stream_data;
}

class UdpHub;

// ---------------------------------------------------------------------------------------------
// One peer's connection. Sink state lives on the hub's strand.

class UdpConnection final : public FrameConnection, public std::enable_shared_from_this<UdpConnection> {
 public:
  UdpConnection(std::shared_ptr<UdpHub> hub, udp::endpoint remote, const ConnectionLimits& limits,
                std::size_t max_datagram)
      : hub_(std::move(hub)),
        remote_(remote),
        peer_name_(format(remote)),
        limits_(limits),
        max_datagram_(max_datagram),
        max_frame_(limits.max_frame) {}

  void start(std::shared_ptr<FrameSink> sink) override;
  SendResult send(wire::OutFrame&& frame) override;
  void set_read_paused(bool paused) override;
  void set_max_frame(std::uint32_t max_frame) override { max_frame_.store(max_frame); }
  void close(const Status& why, bool flush) override;
  std::size_t queued_bytes() const override;
  std::string peer() const override { return peer_name_; }
  asio::any_io_executor executor() const override;
  ConnectionTraits traits() const override {
    ConnectionTraits t;
    t.reliable = false;
    t.ordered = false;
    t.max_message = max_datagram_;
    return t;
  }

  // ---- the hub's side (strand) ----
  void deliver(wire::Frame&& frame);
  void notify_writable();
  void fail(Status why) { close(why, false); }
  std::uint32_t max_frame() const noexcept { return max_frame_.load(); }
  const udp::endpoint& remote() const noexcept { return remote_; }
  SteadyClock::time_point last_rx;  // strand

 private:
  void pump();
  void finish(const Status& why);

  const std::shared_ptr<UdpHub> hub_;
  const udp::endpoint remote_;
  const std::string peer_name_;
  const ConnectionLimits limits_;
  const std::size_t max_datagram_;
  std::atomic<std::uint32_t> max_frame_;
  std::atomic<bool> closing_{false};

  // strand only
  std::shared_ptr<FrameSink> sink_;
  std::deque<wire::Frame> inbox_;
  bool started_ = false;
  bool paused_ = false;
  bool finished_ = false;
};

// ---------------------------------------------------------------------------------------------
// A socket, its send queue and its receive loop.

class UdpHub final : public std::enable_shared_from_this<UdpHub> {
 public:
  struct Options {
    bool listener = false;
    std::size_t max_datagram = kMaxDatagramV4;
    std::size_t max_peers = 1024;
    std::chrono::milliseconds idle{120000};
  };

  UdpHub(udp::socket socket, Strand strand, const ConnectionLimits& limits, Options options, AcceptHandler on_accept)
      : strand_(std::move(strand)),
        socket_(std::move(socket)),
        fd_(socket_.native_handle()),
        limits_(limits),
        options_(options),
        on_accept_(std::move(on_accept)),
        idle_timer_(strand_) {}

  const Strand& strand() const noexcept { return strand_; }
  const Options& options() const noexcept { return options_; }
  const ConnectionLimits& limits() const noexcept { return limits_; }

  // Connector: the one connection, before receiving starts.
  void set_connection(std::shared_ptr<UdpConnection> conn) { single_ = std::move(conn); }

  void start() {
    asio::post(strand_, [self = shared_from_this()] {
      self->receive_next();
      if (self->options_.listener) self->arm_idle_timer();
    });
  }

  // ---- sending (any thread) ----

  SendResult send(const UdpConnection& from, wire::OutFrame&& frame) {
    const std::size_t size = frame.size() - wire::kPrefixSize;  // the datagram: body only
    if (size > options_.max_datagram) {
      // The core refuses such messages before they get here (ConnectionTraits::max_message).
      counters().oversized.fetch_add(1, std::memory_order_relaxed);
      log(LogLevel::error, "udp: a frame of " + std::to_string(size) + " bytes exceeds the largest datagram (" +
                               std::to_string(options_.max_datagram) + " bytes) and was not sent to " + from.peer());
      return SendResult::ok;
    }
    std::lock_guard lk(mu_);
    if (fd_ < 0) return SendResult::closed;
    if (queue_.empty()) {
      const int err = send_now_locked(from.remote(), frame);
      if (err == 0) return SendResult::ok;
      if (err != EAGAIN && err != EWOULDBLOCK) {
        send_failed_locked(from, err);
        return SendResult::ok;
      }
    }
    queue_.push_back(Pending{&from, from.remote(), std::move(frame)});
    queued_bytes_ += size;
    if (!waiting_) {
      waiting_ = true;
      // The socket's operations start on the strand only (asio objects are not thread-safe).
      asio::post(strand_, [self = shared_from_this()] { self->wait_writable(); });
    }
    if (queued_bytes_ > limits_.high_water) {
      blocked_.push_back(std::const_pointer_cast<UdpConnection>(from.shared_from_this()));
      return SendResult::above_high_water;
    }
    return SendResult::ok;
  }

  std::size_t queued_bytes() const {
    std::lock_guard lk(mu_);
    return queued_bytes_;
  }

  // Drops what `from` still has queued (close without flush).
  void drop_queued(const UdpConnection& from) {
    std::lock_guard lk(mu_);
    std::deque<Pending> keep;
    for (auto& p : queue_) {
      if (p.from == &from) {
        queued_bytes_ -= p.frame.size() - wire::kPrefixSize;
      } else {
        keep.push_back(std::move(p));
      }
    }
    queue_.swap(keep);
  }

  // ---- the connections' side (strand) ----

  // A connection finished: forget it; a connector's socket closes with it.
  void forget(const UdpConnection& conn) {
    if (options_.listener) {
      auto it = peers_.find(conn.remote());
      if (it != peers_.end() && it->second.get() == &conn) peers_.erase(it);
      if (listener_closed_ && peers_.empty()) close_socket();
    } else {
      single_.reset();
      close_socket();
    }
  }

  // Listener::close(): no new peers; the socket stays open while accepted peers live.
  void close_listener() {
    asio::post(strand_, [self = shared_from_this()] {
      self->listener_closed_ = true;
      if (self->peers_.empty()) self->close_socket();
    });
  }

 private:
  struct Pending {
    const UdpConnection* from;  // tag only, for drop_queued()
    udp::endpoint to;
    wire::OutFrame frame;
  };

  // One datagram, gathered from the frame's pieces (no copy). Returns 0 or errno. Requires mu_.
  int send_now_locked(const udp::endpoint& to, const wire::OutFrame& f) {
    iovec iov[3];
    int n = 0;
    auto add = [&](const void* p, std::size_t len) {
      if (len == 0) return;
      iov[n].iov_base = const_cast<void*>(p);
      iov[n].iov_len = len;
      ++n;
    };
    add(f.head.data() + wire::kPrefixSize, wire::kHeaderSize);
    add(f.extra.data(), f.extra.size());
    add(f.body.data(), f.body.size());
    msghdr msg{};
    if (options_.listener) {
      msg.msg_name = const_cast<void*>(static_cast<const void*>(to.data()));
      msg.msg_namelen = static_cast<socklen_t>(to.size());
    }
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(n);
    for (;;) {
      if (::sendmsg(fd_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) return 0;
      if (errno != EINTR) return errno;
    }
  }

  // A datagram could not be sent. It is lost (udp); a connector whose peer refuses (ICMP port
  // unreachable reported on the connected socket) fails its connection. Requires mu_.
  void send_failed_locked(const UdpConnection& from, int err) {
    counters().send_errors.fetch_add(1, std::memory_order_relaxed);
    if (!options_.listener && err == ECONNREFUSED) {
      asio::post(strand_, [conn = std::const_pointer_cast<UdpConnection>(from.shared_from_this())] {
        conn->fail(Status(StatusCode::unavailable,
                          "cannot reach " + conn->peer() + ": connection refused (nothing listens there)"));
      });
    }
  }

  // Strand: resumes sending once the socket takes datagrams again.
  void wait_writable() {
    if (socket_closed_) return;
    socket_.async_wait(udp::socket::wait_write,
                       asio::bind_executor(strand_, [self = shared_from_this()](const std::error_code& ec) {
                         self->on_send_ready(ec);
                       }));
  }

  void on_send_ready(const std::error_code& ec) {
    std::vector<std::shared_ptr<UdpConnection>> wake;
    {
      std::lock_guard lk(mu_);
      waiting_ = false;
      if (fd_ < 0) return;
      if (ec && ec != asio::error::operation_aborted) {
        counters().send_errors.fetch_add(1, std::memory_order_relaxed);
      }
      while (!queue_.empty()) {
        Pending& p = queue_.front();
        const int err = send_now_locked(p.to, p.frame);
        if (err == EAGAIN || err == EWOULDBLOCK) break;
        if (err != 0 && p.from) send_failed_locked(*p.from, err);
        queued_bytes_ -= p.frame.size() - wire::kPrefixSize;
        queue_.pop_front();
      }
      if (!queue_.empty()) {
        waiting_ = true;
        wait_writable();
      }
      if (queued_bytes_ <= limits_.low_water) wake.swap(blocked_);
      if (queue_.empty() && close_when_drained_) close_socket_locked();
    }
    for (auto& c : wake) c->notify_writable();
  }

  // ---- receiving (strand) ----

  void receive_next() {
    if (socket_closed_) return;
    if (!slab_ || kSlabSize - slab_used_ < kReceiveRoom) {
      if (!slab_ || slab_.use_count() > 1) slab_ = std::shared_ptr<std::uint8_t[]>(new std::uint8_t[kSlabSize]);
      slab_used_ = 0;
    }
    socket_.async_receive_from(asio::buffer(slab_.get() + slab_used_, kReceiveRoom), sender_,
                               asio::bind_executor(strand_, [self = shared_from_this()](const std::error_code& ec,
                                                                                        std::size_t n) {
                                 self->on_receive(ec, n);
                               }));
  }

  void on_receive(const std::error_code& ec, std::size_t n) {
    if (socket_closed_ || ec == asio::error::operation_aborted) return;
    if (ec) {
      if (!options_.listener && ec == asio::error::connection_refused) {
        if (single_) {
          single_->fail(Status(StatusCode::unavailable,
                               "cannot reach " + single_->peer() + ": connection refused (nothing listens there)"));
        }
        receive_next();  // until the connection's close closes the socket
        return;
      }
      // Transient (e.g. an ICMP error reported on an unconnected socket): the datagram is lost.
      counters().send_errors.fetch_add(1, std::memory_order_relaxed);
      receive_next();
      return;
    }
    const std::uint8_t* p = slab_.get() + slab_used_;
    route(p, n);
    slab_used_ += (n + 7) & ~std::size_t{7};
    receive_next();
  }

  // Checks one datagram and hands it to its connection. Whatever is wrong with it, it is dropped
  // and counted; nothing the network sends can close a connection or grow memory without bound.
  void route(const std::uint8_t* p, std::size_t n) {
    if (n < wire::kHeaderSize) {
      counters().malformed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    wire::Frame f;
    f.header = wire::decode_header(p);
    if (f.header.version != wire::kVersion || f.header.payload_len != n - wire::kHeaderSize) {
      counters().malformed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::shared_ptr<UdpConnection> conn;
    if (!options_.listener) {
      conn = single_;
    } else {
      auto it = peers_.find(sender_);
      if (it != peers_.end()) {
        conn = it->second;
      } else {
        if (!opens_connection(f.header.type)) {
          counters().stray.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        if (listener_closed_) return;
        if (peers_.size() >= options_.max_peers) {
          counters().peers_refused.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        conn = std::make_shared<UdpConnection>(shared_from_this(), sender_, limits_, options_.max_datagram);
        peers_.emplace(sender_, conn);
        on_accept_(conn);
      }
    }
    if (!conn) return;
    if (n > conn->max_frame()) {  // the receiver's limit, as a stream transport checks it
      counters().malformed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    conn->last_rx = SteadyClock::now();
    f.payload = Buffer(std::shared_ptr<const void>(slab_, slab_.get()), p + wire::kHeaderSize, n - wire::kHeaderSize);
    conn->deliver(std::move(f));
  }

  void arm_idle_timer() {
    const auto tick = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(10), options_.idle / 4);
    idle_timer_.expires_after(tick);
    idle_timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
      if (ec || self->socket_closed_) return;
      const auto now = SteadyClock::now();
      std::vector<std::shared_ptr<UdpConnection>> idle;
      for (auto& [ep, conn] : self->peers_) {
        if (now - conn->last_rx >= self->options_.idle) idle.push_back(conn);
      }
      for (auto& conn : idle) {
        counters().peers_expired.fetch_add(1, std::memory_order_relaxed);
        conn->fail(Status(StatusCode::unavailable, conn->peer() + " sent nothing for " +
                                                       std::to_string(self->options_.idle.count()) +
                                                       " ms (udp idle timeout)"));
      }
      self->arm_idle_timer();
    });
  }

  void close_socket() {
    std::lock_guard lk(mu_);
    if (!queue_.empty() && !options_.listener) {
      close_when_drained_ = true;  // close flushes what the kernel has not taken yet
      return;
    }
    close_socket_locked();
  }

  void close_socket_locked() {
    if (fd_ < 0) return;
    fd_ = -1;
    socket_closed_ = true;
    queue_.clear();
    queued_bytes_ = 0;
    std::error_code ignored;
    idle_timer_.cancel();
    socket_.close(ignored);
  }

  Strand strand_;
  udp::socket socket_;
  mutable std::mutex mu_;
  int fd_;  // -1 once closed; mu_
  const ConnectionLimits limits_;
  const Options options_;
  AcceptHandler on_accept_;

  // mu_
  std::deque<Pending> queue_;
  std::size_t queued_bytes_ = 0;
  bool waiting_ = false;
  bool close_when_drained_ = false;
  std::vector<std::shared_ptr<UdpConnection>> blocked_;  // told above_high_water

  // strand
  std::atomic<bool> socket_closed_{false};
  std::shared_ptr<std::uint8_t[]> slab_;
  std::size_t slab_used_ = 0;
  udp::endpoint sender_;
  std::map<udp::endpoint, std::shared_ptr<UdpConnection>> peers_;
  std::shared_ptr<UdpConnection> single_;
  bool listener_closed_ = false;
  asio::steady_timer idle_timer_;
};

// ---------------------------------------------------------------------------------------------
// UdpConnection

void UdpConnection::start(std::shared_ptr<FrameSink> sink) {
  asio::post(hub_->strand(), [self = shared_from_this(), sink = std::move(sink)]() mutable {
    if (self->finished_) return;
    self->sink_ = std::move(sink);
    self->started_ = true;
    self->pump();
  });
}

SendResult UdpConnection::send(wire::OutFrame&& frame) {
  if (closing_.load()) return SendResult::closed;
  return hub_->send(*this, std::move(frame));
}

void UdpConnection::set_read_paused(bool paused) {
  // udp cannot hold the sender back: while paused, up to kInboxLimit frames wait, later ones are
  // dropped (counted), as the kernel would drop them.
  asio::post(hub_->strand(), [self = shared_from_this(), paused] {
    self->paused_ = paused;
    if (!paused) self->pump();
  });
}

void UdpConnection::close(const Status& why, bool flush) {
  if (closing_.exchange(true)) return;
  if (!flush) hub_->drop_queued(*this);
  asio::post(hub_->strand(), [self = shared_from_this(), why] { self->finish(why); });
}

std::size_t UdpConnection::queued_bytes() const { return hub_->queued_bytes(); }

asio::any_io_executor UdpConnection::executor() const { return hub_->strand(); }

void UdpConnection::deliver(wire::Frame&& frame) {
  if (finished_ || closing_.load()) return;
  if (!started_ || paused_ || !inbox_.empty()) {
    if (inbox_.size() >= kInboxLimit) {
      counters().inbox_overflow.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    inbox_.push_back(std::move(frame));
    return;
  }
  sink_->on_frame(std::move(frame));
}

void UdpConnection::pump() {
  while (!finished_ && started_ && !paused_ && !inbox_.empty() && !closing_.load()) {
    wire::Frame f = std::move(inbox_.front());
    inbox_.pop_front();
    sink_->on_frame(std::move(f));
  }
}

void UdpConnection::notify_writable() {
  asio::post(hub_->strand(), [self = shared_from_this()] {
    if (!self->finished_ && self->sink_) self->sink_->on_writable();
  });
}

void UdpConnection::finish(const Status& why) {
  if (finished_) return;
  finished_ = true;
  inbox_.clear();
  std::shared_ptr<FrameSink> sink = std::move(sink_);
  hub_->forget(*this);
  if (sink) sink->on_closed(why);
}

// ---------------------------------------------------------------------------------------------
// Listener and transport

class UdpListener final : public Listener {
 public:
  UdpListener(std::shared_ptr<UdpHub> hub, std::string local) : hub_(std::move(hub)), local_(std::move(local)) {}
  ~UdpListener() override { close(); }
  std::string local_endpoint() const override { return local_; }
  void close() override {
    if (!closed_.exchange(true)) hub_->close_listener();
  }

 private:
  std::shared_ptr<UdpHub> hub_;
  const std::string local_;
  std::atomic<bool> closed_{false};
};

Result<UdpHub::Options> parse_options(const Endpoint& ep, bool listener, bool v6) {
  UdpHub::Options o;
  o.listener = listener;
  const std::size_t largest = v6 ? kMaxDatagramV6 : kMaxDatagramV4;
  auto md = number_param(ep, "max_datagram", largest, kMinDatagram, largest);
  if (!md) return md.status();
  o.max_datagram = *md;
  if (listener) {
    auto mp = number_param(ep, "max_peers", o.max_peers, 1, 1u << 20);
    if (!mp) return mp.status();
    o.max_peers = *mp;
    auto idle = number_param(ep, "idle_ms", static_cast<std::size_t>(o.idle.count()), 10, 24ul * 3600 * 1000);
    if (!idle) return idle.status();
    o.idle = std::chrono::milliseconds(*idle);
  }
  return o;
}

class UdpTransport final : public Transport {
 public:
  std::string_view scheme() const override { return "udp"; }

  Result<std::shared_ptr<Listener>> listen(const Endpoint& endpoint, const TransportContext& ctx,
                                           AcceptHandler on_accept) override {
    auto resolved = detail::bind_endpoint<udp>(ctx.io, endpoint);
    if (!resolved) return resolved.status();
    const udp::endpoint bind_ep = *resolved;
    auto options = parse_options(endpoint, true, bind_ep.address().is_v6());
    if (!options) return options.status();
    Strand strand = asio::make_strand(ctx.io);
    udp::socket socket(strand);
    std::error_code ec;
    socket.open(bind_ep.protocol(), ec);
    if (!ec) socket.bind(bind_ep, ec);
    if (ec) {
      const auto code = ec == asio::error::address_in_use ? StatusCode::already_exists : StatusCode::unavailable;
      return Status(code, "cannot listen on " + endpoint.to_string() + ": " + ec.message());
    }
    const std::string local = format(socket.local_endpoint(ec));
    auto hub = std::make_shared<UdpHub>(std::move(socket), strand, ctx.limits, *options, std::move(on_accept));
    hub->start();
    return std::shared_ptr<Listener>(std::make_shared<UdpListener>(std::move(hub), local));
  }

  void async_connect(const Endpoint& endpoint, const TransportContext& ctx, ConnectHandler done) override {
    auto fail = [&](Status st) {
      asio::post(ctx.io, [done = std::move(done), st = std::move(st)]() mutable { done(st); });
    };
    auto hp = split_host_port(endpoint.address);
    if (!hp) return fail(hp.status());
    std::error_code ec;
    auto address = asio::ip::make_address(hp->first, ec);
    if (ec) {
      // A name: resolved here, once (a udp "connect" sends nothing, so this is all it costs).
      udp::resolver resolver(ctx.io);
      auto results = resolver.resolve(hp->first, std::to_string(hp->second), udp::resolver::numeric_service, ec);
      if (ec || results.empty()) {
        return fail(Status(StatusCode::unavailable, "cannot resolve " + endpoint.to_string() + ": " +
                                                        (ec ? ec.message() : "no address")));
      }
      address = results.begin()->endpoint().address();
    }
    const udp::endpoint remote(address, hp->second);
    auto options = parse_options(endpoint, false, address.is_v6());
    if (!options) return fail(options.status());
    Strand strand = asio::make_strand(ctx.io);
    udp::socket socket(strand);
    socket.open(remote.protocol(), ec);
    if (!ec) socket.connect(remote, ec);
    if (ec) return fail(Status(StatusCode::unavailable, "cannot connect to " + endpoint.to_string() + ": " + ec.message()));
    auto hub = std::make_shared<UdpHub>(std::move(socket), strand, ctx.limits, *options, nullptr);
    auto conn = std::make_shared<UdpConnection>(hub, remote, ctx.limits, options->max_datagram);
    hub->set_connection(conn);
    hub->start();
    asio::post(ctx.io, [done = std::move(done), conn = std::move(conn)]() mutable {
      done(std::shared_ptr<FrameConnection>(std::move(conn)));
    });
  }
};

}  // namespace

std::shared_ptr<Transport> make_udp_transport() { return std::make_shared<UdpTransport>(); }

}  // namespace flatpipe
