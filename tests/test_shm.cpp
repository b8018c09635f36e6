// The shm transport beyond the conformance suites (which run over it via fixtures.hpp):
// zero copy both ways, space given back by leases, messages larger than the segment, back-
// pressure, bad input from a raw peer writing its own segment, and a peer process killed with
// SIGKILL on either side (children are this executable re-run with FLATPIPE_SHM_TEST_CHILD).
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "flatpipe/flatpipe.hpp"
#include "support/fixtures.hpp"
#include "transport/shm/shm_connection.hpp"
#include "transport/shm/shm_segment.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using flatpipe::ConnectionLimits;
using flatpipe::Endpoint;
using flatpipe::FrameConnection;
using flatpipe::FrameSink;
using flatpipe::MessageBuilder;
using flatpipe::SendResult;
using flatpipe::TransportContext;
namespace shm = flatpipe::shm;
namespace wire = flatpipe::wire;
using fptest::Buffer;
using fptest::Client;
using fptest::eventually;
using fptest::kWait;
using fptest::Result;
using fptest::Runtime;
using fptest::Server;
using fptest::ServerCall;
using fptest::Status;
using fptest::StatusCode;

std::string unique_name(const char* what) {
  static std::atomic<unsigned> counter{0};
  return std::string("fp-shm-") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Transport level: two FrameConnections of one process over a real shm connection.

class Recorder final : public FrameSink {
 public:
  void on_frame(wire::Frame&& f) override {
    std::lock_guard lk(mu);
    ++received;
    ids.push_back(f.header.request_id);
    if (keep) frames.push_back(std::move(f));
    cv.notify_all();
  }
  void on_frame_error(const Status& why) override {
    std::lock_guard lk(mu);
    frame_error = why;
    cv.notify_all();
  }
  void on_writable() override {
    std::lock_guard lk(mu);
    ++writable;
    cv.notify_all();
  }
  void on_closed(const Status& why) override {
    std::lock_guard lk(mu);
    closed = why;
    cv.notify_all();
  }
  template <class Pred>
  bool wait(Pred pred, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, timeout, pred);
  }

  std::mutex mu;
  std::condition_variable cv;
  bool keep = true;
  std::size_t received = 0;
  std::vector<wire::Frame> frames;
  std::vector<std::uint32_t> ids;  // request ids in arrival order
  std::optional<Status> frame_error;
  std::optional<Status> closed;
  int writable = 0;
};

class Pair {
 public:
  explicit Pair(ConnectionLimits limits = {}, const std::string& query = "", bool pause_server = false)
      : guard_(io_.get_executor()), thread_([this] { io_.run(); }) {
    auto ep = Endpoint::parse("shm://" + unique_name("pair") + query);
    if (!ep) {
      error = ep.status().to_string();
      return;
    }
    TransportContext ctx{io_, limits};
    std::promise<std::shared_ptr<FrameConnection>> accepted;
    auto accepted_f = accepted.get_future();
    auto once = std::make_shared<std::once_flag>();
    auto l = transport_->listen(*ep, ctx, [&accepted, once](std::shared_ptr<FrameConnection> c) {
      std::call_once(*once, [&] { accepted.set_value(std::move(c)); });
    });
    if (!l) {
      error = l.status().to_string();
      return;
    }
    listener_ = *l;
    std::promise<Result<std::shared_ptr<FrameConnection>>> connected;
    auto connected_f = connected.get_future();
    transport_->async_connect(*ep, ctx, [&connected](Result<std::shared_ptr<FrameConnection>> r) {
      connected.set_value(std::move(r));
    });
    if (connected_f.wait_for(kWait) != std::future_status::ready ||
        accepted_f.wait_for(kWait) != std::future_status::ready) {
      error = "connection not set up in time";
      return;
    }
    auto c = connected_f.get();
    if (!c) {
      error = c.status().to_string();
      return;
    }
    client = *c;
    server = accepted_f.get();
    if (pause_server) server->set_read_paused(true);
    server->start(srec);
    client->start(crec);
  }
  ~Pair() {
    if (client) client->close(Status(StatusCode::cancelled, "test over"), false);
    if (server) server->close(Status(StatusCode::cancelled, "test over"), false);
    crec->wait([&] { return crec->closed.has_value() || !client; });
    srec->wait([&] { return srec->closed.has_value() || !server; });
    if (listener_) listener_->close();
    client.reset();
    server.reset();
    listener_.reset();
    guard_.reset();
    io_.stop();
    thread_.join();
  }
  shm::ShmConnection& shm_client() { return dynamic_cast<shm::ShmConnection&>(*client); }
  shm::ShmConnection& shm_server() { return dynamic_cast<shm::ShmConnection&>(*server); }

  std::string error;
  std::shared_ptr<FrameConnection> client;
  std::shared_ptr<FrameConnection> server;
  std::shared_ptr<Recorder> crec = std::make_shared<Recorder>();
  std::shared_ptr<Recorder> srec = std::make_shared<Recorder>();

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
  std::shared_ptr<flatpipe::Transport> transport_ = flatpipe::make_shm_transport();
  std::shared_ptr<flatpipe::Listener> listener_;
};

wire::OutFrame request(std::uint32_t id, Buffer body, std::string extra = {}) {
  return wire::OutFrame(wire::FrameType::request, 0, id, 7, std::move(body), std::move(extra));
}

std::string payload_of(const wire::Frame& f) { return f.prefix.to_string() + f.payload.to_string(); }

TEST(ShmTransport, BuilderMemoryIsSentInPlaceAndReadInPlace) {
  Pair p;
  ASSERT_TRUE(p.error.empty()) << p.error;
  auto alloc = p.client->make_body_allocator();
  ASSERT_NE(alloc, nullptr);
  MessageBuilder b(std::move(alloc));
  b.Finish(b.CreateString("built where the peer reads it"));
  const Buffer body = b.release();
  EXPECT_EQ(shm::region_of(body.data()), shm::Region::outgoing);
  EXPECT_TRUE(p.shm_client().in_outgoing_heap(body.data(), body.size()));

  ASSERT_EQ(p.client->send(request(1, body, "hdr")), SendResult::ok);
  ASSERT_TRUE(p.srec->wait([&] { return p.srec->frames.size() == 1; }));
  const wire::Frame& f = p.srec->frames[0];
  EXPECT_EQ(f.header.type, wire::FrameType::request);
  EXPECT_EQ(f.header.request_id, 1u);
  EXPECT_EQ(f.header.payload_len, 3 + body.size());
  EXPECT_EQ(payload_of(f), "hdr" + body.to_string());
  EXPECT_EQ(shm::region_of(f.payload.data()), shm::Region::incoming) << "the payload was copied on receive";
  const auto stats = p.shm_client().send_stats();
  EXPECT_EQ(stats.zero_copy, 1u);
  EXPECT_EQ(stats.copied, 0u);

  // A heap body is copied once, and still read in place by the receiver.
  ASSERT_EQ(p.client->send(request(2, Buffer::copy(std::string_view("from the heap")))), SendResult::ok);
  ASSERT_TRUE(p.srec->wait([&] { return p.srec->frames.size() == 2; }));
  EXPECT_EQ(p.srec->frames[1].payload.to_string(), "from the heap");
  EXPECT_EQ(shm::region_of(p.srec->frames[1].payload.data()), shm::Region::incoming);
  EXPECT_EQ(p.shm_client().send_stats().copied, 1u);
}

TEST(ShmTransport, ReceivedSpaceReturnsWhenTheLastCopyDiesOnAnyThread) {
  // A 1 MiB segment (well under 1 MiB of heap) carries 16 MiB while the receiver holds frames
  // and drops them from this thread.
  ConnectionLimits limits;
  limits.high_water = 64u << 10;
  limits.low_water = 16u << 10;
  Pair p(limits, "?segment=1M");
  ASSERT_TRUE(p.error.empty()) << p.error;
  constexpr int kFrames = 1024;
  constexpr std::size_t kSize = 16u << 10;
  std::atomic<bool> stop{false};
  struct Joiner {
    std::atomic<bool>& stop;
    std::thread t;
    ~Joiner() {
      stop = true;
      t.join();
    }
  };
  Joiner dropper{stop, std::thread([&] {
    while (!stop.load()) {
      std::vector<wire::Frame> drop;
      {
        std::lock_guard lk(p.srec->mu);
        drop.swap(p.srec->frames);
      }
      std::size_t i = 0;
      for (const auto& f : drop) {
        if (f.payload.size() != kSize) ADD_FAILURE() << "frame " << i << " has " << f.payload.size() << " bytes";
        ++i;
      }
      drop.clear();  // the leases go back from this thread
      std::this_thread::sleep_for(1ms);
    }
  })};
  const std::string blob = pattern(kSize, 3);
  int sent = 0;
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (sent < kFrames && std::chrono::steady_clock::now() < until) {
    const SendResult r = p.client->send(request(static_cast<std::uint32_t>(sent), Buffer::copy(blob)));
    ASSERT_NE(r, SendResult::closed);
    ++sent;
    if (r == SendResult::above_high_water) {
      EXPECT_LE(p.client->queued_bytes(), limits.high_water + kSize + 64);
      ASSERT_TRUE(eventually([&] { return p.client->queued_bytes() <= limits.low_water; }, 10s));
    }
  }
  EXPECT_TRUE(p.srec->wait([&] { return p.srec->received == kFrames; }, 10s)) << p.srec->received;
  EXPECT_EQ(p.shm_client().send_stats().copied, static_cast<std::uint64_t>(kFrames));
}

TEST(ShmTransport, MessageLargerThanTheSegmentArrivesWhole) {
  ConnectionLimits limits;
  limits.max_frame = 80u << 20;
  Pair p(limits, "?segment=8M");
  ASSERT_TRUE(p.error.empty()) << p.error;
  const std::string big = pattern(64u << 20, 9);
  ASSERT_NE(p.client->send(request(5, Buffer::copy(big), "x")), SendResult::closed);
  ASSERT_TRUE(p.srec->wait([&] { return p.srec->frames.size() == 1; }, 20s));
  const wire::Frame& f = p.srec->frames[0];
  EXPECT_EQ(f.header.payload_len, big.size() + 1);
  EXPECT_EQ(f.payload.size(), big.size() + 1);
  EXPECT_TRUE(f.payload.view() == "x" + big) << "large payload corrupted";
  EXPECT_EQ(shm::region_of(f.payload.data()), shm::Region::incoming);
  EXPECT_EQ(p.shm_client().send_stats().large, 1u);
}

TEST(ShmTransport, OversizedFrameIsAFrameError) {
  ConnectionLimits limits;
  limits.max_frame = 1024;
  Pair p(limits);
  ASSERT_TRUE(p.error.empty()) << p.error;
  ASSERT_EQ(p.client->send(request(1, Buffer::copy(pattern(4096, 1)))), SendResult::ok);
  ASSERT_TRUE(p.srec->wait([&] { return p.srec->frame_error.has_value(); }));
  EXPECT_EQ(p.srec->frame_error->code(), StatusCode::resource_exhausted) << p.srec->frame_error->to_string();
  EXPECT_TRUE(p.srec->frames.empty());
}

TEST(ShmTransport, SlowReaderBoundsQueuedMemoryThenOnWritable) {
  ConnectionLimits limits;
  limits.high_water = 1u << 20;
  limits.low_water = 256u << 10;
  Pair p(limits, "?segment=2M", /*pause_server=*/true);
  ASSERT_TRUE(p.error.empty()) << p.error;
  {
    std::lock_guard lk(p.srec->mu);
    p.srec->keep = false;  // frames are dropped as they arrive (their space goes back)
  }
  constexpr std::size_t kSize = 64u << 10;
  const std::string blob = pattern(kSize, 5);
  std::uint32_t sent = 0;
  SendResult r = SendResult::ok;
  while (r == SendResult::ok && sent < 10000) r = p.client->send(request(sent++, Buffer::copy(blob)));
  ASSERT_EQ(r, SendResult::above_high_water) << "a paused reader never pushed back";
  // Bounded: the peer's heap (2 MiB segment) plus the high-water mark, whatever the writer does.
  EXPECT_LE(std::size_t{sent} * kSize, (2u << 20) + limits.high_water + kSize);
  EXPECT_LE(p.client->queued_bytes(), limits.high_water + kSize + 64);
  p.server->set_read_paused(false);
  EXPECT_TRUE(p.crec->wait([&] { return p.crec->writable > 0; })) << "no on_writable after the reader resumed";
  ASSERT_TRUE(p.srec->wait([&] { return p.srec->received == sent; }));
  for (std::uint32_t i = 0; i < sent; ++i) {
    ASSERT_EQ(p.srec->ids[i], i) << "out of order";
  }
}

TEST(ShmTransport, CloseIsIdempotentAndThePeerSeesTheEnd) {
  Pair p;
  ASSERT_TRUE(p.error.empty()) << p.error;
  p.client->close(Status(StatusCode::cancelled, "first"), true);
  p.client->close(Status(StatusCode::cancelled, "second"), false);
  ASSERT_TRUE(p.crec->wait([&] { return p.crec->closed.has_value(); }));
  EXPECT_EQ(p.crec->closed->message(), "first");
  ASSERT_TRUE(p.srec->wait([&] { return p.srec->closed.has_value(); }));
  EXPECT_EQ(p.srec->closed->code(), StatusCode::unavailable);
  EXPECT_EQ(p.client->send(request(1, Buffer::copy(std::string_view("late")))), SendResult::closed);
}

TEST(ShmTransport, BadEndpointsAreRefused) {
  asio::io_context io;
  auto t = flatpipe::make_shm_transport();
  TransportContext ctx{io, {}};
  for (const char* uri : {"shm://", "shm://x?segment=12", "shm://x?segment=1000000", "shm://x?spin_us=abc"}) {
    auto ep = Endpoint::parse(uri);
    if (!ep) continue;
    auto l = t->listen(*ep, ctx, [](std::shared_ptr<FrameConnection>) {});
    EXPECT_FALSE(l.ok()) << uri;
    if (l.ok()) (*l)->close();
  }
  const std::string name = unique_name("dup");
  auto ep = Endpoint::parse("shm://" + name);
  ASSERT_TRUE(ep.ok());
  auto first = t->listen(*ep, ctx, [](std::shared_ptr<FrameConnection>) {});
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  auto second = t->listen(*ep, ctx, [](std::shared_ptr<FrameConnection>) {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.code(), StatusCode::already_exists);
  (*first)->close();
  io.run_for(50ms);
  // Nobody listens any more: connecting fails fast with UNAVAILABLE.
  std::optional<Result<std::shared_ptr<FrameConnection>>> got;
  t->async_connect(*ep, ctx, [&](Result<std::shared_ptr<FrameConnection>> r) { got = std::move(r); });
  io.restart();
  io.run_for(1s);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::unavailable);
}

// ---------------------------------------------------------------------------------------------
// RPC level

constexpr std::uint32_t kEcho = 1;       // unary: the request, built with the call's builder
constexpr std::uint32_t kPark = 2;       // unary: never answered
constexpr std::uint32_t kWhere = 3;      // unary: "incoming" when the request lies in shm memory

struct ShmServer {
  explicit ShmServer(flatpipe::ServerOptions options = {}) : server(runtime, options) {
    (void)server.add({kEcho, "t.Shm.Echo", flatpipe::CallKind::unary, [](ServerCall call) {
                        MessageBuilder b = call.builder(call.request().size() + 64);
                        b.Finish(b.CreateVector(call.request().data(), call.request().size()));
                        Buffer out = b.release();
                        // The vector's bytes, inside the message built in the outgoing segment.
                        auto root = flatbuffers::GetRoot<flatbuffers::Vector<std::uint8_t>>(out.data());
                        call.finish(out.slice(static_cast<std::size_t>(root->data() - out.data()), root->size()));
                      }});
    (void)server.add({kPark, "t.Shm.Park", flatpipe::CallKind::unary, [this](ServerCall call) {
                        call.context().on_cancel([this] { ++cancelled; });
                        std::lock_guard lk(mu);
                        parked.push_back(call);
                        ++parked_count;
                      }});
    (void)server.add_unary(kWhere, "t.Shm.Where", [](fptest::CallContext&, const Buffer& req) -> Result<Buffer> {
      const bool in = shm::region_of(req.data()) == shm::Region::incoming;
      return Buffer::copy(std::string_view(in ? "incoming" : "copied"));
    });
    name = unique_name("rpc");
    auto bound = server.listen("shm://" + name);
    if (!bound) error = bound.status().to_string();
  }
  ~ShmServer() {
    server.shutdown(0ms);
    std::lock_guard lk(mu);
    parked.clear();
  }
  std::string uri() const { return "shm://" + name; }

  Runtime runtime;
  Server server;
  std::string name;
  std::string error;
  std::mutex mu;
  std::vector<ServerCall> parked;
  std::atomic<int> parked_count{0};
  std::atomic<int> cancelled{0};
};

TEST(ShmRpc, RequestAndResponseTravelWithoutCopies) {
  ShmServer s;
  ASSERT_TRUE(s.error.empty()) << s.error;
  Runtime rt;
  auto c = Client::connect(rt, s.uri());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  MessageBuilder b = c->builder();
  b.Finish(b.CreateString("zero copy request"));
  Buffer req = b.release();
  EXPECT_EQ(shm::region_of(req.data()), shm::Region::outgoing) << "Client::builder() is not in the segment";
  auto where = c->call(kWhere, req);
  ASSERT_TRUE(where.ok()) << where.status().to_string();
  EXPECT_EQ(where->to_string(), "incoming");
  const std::string text = pattern(1000, 4);
  auto echoed = c->call(kEcho, Buffer::copy(text));
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  EXPECT_EQ(echoed->to_string(), text);
  EXPECT_EQ(shm::region_of(echoed->data()), shm::Region::incoming) << "the response was copied";
}

TEST(ShmRpc, SixtyFourMebibyteMessageWithARaisedLimit) {
  flatpipe::ServerOptions so;
  so.session.max_frame = 80u << 20;
  ShmServer s(so);
  ASSERT_TRUE(s.error.empty()) << s.error;
  Runtime rt;
  fptest::ClientOptions co;
  co.session.max_frame = 80u << 20;
  auto c = Client::connect(rt, s.uri(), co);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  const std::string big = pattern(64u << 20, 8);
  fptest::CallOptions opts;
  opts.deadline = flatpipe::Clock::now() + 30s;
  auto echoed = c->call(kEcho, Buffer::copy(big), opts);
  ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
  ASSERT_EQ(echoed->size(), big.size());
  EXPECT_TRUE(echoed->view() == big);
}

TEST(ShmRpc, ManyConcurrentCallersOnOneConnection) {
  ShmServer s;
  ASSERT_TRUE(s.error.empty()) << s.error;
  Runtime rt;
  auto c = Client::connect(rt, s.uri());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  constexpr int kThreads = 8;
  constexpr int kCalls = 400;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string text = std::to_string(t) + ":" + std::to_string(i) + pattern(static_cast<std::size_t>(i % 300), static_cast<unsigned>(i));
        fptest::CallOptions opts;
        opts.deadline = flatpipe::Clock::now() + 10s;
        auto r = c->call(kEcho, Buffer::copy(text), opts);
        if (r.ok() && r->to_string() == text) ++ok;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), kThreads * kCalls);
}

// ---------------------------------------------------------------------------------------------
// A raw peer: does the handshake by hand and then writes whatever it likes into its own segment.

class RawShmPeer {
 public:
  explicit RawShmPeer(const std::string& name, bool valid_segment = true) {
    sock_ = shm::UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    const std::string path = std::string(1, '\0') + shm::socket_name(name);
    std::memcpy(sun.sun_path, path.data(), path.size());
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
    if (::connect(sock_.get(), reinterpret_cast<const sockaddr*>(&sun), len) != 0) return;
    auto seg = shm::create_segment(1u << 20);
    if (!seg) return;
    shm::UniqueFd bogus;
    int pass = seg->fd.get();
    if (!valid_segment) {  // an unsealed memfd of the right size
      bogus = shm::UniqueFd(::memfd_create("not-sealed", MFD_CLOEXEC));
      if (::ftruncate(bogus.get(), 1u << 20) != 0) return;
      pass = bogus.get();
    }
    shm::HelloRecord h{shm::kHelloMagic, shm::kHelloVersion, 0, 1u << 20, 0};
    if (!send_with_fd(&h, sizeof h, pass)) return;
    mine_ = std::move(seg->map);
    layout_ = seg->layout;
    if (!valid_segment) return;
    // The server's HELLO and segment.
    if (!readable(kWait)) return;
    shm::HelloRecord back{};
    iovec iov{&back, sizeof back};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (::recvmsg(sock_.get(), &msg, MSG_CMSG_CLOEXEC) != static_cast<ssize_t>(sizeof back)) return;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) return;
    int fd;
    std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
    shm::UniqueFd owned(fd);
    auto peer = shm::map_peer_segment(fd);
    if (!peer) return;
    peer_ = std::move(peer->map);
    peer_layout_ = peer->layout;
    ok_ = true;
  }
  bool ok() const { return ok_; }

  shm::SegmentHeader& hdr() { return *reinterpret_cast<shm::SegmentHeader*>(mine_.data()); }
  std::uint8_t* heap() { return mine_.data() + layout_.heap_offset; }
  std::uint64_t heap_size() const { return layout_.heap_size; }

  // Publishes one descriptor into our ring and rings the doorbell.
  void publish(const shm::Desc& d) { publish_with_seq(d, desc_head_ + 1); }
  // The same with any sequence number (a correct peer's is the descriptor's number + 1).
  void publish_with_seq(const shm::Desc& d, std::uint64_t seq) {
    auto* slot = reinterpret_cast<shm::Desc*>(mine_.data() + layout_.desc_offset +
                                              (desc_head_ % shm::kDescSlots) * shm::kDescBytes);
    shm::publish_desc(slot, d, seq);
    ++desc_head_;
    ring();
  }
  // Gives lease `id` back to the server through our release ring.
  void release(std::uint64_t id) {
    const std::uint64_t head = hdr().release_head.load();
    std::memcpy(mine_.data() + layout_.release_offset + (head % shm::kReleaseSlots) * sizeof id, &id, sizeof id);
    hdr().release_head.store(head + 1);
    ring();
  }
  void ring() {
    char b = 'D';
    (void)::send(sock_.get(), &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  bool send_with_fd(const void* data, std::size_t n, int fd) {
    return shm::send_with_fd(sock_.get(), data, n, fd, MSG_NOSIGNAL) == static_cast<ssize_t>(n);
  }

  // A heap descriptor for `payload` written at `offset` of our heap, lease 1.
  shm::Desc desc(wire::FrameType type, std::uint32_t id, std::uint32_t method, std::string_view payload,
                 std::uint64_t offset = 0) {
    std::memcpy(heap() + offset, payload.data(), payload.size());
    shm::Desc d{};
    wire::FrameHeader h;
    h.type = type;
    h.request_id = id;
    h.method_id = method;
    h.payload_len = static_cast<std::uint32_t>(payload.size());
    wire::encode_prefix_and_header(h, d.head);
    d.kind = static_cast<std::uint8_t>(shm::DescKind::heap);
    d.lease = 1;
    d.body_offset = offset;
    d.body_len = static_cast<std::uint32_t>(payload.size());
    return d;
  }

  // The next frame the server published, as (header, payload), within `wait`.
  std::optional<std::pair<wire::FrameHeader, std::string>> next_frame(std::chrono::milliseconds wait = kWait) {
    const auto* slot = reinterpret_cast<const shm::Desc*>(peer_.data() + peer_layout_.desc_offset +
                                                          (rx_tail_ % shm::kDescSlots) * shm::kDescBytes);
    if (!eventually([&] { return shm::desc_seq(slot) == rx_tail_ + 1; }, wait)) return std::nullopt;
    shm::Desc d;
    std::memcpy(&d, slot, sizeof d);
    ++rx_tail_;
    hdr().desc_tail.store(rx_tail_);
    const wire::FrameHeader h = wire::decode_header(d.head + 4);
    const std::uint8_t* heap_p = peer_.data() + peer_layout_.heap_offset;
    std::string payload(reinterpret_cast<const char*>(heap_p + d.prefix_offset), d.prefix_len);
    payload.append(reinterpret_cast<const char*>(heap_p + d.body_offset), d.body_len);
    return std::pair{h, payload};
  }

  bool readable(std::chrono::milliseconds wait) {
    pollfd pfd{sock_.get(), POLLIN, 0};
    return ::poll(&pfd, 1, static_cast<int>(wait.count())) == 1;
  }
  // True when the server closed the socket within `wait` (doorbells before the end are skipped).
  bool closed_within(std::chrono::milliseconds wait) {
    const auto until = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < until) {
      if (!readable(10ms)) continue;
      char buf[64];
      const ssize_t n = ::recv(sock_.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return true;
    }
    return false;
  }

 private:
  shm::UniqueFd sock_;
  shm::Mapping mine_;
  shm::Mapping peer_;
  shm::Layout layout_;
  shm::Layout peer_layout_;
  std::uint64_t rx_tail_ = 0;
  std::uint64_t desc_head_ = 0;  // descriptors we published
  bool ok_ = false;
};

// A good client keeps working after each bad peer.
void expect_server_serves(ShmServer& s) {
  Runtime rt;
  auto c = Client::connect(rt, s.uri());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  auto r = c->call(kEcho, Buffer::copy(std::string_view("still here")));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->to_string(), "still here");
}

TEST(ShmBadInput, RawPeerSpeaksTheLayout) {
  // The raw peer itself is right: a netpipe-style Request through its ring is answered.
  ShmServer s;
  ASSERT_TRUE(s.error.empty()) << s.error;
  RawShmPeer p(s.name);
  ASSERT_TRUE(p.ok());
  p.publish(p.desc(wire::FrameType::request, 0, kEcho, "ping"));
  auto f = p.next_frame();
  ASSERT_TRUE(f.has_value()) << "no response";
  EXPECT_EQ(f->first.type, wire::FrameType::response);
  EXPECT_EQ(f->first.request_id, 0u);
  EXPECT_EQ(f->second, "ping");
}

TEST(ShmBadInput, GarbageDescriptorsCloseOnlyThatConnection) {
  ShmServer s;
  ASSERT_TRUE(s.error.empty()) << s.error;
  struct Case {
    const char* what;
    std::function<void(RawShmPeer&)> act;
  };
  const std::vector<Case> cases = {
      {"body offset past the heap",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.body_offset = p.heap_size() - 4;
         p.publish(d);
       }},
      {"offset that overflows",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.body_offset = std::numeric_limits<std::uint64_t>::max() - 2;
         p.publish(d);
       }},
      {"prefix past the heap",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.body_len = 4;
         d.prefix_len = 4;
         d.prefix_offset = p.heap_size();
         p.publish(d);
       }},
      {"lengths that do not add up",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.body_len = 0xfffffff0u;
         p.publish(d);
       }},
      {"bad version",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.head[4] = 1;
         p.publish(d);
       }},
      {"oversized frame",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         wire::put_u32(d.head, 0x40000000u);
         wire::put_u32(d.head + 16, 0x40000000u - 16);
         p.publish(d);
       }},
      {"header length mismatch",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         wire::put_u32(d.head + 16, 3);
         p.publish(d);
       }},
      {"unknown descriptor kind",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.kind = 9;
         p.publish(d);
       }},
      {"large message without its memfd",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.kind = static_cast<std::uint8_t>(shm::DescKind::memfd);
         p.publish(d);
       }},
      {"large message in an unsealed memfd",
       [](RawShmPeer& p) {
         shm::UniqueFd fd(::memfd_create("unsealed", MFD_CLOEXEC));
         ASSERT_EQ(::ftruncate(fd.get(), 4096), 0);
         ASSERT_TRUE(p.send_with_fd("F", 1, fd.get()));
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.kind = static_cast<std::uint8_t>(shm::DescKind::memfd);
         p.publish(d);
       }},
      {"payload without a lease",
       [](RawShmPeer& p) {
         auto d = p.desc(wire::FrameType::request, 0, kEcho, "abcdefgh");
         d.lease = 0;
         p.publish(d);
       }},
      {"descriptor sequence number out of order",
       [](RawShmPeer& p) {
         p.publish_with_seq(p.desc(wire::FrameType::request, 0, kEcho, "ping"), shm::kDescSlots * 3ull);
       }},
      {"release of a lease never lent",
       [](RawShmPeer& p) {
         p.release(0x1234567800000042ull);
       }},
      {"ring tail beyond what was published",
       [](RawShmPeer& p) {
         p.hdr().desc_tail.store(1000000);
         p.publish(p.desc(wire::FrameType::request, 0, kEcho, "ping"));  // the reply finds a broken tail
       }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    RawShmPeer p(s.name);
    ASSERT_TRUE(p.ok());
    c.act(p);
    EXPECT_TRUE(p.closed_within(kWait)) << "connection left open";
    ASSERT_NO_FATAL_FAILURE(expect_server_serves(s));
  }
}

TEST(ShmBadInput, SegmentOfAnotherLayoutVersionOrNotFlatpipeIsRefused) {
  // A peer built with another shm layout (1 polled a ring head) is named as such, not mapped.
  auto seg = shm::create_segment(1u << 20);
  ASSERT_TRUE(seg.ok()) << seg.status().to_string();
  auto* hdr = reinterpret_cast<shm::SegmentHeader*>(seg->map.data());
  hdr->version = 1;
  auto old = shm::map_peer_segment(seg->fd.get());
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.status().code(), StatusCode::invalid_argument);
  EXPECT_NE(old.status().message().find("layout version 1, this side speaks " +
                                        std::to_string(shm::kLayoutVersion)),
            std::string::npos)
      << old.status().message();

  hdr->version = shm::kLayoutVersion;
  hdr->magic = 0x0123456789abcdefull;
  auto foreign = shm::map_peer_segment(seg->fd.get());
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.status().message().find("not a flatpipe shm segment"), std::string::npos)
      << foreign.status().message();

  hdr->magic = shm::kSegmentMagic;  // restored: the same segment maps
  EXPECT_TRUE(shm::map_peer_segment(seg->fd.get()).ok());
}

TEST(ShmBadInput, UnsealedSegmentIsRefusedAtTheHandshake) {
  ShmServer s;
  ASSERT_TRUE(s.error.empty()) << s.error;
  RawShmPeer p(s.name, /*valid_segment=*/false);
  EXPECT_TRUE(p.closed_within(kWait)) << "the server accepted an unsealed segment";
  ASSERT_NO_FATAL_FAILURE(expect_server_serves(s));
}

// ---------------------------------------------------------------------------------------------
// Peer processes killed with SIGKILL

std::set<std::string> dev_shm_entries() {
  std::set<std::string> out;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d)) out.insert(e->d_name);
    ::closedir(d);
  }
  return out;
}

int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

// This executable re-run as a server or client child (see the hook at the end of the file).
class Child {
 public:
  Child(const std::string& role, const std::string& name) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    const std::string var = "FLATPIPE_SHM_TEST_CHILD=" + role + ":" + name;
    std::vector<char*> env;
    for (char** e = environ; *e; ++e) env.push_back(*e);
    env.push_back(const_cast<char*>(var.c_str()));
    env.push_back(nullptr);
    char arg0[] = "flatpipe_tests";
    char* argv[] = {arg0, nullptr};
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);  // dup2 clears close-on-exec on the copy
      ::execve("/proc/self/exe", argv, env.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = shm::UniqueFd(fds[0]);
  }
  ~Child() {
    kill();
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  // Waits for the child's "ready" line.
  bool ready(std::chrono::milliseconds wait) {
    std::string got;
    const auto until = std::chrono::steady_clock::now() + wait;
    while (got.find('\n') == std::string::npos && std::chrono::steady_clock::now() < until) {
      pollfd pfd{out_.get(), POLLIN, 0};
      if (::poll(&pfd, 1, 50) != 1) continue;
      char buf[64];
      const ssize_t n = ::read(out_.get(), buf, sizeof buf);
      if (n <= 0) return false;
      got.append(buf, static_cast<std::size_t>(n));
    }
    return got.rfind("ready", 0) == 0;
  }
  void kill() {
    if (pid_ > 0 && !killed_) {
      ::kill(pid_, SIGKILL);
      killed_ = true;
    }
  }

 private:
  pid_t pid_ = -1;
  bool killed_ = false;
  shm::UniqueFd out_;
};

TEST(ShmKill, ServerKilledFailsOpenCallsUnavailableAndLeavesNothing) {
  const auto shm_before = dev_shm_entries();
  const std::string name = unique_name("kill-srv");
  Child child("server", name);
  ASSERT_TRUE(child.ready(10s)) << "the server child did not start";
  std::promise<Result<Buffer>> parked;
  auto parked_f = parked.get_future();
  {
    Runtime rt;
    asio::steady_timer reactor_up(rt.io());  // asio opens its reactor's descriptors lazily
    const int fds_before = open_fds();
    {
      auto c = Client::connect(rt, "shm://" + name);
      ASSERT_TRUE(c.ok()) << c.status().to_string();
      auto echoed = c->call(kEcho, Buffer::copy(std::string_view("alive")));
      ASSERT_TRUE(echoed.ok()) << echoed.status().to_string();
      c->async_call(kPark, Buffer::copy(std::string_view("wait")), {},
                    [&parked](Result<Buffer> r) { parked.set_value(std::move(r)); });
      std::this_thread::sleep_for(50ms);
      child.kill();
      ASSERT_EQ(parked_f.wait_for(kWait), std::future_status::ready) << "the open call never failed";
      const auto r = parked_f.get();
      EXPECT_EQ(r.code(), StatusCode::unavailable) << fptest::describe(r);
      auto after = c->call(kEcho, Buffer::copy(std::string_view("dead")));
      EXPECT_EQ(after.code(), StatusCode::unavailable);
    }
    EXPECT_EQ(fptest::settled([] { return open_fds(); }, 200ms), fds_before) << "file descriptors leaked";
  }
  EXPECT_EQ(dev_shm_entries(), shm_before) << "something was left in /dev/shm";
}

TEST(ShmKill, ClientKilledCancelsItsCallsAndLeavesNothing) {
  const auto shm_before = dev_shm_entries();
  ShmServer s;
  ASSERT_TRUE(s.error.empty()) << s.error;
  const int fds_before = open_fds();
  {
    Child child("client", s.name);
    ASSERT_TRUE(child.ready(10s)) << "the client child did not start";
    ASSERT_TRUE(eventually([&] { return s.parked_count.load() == 1; })) << "the child's call never arrived";
    child.kill();
    EXPECT_TRUE(eventually([&] { return s.cancelled.load() == 1; })) << "the server never noticed the dead client";
  }
  {
    std::lock_guard lk(s.mu);
    s.parked.clear();
  }
  EXPECT_EQ(fptest::settled([] { return open_fds(); }, 200ms), fds_before) << "file descriptors leaked";
  EXPECT_EQ(dev_shm_entries(), shm_before) << "something was left in /dev/shm";
}

// The children. A server serves Echo and Park until killed; a client opens one parked call.
[[noreturn]] void run_child(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string role = spec.substr(0, colon);
  const std::string name = spec.substr(colon + 1);
  if (role == "server") {
    auto* rt = new Runtime();  // never destroyed: the process is killed
    auto* server = new Server(*rt);
    (void)server->add({kEcho, "t.Shm.Echo", flatpipe::CallKind::unary,
                       [](ServerCall call) { call.finish(call.request()); }});
    (void)server->add({kPark, "t.Shm.Park", flatpipe::CallKind::unary, [](ServerCall call) {
                         static std::vector<ServerCall> keep;
                         keep.push_back(call);
                       }});
    if (!server->listen("shm://" + name).ok()) std::_Exit(2);
  } else {
    auto* rt = new Runtime();
    auto c = Client::connect(*rt, "shm://" + name);
    if (!c.ok()) std::_Exit(3);
    auto* client = new Client(*c);
    client->async_call(kPark, Buffer::copy(std::string_view("parked")), {}, [](Result<Buffer>) {});
  }
  std::fputs("ready\n", stdout);
  std::fflush(stdout);
  for (;;) ::pause();
}

const bool g_child = [] {
  if (const char* spec = std::getenv("FLATPIPE_SHM_TEST_CHILD")) run_child(spec);
  return false;
}();

}  // namespace
