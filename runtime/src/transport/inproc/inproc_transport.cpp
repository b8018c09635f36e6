// inproc://name — connections between threads of one process (docs/transports/inproc.md).
//
// No sockets and no copies: send() hands the OutFrame's body Buffer to the peer as the received
// Frame's payload, and its small `extra` bytes as Frame::prefix. Listener names live in one
// process-global table, so two Runtimes (two io_contexts) in one process reach each other.
//
// A connection is a pair of InprocConnection endpoints linked by weak pointers. Each endpoint has
// an inbox of frames its peer sent; the bytes in it are what the peer reports as queued (its
// back-pressure). All calls into an endpoint's sink come from its drain loop, which one thread at
// a time runs on the endpoint's io_context (the FrameSink contract).
//
// Delivery: posted to the receiver's io_context, except that a send() made on a thread already
// running the receiver's io_context delivers inline (no scheduler round trip) when that cannot
// re-enter anything: the receiver is not delivering already, the receiver's own send() is not on
// this thread's stack (its Session may hold its lock there), and fewer than kMaxInlineDepth
// inline deliveries are nested. Everything else (close, on_writable, resuming a paused reader)
// is always posted.
#include <asio/execution_context.hpp>
#include <asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "flatpipe/transport/transport.hpp"

namespace flatpipe {
namespace {

// ---------------------------------------------------------------------------------------------
// Home: an io_context's liveness, so that an endpoint never posts to a destroyed io_context
// (two Runtimes in one process may end in any order).

struct HomeState {
  explicit HomeState(asio::io_context& ctx) : io(&ctx) {}
  std::mutex mu;
  asio::io_context* io;
  bool alive = true;  // mu

  // Posts `fn` unless the io_context is shutting down; then `fn` is dropped, outside the lock.
  template <class F>
  bool post(F fn) {
    {
      std::lock_guard lk(mu);
      if (alive) {
        asio::post(*io, std::move(fn));
        return true;
      }
    }
    return false;
  }
  bool running_here() const noexcept { return io->get_executor().running_in_this_thread(); }
};

// An asio service of each io_context that carries inproc endpoints: its shutdown() (the start of
// the io_context's destruction) stops all posting to it.
class HomeService final : public asio::execution_context::service {
 public:
  using key_type = HomeService;
  static inline asio::execution_context::id id;

  explicit HomeService(asio::execution_context& ctx)
      : asio::execution_context::service(ctx),
        state_(std::make_shared<HomeState>(static_cast<asio::io_context&>(ctx))) {}

  const std::shared_ptr<HomeState>& state() const noexcept { return state_; }

 private:
  void shutdown() override {
    std::lock_guard lk(state_->mu);
    state_->alive = false;
  }
  std::shared_ptr<HomeState> state_;
};

std::shared_ptr<HomeState> home_of(asio::io_context& io) { return asio::use_service<HomeService>(io).state(); }

// ---------------------------------------------------------------------------------------------
// Inline delivery bookkeeping (per thread).

constexpr int kMaxInlineDepth = 4;
constexpr std::size_t kDrainBatch = 64;  // frames per drain run before yielding to other work

class InprocConnection;
thread_local const InprocConnection* t_senders[kMaxInlineDepth];
thread_local int t_depth = 0;

bool sending_on_this_thread(const InprocConnection* c) noexcept {
  for (int i = 0; i < t_depth; ++i) {
    if (t_senders[i] == c) return true;
  }
  return false;
}

struct InlineScope {
  explicit InlineScope(const InprocConnection* sender) noexcept { t_senders[t_depth++] = sender; }
  ~InlineScope() { --t_depth; }
  InlineScope(const InlineScope&) = delete;
  InlineScope& operator=(const InlineScope&) = delete;
};

// ---------------------------------------------------------------------------------------------
// One end of a connection.

class InprocConnection final : public FrameConnection, public std::enable_shared_from_this<InprocConnection> {
 public:
  InprocConnection(std::shared_ptr<HomeState> home, const ConnectionLimits& limits, std::string peer)
      : home_(std::move(home)), limits_(limits), peer_name_(std::move(peer)), max_frame_(limits.max_frame) {}

  ~InprocConnection() override {
    // Dropped without close() (e.g. an accepted connection nobody started): the peer ends too.
    std::shared_ptr<InprocConnection> peer;
    {
      std::lock_guard lk(mu_);
      if (!closing_) peer = peer_.lock();
    }
    if (peer) peer->peer_closed(Status(StatusCode::unavailable, "peer connection was destroyed"), true);
  }

  // Links the two ends; called once, before either is handed out.
  static void link(const std::shared_ptr<InprocConnection>& a, const std::shared_ptr<InprocConnection>& b) {
    a->peer_ = b;
    b->peer_ = a;
    a->writer_high_ = b->limits_.high_water;
    a->writer_low_ = b->limits_.low_water;
    b->writer_high_ = a->limits_.high_water;
    b->writer_low_ = a->limits_.low_water;
  }

  void start(std::shared_ptr<FrameSink> sink) override {
    std::lock_guard lk(mu_);
    sink_ = std::move(sink);
    started_ = true;
    kick_locked();
  }

  SendResult send(wire::OutFrame&& frame) override {
    std::shared_ptr<InprocConnection> peer;
    {
      std::lock_guard lk(mu_);
      if (closing_ || finished_) return SendResult::closed;
      peer = peer_.lock();
    }
    if (!peer) return SendResult::closed;
    const std::size_t bytes = frame.size();
    wire::Frame f;
    f.header = wire::decode_header(frame.head.data() + wire::kPrefixSize);
    if (!frame.extra.empty()) f.prefix = Buffer::adopt(std::move(frame.extra));
    f.payload = std::move(frame.body);
    return peer->accept_frame(std::move(f), bytes, this);
  }

  void set_read_paused(bool paused) override {
    std::lock_guard lk(mu_);
    paused_ = paused;
    if (!paused) kick_locked();
  }

  void set_max_frame(std::uint32_t max_frame) override {
    std::lock_guard lk(mu_);
    max_frame_ = max_frame;
  }

  void close(const Status& why, bool flush) override {
    std::shared_ptr<InprocConnection> peer;
    {
      std::lock_guard lk(mu_);
      if (closing_ || finished_) return;
      closing_ = true;
      close_reason_ = why;
      inbox_.clear();  // this side reads no more
      inbox_bytes_ = 0;
      peer = peer_.lock();
      peer_.reset();
      kick_locked();
    }
    // What this side sent already lies in the peer's inbox ("written"); without flush it is
    // dropped there, as unwritten bytes of a socket would be.
    if (peer) peer->peer_closed(Status(StatusCode::unavailable, "peer closed the connection"), flush);
  }

  std::size_t queued_bytes() const override {
    std::shared_ptr<InprocConnection> peer;
    {
      std::lock_guard lk(mu_);
      peer = peer_.lock();
    }
    if (!peer) return 0;
    std::lock_guard lk(peer->mu_);
    return peer->inbox_bytes_;
  }

  std::string peer() const override { return peer_name_; }
  asio::any_io_executor executor() const override { return home_->io->get_executor(); }
  ConnectionTraits traits() const override { return {}; }  // reliable, ordered, no size of its own

 private:
  struct Item {
    wire::Frame frame;
    std::size_t bytes;
  };

  // The peer's send(): one frame into this end's inbox. Runs on the sender's thread.
  SendResult accept_frame(wire::Frame&& f, std::size_t bytes, const InprocConnection* sender) {
    std::unique_lock lk(mu_);
    if (closing_ || finished_) return SendResult::closed;
    if (read_error_) return SendResult::ok;  // reading stopped for good: dropped, as by a socket
    const std::uint64_t payload = f.payload.size() + f.prefix.size();
    wire::FrameError bad = wire::FrameError::none;
    if (payload + wire::kHeaderSize > max_frame_) {
      bad = wire::FrameError::too_large;
    } else if (f.header.version != wire::kVersion) {
      bad = wire::FrameError::bad_version;
    } else if (f.header.payload_len != payload) {
      bad = wire::FrameError::length_mismatch;
    }
    if (bad != wire::FrameError::none) {
      const auto length = static_cast<std::uint32_t>(std::min<std::uint64_t>(payload + wire::kHeaderSize, UINT32_MAX));
      read_error_ = Status(bad == wire::FrameError::too_large ? StatusCode::resource_exhausted
                                                              : StatusCode::invalid_argument,
                           wire::describe(bad, length, max_frame_));
      kick_locked();
      return SendResult::ok;
    }
    if (!delivering_ && inbox_.empty() && started_ && !paused_ && !writable_pending_ && !eof_ &&
        may_deliver_inline()) {
      // Nothing is queued ahead of it and nobody delivers: hand the frame straight to the sink,
      // skipping the inbox. The drain() after it delivers whatever arrived meanwhile and ends the
      // delivery. The sink stays alive: only this delivery (finish_locked) could let it go.
      delivering_ = true;
      FrameSink* sink = sink_.get();
      lk.unlock();
      InlineScope scope(sender);
      sink->on_frame(std::move(f));
      drain();
      return SendResult::ok;
    }
    inbox_.push_back(Item{std::move(f), bytes});
    inbox_bytes_ += bytes;
    SendResult result = SendResult::ok;
    if (inbox_bytes_ > writer_high_) {
      writer_above_high_ = true;
      result = SendResult::above_high_water;
    }
    if (!delivering_ && has_work_locked()) {
      delivering_ = true;
      if (may_deliver_inline()) {
        lk.unlock();
        InlineScope scope(sender);
        drain();
      } else {
        post_drain();
      }
    }
    return result;
  }

  // Whether a send() on this thread may deliver to this end inline (the rules at the top of the
  // file). Checked only once a delivery is due: it is not free (a thread-local scan and an
  // io_context lookup).
  bool may_deliver_inline() const noexcept {
    return t_depth < kMaxInlineDepth && !sending_on_this_thread(this) && home_->running_here();
  }

  // The peer closed (or vanished). With `flush`, frames it sent before are still delivered.
  void peer_closed(Status why, bool flush) {
    std::lock_guard lk(mu_);
    if (finished_ || eof_) return;
    if (!flush) {
      inbox_.clear();
      inbox_bytes_ = 0;
    }
    eof_ = std::move(why);
    peer_.reset();
    kick_locked();
  }

  // The peer drained this end's frames to the low-water mark after a send reported above_high_water.
  void writer_drained() {
    std::lock_guard lk(mu_);
    if (finished_) return;
    writable_pending_ = true;
    kick_locked();
  }

  bool has_work_locked() const noexcept {
    if (!started_ || finished_) return false;
    if (closing_ || writable_pending_) return true;
    if (!paused_ && (!inbox_.empty() || (read_error_ && !error_reported_))) return true;
    return eof_ && inbox_.empty();
  }

  // Requires mu_: schedules the drain loop when it has something to do and is not running.
  void kick_locked() {
    if (delivering_ || !has_work_locked()) return;
    delivering_ = true;
    post_drain();
  }

  void post_drain() {
    // If the io_context is going away, nothing will ever be delivered here again.
    home_->post([self = shared_from_this()] { self->drain(); });
  }

  // The one place that calls the sink. Runs with delivering_ claimed; releases it when done.
  void drain() {
    std::shared_ptr<FrameSink> sink;  // taken once: only finish_locked(), below, lets it go
    for (std::size_t n = 0;; ++n) {
      std::unique_lock lk(mu_);
      if (!sink) sink = sink_;
      if (finished_) {
        delivering_ = false;
        return;
      }
      if (closing_) {
        finish_locked(lk, *close_reason_);
        return;
      }
      if (writable_pending_) {
        writable_pending_ = false;
        lk.unlock();
        sink->on_writable();
        continue;
      }
      if (!paused_ && !inbox_.empty()) {
        if (n >= kDrainBatch) {  // let other work on this io_context run, then go on
          post_drain();
          return;
        }
        Item item = std::move(inbox_.front());
        inbox_.pop_front();
        inbox_bytes_ -= item.bytes;
        std::shared_ptr<InprocConnection> writer;
        if (writer_above_high_ && inbox_bytes_ <= writer_low_) {
          writer_above_high_ = false;
          writer = peer_.lock();
        }
        lk.unlock();
        if (writer) writer->writer_drained();
        sink->on_frame(std::move(item.frame));
        continue;
      }
      if (!paused_ && read_error_ && !error_reported_) {
        error_reported_ = true;
        const Status why = *read_error_;
        lk.unlock();
        sink->on_frame_error(why);
        continue;
      }
      if (eof_ && inbox_.empty()) {
        finish_locked(lk, *eof_);
        return;
      }
      delivering_ = false;
      return;
    }
  }

  // The end: tells the sink once and lets it go (which breaks the sink <-> connection cycle).
  void finish_locked(std::unique_lock<std::mutex>& lk, Status why) {
    finished_ = true;
    delivering_ = false;
    inbox_.clear();
    inbox_bytes_ = 0;
    std::shared_ptr<FrameSink> sink = std::move(sink_);
    // An end that finishes on the peer's close needs to tell nobody; one that finishes on its
    // own close told the peer in close().
    peer_.reset();
    lk.unlock();
    if (sink) sink->on_closed(why);
  }

  const std::shared_ptr<HomeState> home_;
  const ConnectionLimits limits_;
  const std::string peer_name_;

  mutable std::mutex mu_;
  std::weak_ptr<InprocConnection> peer_;
  std::shared_ptr<FrameSink> sink_;
  std::deque<Item> inbox_;
  std::size_t inbox_bytes_ = 0;       // what the peer reports as queued_bytes()
  std::size_t writer_high_ = 0;       // the peer's high/low water marks
  std::size_t writer_low_ = 0;
  std::uint32_t max_frame_;
  std::optional<Status> close_reason_;  // this side closed
  std::optional<Status> eof_;           // the peer closed or vanished
  std::optional<Status> read_error_;    // a frame this side cannot accept arrived
  bool error_reported_ = false;
  bool writer_above_high_ = false;
  bool writable_pending_ = false;
  bool started_ = false;
  bool delivering_ = false;
  bool paused_ = false;
  bool closing_ = false;
  bool finished_ = false;
};

// ---------------------------------------------------------------------------------------------
// Names

class InprocListener;

struct NameTable {
  std::mutex mu;
  std::unordered_map<std::string, std::weak_ptr<InprocListener>> names;
};

// Never destroyed: listeners may close during static destruction.
NameTable& names() {
  static NameTable* table = new NameTable;
  return *table;
}

class InprocListener final : public Listener, public std::enable_shared_from_this<InprocListener> {
 public:
  InprocListener(std::string name, std::shared_ptr<HomeState> home, ConnectionLimits limits, AcceptHandler on_accept)
      : name_(std::move(name)), home_(std::move(home)), limits_(limits), on_accept_(std::move(on_accept)) {}

  ~InprocListener() override { release_name(); }

  std::string local_endpoint() const override { return "inproc://" + name_; }

  void close() override {
    closed_.store(true);
    release_name();
  }

  // Connector side: makes the pair, hands the accepting end to on_accept on this listener's
  // io_context and returns the connecting end.
  std::shared_ptr<InprocConnection> connect(const std::shared_ptr<HomeState>& client_home,
                                            const ConnectionLimits& client_limits) {
    const unsigned n = ++connections_;
    auto client = std::make_shared<InprocConnection>(client_home, client_limits, "inproc://" + name_);
    auto server = std::make_shared<InprocConnection>(home_, limits_, "inproc://" + name_ + "#" + std::to_string(n));
    InprocConnection::link(client, server);
    home_->post([self = shared_from_this(), server]() mutable {
      if (self->closed_.load()) {
        server->close(Status(StatusCode::unavailable, "listener closed"), false);
        return;
      }
      self->on_accept_(std::move(server));
    });
    return client;
  }

  bool closed() const noexcept { return closed_.load(); }

 private:
  void release_name() {
    auto& table = names();
    std::lock_guard lk(table.mu);
    auto it = table.names.find(name_);
    if (it != table.names.end()) {
      auto current = it->second.lock();
      if (!current || current.get() == this) table.names.erase(it);
    }
  }

  const std::string name_;
  const std::shared_ptr<HomeState> home_;
  const ConnectionLimits limits_;
  AcceptHandler on_accept_;
  std::atomic<bool> closed_{false};
  std::atomic<unsigned> connections_{0};
};

class InprocTransport final : public Transport {
 public:
  std::string_view scheme() const override { return "inproc"; }

  Result<std::shared_ptr<Listener>> listen(const Endpoint& endpoint, const TransportContext& ctx,
                                           AcceptHandler on_accept) override {
    const std::string& name = endpoint.address;
    auto listener = std::make_shared<InprocListener>(name, home_of(ctx.io), ctx.limits, std::move(on_accept));
    auto& table = names();
    std::lock_guard lk(table.mu);
    auto& slot = table.names[name];
    if (auto existing = slot.lock(); existing && !existing->closed()) {
      return Status(StatusCode::already_exists, "inproc://" + name + " is already in use by a listener in this process");
    }
    slot = listener;
    return std::shared_ptr<Listener>(std::move(listener));
  }

  void async_connect(const Endpoint& endpoint, const TransportContext& ctx, ConnectHandler done) override {
    std::shared_ptr<InprocListener> listener;
    {
      auto& table = names();
      std::lock_guard lk(table.mu);
      auto it = table.names.find(endpoint.address);
      if (it != table.names.end()) listener = it->second.lock();
    }
    auto home = home_of(ctx.io);
    if (!listener || listener->closed()) {
      home->post([done = std::move(done), where = endpoint.to_string()]() mutable {
        done(Status(StatusCode::unavailable, "cannot connect to " + where + ": no inproc listener of that name in this process"));
      });
      return;
    }
    std::shared_ptr<FrameConnection> conn = listener->connect(home, ctx.limits);
    home->post([done = std::move(done), conn = std::move(conn)]() mutable { done(std::move(conn)); });
  }
};

}  // namespace

std::shared_ptr<Transport> make_inproc_transport() { return std::make_shared<InprocTransport>(); }

}  // namespace flatpipe
