// The udp transport's own semantics (docs/transports/udp.md): what works over datagrams, what is
// refused with a clear error instead of being lost silently, and what the network may throw at
// a listener. Loopback only, ephemeral ports; every wait is bounded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "support/fixtures.hpp"
#include "support/raw_peer.hpp"
#include "transport/udp/udp_counters.hpp"

namespace fptest {
namespace {

using flatpipe::StreamQos;

constexpr std::uint32_t kEcho = 1;
constexpr std::uint32_t kCount = 2;        // unary, counts its runs (notifications)
constexpr std::uint32_t kLatestTicks = 3;  // server stream, latest QoS: request "N" -> "t0".."t<N-1>"
constexpr std::uint32_t kReliableTicks = 4;  // server stream, reliable QoS (refused over udp)
constexpr std::uint32_t kCollect = 5;      // client stream: "n:" + number of messages read
constexpr std::uint32_t kSize = 6;         // unary: the request's size as text

flatpipe::detail::UdpCounters& counters() { return flatpipe::detail::udp_counters(); }

// A blocking raw UDP socket on 127.0.0.1 (port 0 = ephemeral), for playing a broken or silent peer.
class RawUdp {
 public:
  RawUdp() {
    fd_ = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  ~RawUdp() { ::close(fd_); }
  RawUdp(const RawUdp&) = delete;
  RawUdp& operator=(const RawUdp&) = delete;

  unsigned short port() const {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
  }
  bool send_to(unsigned short port, const std::vector<std::uint8_t>& bytes) const {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    return ::sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) ==
           static_cast<ssize_t>(bytes.size());
  }
  // One datagram, or nullopt after `timeout`.
  std::optional<std::vector<std::uint8_t>> receive(std::chrono::milliseconds timeout) const {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
    std::vector<std::uint8_t> out(70000);
    const ssize_t n = ::recv(fd_, out.data(), out.size(), 0);
    if (n < 0) return std::nullopt;
    out.resize(static_cast<std::size_t>(n));
    return out;
  }

 private:
  int fd_ = -1;
};

// A frame body as a udp datagram carries it: the V2 frame without its 4-byte length prefix.
std::vector<std::uint8_t> datagram(std::uint8_t type, std::uint16_t flags, std::uint32_t id, std::uint32_t method,
                                   std::string_view payload = {}) {
  const auto bytes = rawpeer::to_bytes(payload);
  auto frame = rawpeer::encode_frame(type, flags, id, method, bytes);
  return std::vector<std::uint8_t>(frame.begin() + 4, frame.end());
}

unsigned short port_of(const std::string& uri) { return static_cast<unsigned short>(std::stoi(uri.substr(uri.rfind(':') + 1))); }

class Udp : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<Server>(server_rt_);
    ASSERT_TRUE(server_->add_unary(kEcho, "udp.Test.Echo", [](CallContext&, const Buffer& req) -> Result<Buffer> {
      return Buffer::copy("echo:" + req.to_string());
    }).ok());
    ASSERT_TRUE(server_->add_unary(kCount, "udp.Test.Count", [this](CallContext&, const Buffer&) -> Result<Buffer> {
      ++counted_;
      return Buffer::copy(std::string_view("counted"));
    }).ok());
    ASSERT_TRUE(server_->add_coroutine(kLatestTicks, "udp.Test.LatestTicks", CallKind::server_stream,
                                       [](ServerCall call) -> asio::awaitable<void> {
                                         const int n = std::stoi(call.request().to_string());
                                         for (int i = 0; i < n; ++i) {
                                           Status w = co_await call.async_write(Buffer::copy("t" + std::to_string(i)),
                                                                                asio::use_awaitable);
                                           if (!w.ok()) co_return;
                                         }
                                         call.finish(Status());
                                       },
                                       StreamQos::latest)
                    .ok());
    ASSERT_TRUE(server_->add_coroutine(kReliableTicks, "udp.Test.ReliableTicks", CallKind::server_stream,
                                       [this](ServerCall call) -> asio::awaitable<void> {
                                         ++reliable_handler_runs_;
                                         call.finish(Status());
                                         co_return;
                                       })
                    .ok());
    ASSERT_TRUE(server_->add_coroutine(kCollect, "udp.Test.Collect", CallKind::client_stream,
                                       [](ServerCall call) -> asio::awaitable<void> {
                                         int n = 0;
                                         for (;;) {
                                           ReadResult r = co_await call.async_read(asio::use_awaitable);
                                           if (!r.ok()) co_return;
                                           if (!*r) break;
                                           ++n;
                                         }
                                         call.finish(Buffer::copy("n:" + std::to_string(n)));
                                       })
                    .ok());
    ASSERT_TRUE(server_->add_unary(kSize, "udp.Test.Size", [](CallContext&, const Buffer& req) -> Result<Buffer> {
      return Buffer::copy(std::to_string(req.size()));
    }).ok());
  }
  void TearDown() override {
    if (server_) server_->shutdown(0ms);
    server_.reset();
  }

  std::string listen(std::string_view query = {}) {
    auto bound = server_->listen("udp://127.0.0.1:0" + std::string(query));
    EXPECT_TRUE(bound.ok()) << describe(bound);
    return bound.ok() ? *bound : std::string();
  }

  Runtime server_rt_;
  Runtime client_rt_;
  std::unique_ptr<Server> server_;
  std::atomic<int> counted_{0};
  std::atomic<int> reliable_handler_runs_{0};
};

CallOptions within(std::chrono::milliseconds ms) { return CallOptions::with_timeout(ms); }

TEST_F(Udp, UnaryCallSucceedsInFullMode) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  auto r = client->call(kEcho, buf("hi"), within(kWait));
  ASSERT_TRUE(r.ok()) << describe(r);
  EXPECT_EQ(r->to_string(), "echo:hi");
  EXPECT_TRUE(client->connected());
}

TEST_F(Udp, UnaryCallSucceedsInNetpipeMode) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri + "?mode=netpipe");
  ASSERT_TRUE(client.ok()) << describe(client);
  auto r = client->call(kEcho, buf("np"), within(kWait));
  ASSERT_TRUE(r.ok()) << describe(r);
  EXPECT_EQ(r->to_string(), "echo:np");
}

TEST_F(Udp, NotificationIsDelivered) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client->notify(kCount, buf("n")).ok());
  EXPECT_TRUE(eventually([&] { return counted_.load() == 3; })) << counted_.load();
}

TEST_F(Udp, ReliableClientStreamIsRefusedWithAClearError) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  for (CallKind kind : {CallKind::client_stream, CallKind::bidi}) {
    auto s = client->open(kCollect, kind, {}, within(kWait));  // qos reliable by default
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::failed_precondition);
    EXPECT_EQ(s.status().message(), "udp cannot carry a reliable stream; use qos latest or a stream transport");
  }
}

TEST_F(Udp, ReliableServerStreamIsRefusedByTheServerAndItsHandlerNeverRuns) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  auto s = client->open(kReliableTicks, CallKind::server_stream, buf("3"), within(kWait));
  ASSERT_TRUE(s.ok()) << describe(s);  // the client does not know the server's QoS
  ReadResult r = s->read();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::failed_precondition);
  EXPECT_EQ(r.status().message(), "udp cannot carry a reliable stream; use qos latest or a stream transport");
  EXPECT_EQ(reliable_handler_runs_.load(), 0);
}

TEST_F(Udp, LatestServerStreamDeliversInOrderOnLoopback) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  auto s = client->open(kLatestTicks, CallKind::server_stream, buf("20"), within(kWait));
  ASSERT_TRUE(s.ok()) << describe(s);
  std::vector<std::string> got;
  for (;;) {
    ReadResult r = s->read();
    ASSERT_TRUE(r.ok()) << describe(r.status());
    if (!*r) break;
    got.push_back((*r)->to_string());
  }
  // Best effort: on loopback nothing is lost at this rate, but the contract is only "a subset,
  // newest kept"; what arrived must be a rising sequence ending with the last message.
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), "t19");
  for (std::size_t i = 1; i < got.size(); ++i) {
    EXPECT_LT(std::stoi(got[i - 1].substr(1)), std::stoi(got[i].substr(1)));
  }
}

TEST_F(Udp, LatestClientStreamWorks) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  CallOptions o = within(kWait);
  o.qos = StreamQos::latest;
  auto s = client->open(kCollect, CallKind::client_stream, {}, o);
  ASSERT_TRUE(s.ok()) << describe(s);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(s->write(buf("m" + std::to_string(i))).ok());
  s->write_done();
  auto r = s->finish();
  ASSERT_TRUE(r.ok()) << describe(r);
  EXPECT_EQ(r->to_string().substr(0, 2), "n:");
  EXPECT_GE(std::stoi(r->to_string().substr(2)), 1);
  EXPECT_LE(std::stoi(r->to_string().substr(2)), 5);
}

TEST_F(Udp, MessageLargerThanADatagramIsRefusedAtSendNamingTheSizes) {
  const std::string uri = listen();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  // One IPv4 datagram carries at most 65507 bytes: 16 of frame header, 65491 of payload. In full
  // mode a call with a deadline spends 14 of those on its header block (docs/protocol.md 9).
  auto fits = client->call(kSize, Buffer::copy(std::string(65477, 'x')), within(kWait));
  ASSERT_TRUE(fits.ok()) << describe(fits);
  EXPECT_EQ(fits->to_string(), "65477");
  auto r = client->call(kSize, Buffer::copy(std::string(65478, 'x')), within(kWait));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::resource_exhausted);
  EXPECT_NE(r.status().message().find("65492 bytes"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("at most 65491 bytes of payload"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("65507 bytes"), std::string::npos) << r.status().message();
  EXPECT_EQ(client->notify(kCount, Buffer::copy(std::string(65492, 'x'))).code(), StatusCode::resource_exhausted);
  EXPECT_TRUE(client->notify(kCount, Buffer::copy(std::string(65491, 'x'))).ok());
  // The connection is still good.
  auto after = client->call(kEcho, buf("still"), within(kWait));
  ASSERT_TRUE(after.ok()) << describe(after);
  EXPECT_TRUE(eventually([&] { return counted_.load() == 1; }));
}

TEST_F(Udp, ConfiguredSmallerDatagramLimitsEachSidesSends) {
  const std::string uri = listen("?max_datagram=512");
  auto small = Client::connect(client_rt_, uri + "?max_datagram=512");
  ASSERT_TRUE(small.ok()) << describe(small);
  // 512 - 16 (frame header) - 14 (the deadline's header block) = 482.
  EXPECT_TRUE(small->call(kSize, Buffer::copy(std::string(482, 'x')), within(kWait)).ok());
  auto r = small->call(kSize, Buffer::copy(std::string(483, 'x')), within(kWait));
  EXPECT_EQ(r.status().code(), StatusCode::resource_exhausted) << describe(r);
  // A client with the default limit may send more; the server's own reply is then too big for
  // its 512-byte datagrams, and the call ends with that error instead of a lost reply.
  auto big = Client::connect(client_rt_, uri);
  ASSERT_TRUE(big.ok()) << describe(big);
  auto reply = big->call(kEcho, Buffer::copy(std::string(1000, 'x')), within(kWait));
  EXPECT_EQ(reply.status().code(), StatusCode::resource_exhausted) << describe(reply);
  EXPECT_NE(reply.status().message().find("1005 bytes"), std::string::npos) << reply.status().message();
  EXPECT_EQ(Client::connect(client_rt_, uri + "?max_datagram=12").status().code(), StatusCode::invalid_argument);
}

TEST_F(Udp, GarbageDatagramsAreDroppedAndCountedAndTheListenerKeepsServing) {
  const std::string uri = listen();
  const unsigned short port = port_of(uri);
  const auto before = counters().malformed.load();
  const auto stray_before = counters().stray.load();
  RawUdp raw;
  ASSERT_TRUE(raw.send_to(port, {0x01, 0x02, 0x03}));                        // shorter than a header
  ASSERT_TRUE(raw.send_to(port, std::vector<std::uint8_t>(40, 0xff)));       // bad version
  auto lying = datagram(rawpeer::type::request, 0, 1, kEcho, "abc");
  lying.push_back('d');                                                       // payload_len says 3, 4 came
  ASSERT_TRUE(raw.send_to(port, lying));
  auto cut = datagram(rawpeer::type::request, 0, 1, kEcho, "abcdef");
  cut.resize(cut.size() - 2);                                                 // truncated
  ASSERT_TRUE(raw.send_to(port, cut));
  ASSERT_TRUE(raw.send_to(port, datagram(rawpeer::type::response, 0, 9, kEcho, "x")));  // cannot open a call
  EXPECT_TRUE(eventually([&] { return counters().malformed.load() - before == 4; }))
      << counters().malformed.load() - before;
  EXPECT_TRUE(eventually([&] { return counters().stray.load() - stray_before == 1; }));
  EXPECT_EQ(server_->connection_count(), 0u);
  // A well-formed netpipe-style request from the same address is then served.
  ASSERT_TRUE(raw.send_to(port, datagram(rawpeer::type::request, 0, 7, kEcho, "ok")));
  auto reply = raw.receive(kWait);
  ASSERT_TRUE(reply.has_value());
  ASSERT_EQ(reply->size(), 16u + 7u);
  EXPECT_EQ((*reply)[1], rawpeer::type::response);
  EXPECT_EQ(std::string(reply->begin() + 16, reply->end()), "echo:ok");
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  EXPECT_TRUE(client->call(kEcho, buf("x"), within(kWait)).ok());
}

TEST_F(Udp, ManyPeersOnOneListener) {
  const std::string uri = listen();
  std::vector<Client> clients;
  for (int i = 0; i < 16; ++i) {
    auto c = Client::connect(client_rt_, uri);
    ASSERT_TRUE(c.ok()) << describe(c);
    clients.push_back(*c);
  }
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < 50; ++k) {
        const std::string m = std::to_string(i) + "/" + std::to_string(k);
        auto r = clients[static_cast<std::size_t>(i)].call(kEcho, buf(m), within(kWait));
        if (r.ok() && r->to_string() == "echo:" + m) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 16 * 50);
  EXPECT_EQ(server_->connection_count(), 16u);
}

TEST_F(Udp, PeersBeyondMaxPeersAreRefusedAndCounted) {
  const std::string uri = listen("?max_peers=2");
  const auto before = counters().peers_refused.load();
  auto a = Client::connect(client_rt_, uri);
  auto b = Client::connect(client_rt_, uri);
  ASSERT_TRUE(a.ok() && b.ok());
  ClientOptions co;
  co.session.handshake_timeout = 200ms;
  auto c = Client::connect(client_rt_, uri, co);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::deadline_exceeded) << describe(c);
  EXPECT_GE(counters().peers_refused.load() - before, 1u);
  EXPECT_TRUE(a->call(kEcho, buf("a"), within(kWait)).ok());
}

TEST_F(Udp, IdlePeersExpire) {
  const std::string uri = listen("?idle_ms=100");
  const auto before = counters().peers_expired.load();
  auto client = Client::connect(client_rt_, uri);
  ASSERT_TRUE(client.ok()) << describe(client);
  EXPECT_EQ(server_->connection_count(), 1u);
  EXPECT_TRUE(eventually([&] { return server_->connection_count() == 0; }));
  EXPECT_GE(counters().peers_expired.load() - before, 1u);
}

TEST_F(Udp, DeadlineOnANeverAnsweringPeer) {
  RawUdp silent;  // reads nothing, answers nothing
  const std::string uri = "udp://127.0.0.1:" + std::to_string(silent.port());
  // Compatible mode: no handshake, so the call itself is what goes unanswered.
  auto client = Client::connect(client_rt_, uri + "?mode=netpipe");
  ASSERT_TRUE(client.ok()) << describe(client);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = client->call(kEcho, buf("anyone?"), within(150ms));
  EXPECT_EQ(r.status().code(), StatusCode::deadline_exceeded) << describe(r);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  // Without a deadline, the connection's implicit one (SessionOptions::unreliable_call_timeout).
  ClientOptions co;
  co.session.unreliable_call_timeout = 100ms;
  auto implicit = Client::connect(client_rt_, uri + "?mode=netpipe", co);
  ASSERT_TRUE(implicit.ok()) << describe(implicit);
  auto r2 = implicit->call(kEcho, buf("anyone?"));
  EXPECT_EQ(r2.status().code(), StatusCode::deadline_exceeded) << describe(r2);
  // Full mode: the HELLO is never answered, so connect fails after handshake_timeout.
  ClientOptions hs;
  hs.session.handshake_timeout = 150ms;
  auto full = Client::connect(client_rt_, uri, hs);
  EXPECT_EQ(full.status().code(), StatusCode::deadline_exceeded) << describe(full);
  ASSERT_TRUE(silent.receive(1s).has_value());  // what did arrive were datagrams
}

TEST_F(Udp, ConnectingToAClosedPortFailsUnavailable) {
  unsigned short port;
  {
    RawUdp gone;
    port = gone.port();
  }
  ClientOptions co;
  co.session.handshake_timeout = 3s;
  const auto t0 = std::chrono::steady_clock::now();
  auto c = Client::connect(client_rt_, "udp://127.0.0.1:" + std::to_string(port), co);
  ASSERT_FALSE(c.ok());
  // ICMP port unreachable comes back on loopback: refused, long before the handshake timeout.
  EXPECT_EQ(c.status().code(), StatusCode::unavailable) << describe(c);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

TEST_F(Udp, ListenOnATakenPortIsAlreadyExists) {
  const std::string uri = listen();
  Server other(server_rt_);
  auto again = other.listen(uri);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::already_exists) << describe(again);
}

}  // namespace
}  // namespace fptest
