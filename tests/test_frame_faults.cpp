// Frame-level bad input over EVERY reliable transport of fixtures.hpp's table (tcp, unix, inproc,
// and whatever is added there): a raw peer is a bare FrameConnection obtained through the
// transport itself, with a sink that records what the server sends back. It sends frames a
// broken or hostile peer could send, and checks what docs/protocol.md section 6 promises:
// ignored and counted, refused with an error, or the connection closed — and the server keeps
// serving.
//
// The byte-level cases (garbage bytes, a length prefix that lies, a frame cut off mid-way, a
// request dribbled one byte at a time) stay in test_bad_input.cpp over tcp and unix only: they
// are about reassembling a byte stream, and a transport that hands over whole frames (inproc)
// has no bytes to get wrong. What such a transport can still be handed — a frame too large for
// the receiver's max_frame, a header that lies about its payload length, a wrong version — is
// covered here.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>

#include "support/fixtures.hpp"

namespace fptest {
namespace {

using flatpipe::FrameConnection;
using flatpipe::FrameSink;
using flatpipe::wire::Frame;
using flatpipe::wire::FrameType;
using flatpipe::wire::OutFrame;
namespace wf = flatpipe::wire::flags;

// Records everything the server sends; every wait is bounded.
class RecordingSink final : public FrameSink {
 public:
  void on_frame(Frame&& f) override {
    std::lock_guard lk(mu_);
    frames_.push_back(std::move(f));
    cv_.notify_all();
  }
  void on_frame_error(const Status& why) override {
    std::lock_guard lk(mu_);
    frame_error_ = why;
    cv_.notify_all();
  }
  void on_writable() override {}
  void on_closed(const Status& why) override {
    std::lock_guard lk(mu_);
    closed_ = why;
    ++closed_calls_;
    cv_.notify_all();
  }

  // The next frame, or nullopt when none arrives within `timeout` (or the connection closed).
  std::optional<Frame> next(std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return !frames_.empty() || closed_; });
    if (frames_.empty()) return std::nullopt;
    Frame f = std::move(frames_.front());
    frames_.pop_front();
    return f;
  }
  bool wait_closed(std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return closed_.has_value(); });
  }
  int closed_calls() {
    std::lock_guard lk(mu_);
    return closed_calls_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> frames_;
  std::optional<Status> frame_error_;
  std::optional<Status> closed_;
  int closed_calls_ = 0;
};

std::string payload_text(const Frame& f) { return f.prefix.to_string() + f.payload.to_string(); }

std::string hello_payload() {
  flatpipe::wire::Hello hello;
  return flatpipe::wire::encode_hello(hello);
}

struct RawFramePeer {
  std::shared_ptr<FrameConnection> conn;
  std::shared_ptr<RecordingSink> sink = std::make_shared<RecordingSink>();

  bool send(OutFrame f) { return conn->send(std::move(f)) != flatpipe::SendResult::closed; }
  bool send(FrameType t, std::uint16_t flags, std::uint32_t id, std::uint32_t method, std::string_view payload = {}) {
    return send(OutFrame(t, flags, id, method, Buffer::copy(payload)));
  }
};

class FrameFaults : public ::testing::TestWithParam<TestParam> {
 protected:
  void SetUp() override {
    if (!GetParam().transport.reliable) GTEST_SKIP() << "frame faults are checked over reliable transports";
    ServerOptions so;
    so.session.max_frame = 4096;
    server_ = std::make_unique<Server>(server_rt_, so);
    ASSERT_TRUE(register_test_service(*server_, state_).ok());
    auto bound = server_->listen(GetParam().transport.listen_uri());
    ASSERT_TRUE(bound.ok()) << describe(bound);
    uri_ = *bound;
  }
  void TearDown() override {
    for (auto& p : peers_) p.conn->close(Status(StatusCode::cancelled, "test over"), false);
    if (server_) server_->shutdown(0ms);
    server_.reset();
    state_->clear();
  }
  bool full() const { return GetParam().mode == Mode::full; }

  // A connected raw peer; in full mode it has sent HELLO and read the HELLO_ACK.
  RawFramePeer& connect() {
    auto ep = flatpipe::Endpoint::parse(uri_);
    EXPECT_TRUE(ep.ok());
    flatpipe::TransportContext ctx{peer_rt_.io(), {}};
    std::promise<Result<std::shared_ptr<FrameConnection>>> p;
    auto f = p.get_future();
    peer_rt_.transports().find(ep->scheme)->async_connect(
        *ep, ctx, [&p](Result<std::shared_ptr<FrameConnection>> r) { p.set_value(std::move(r)); });
    auto r = get_within(f);
    peers_.emplace_back();
    RawFramePeer& peer = peers_.back();
    if (!r || !r->ok()) {
      ADD_FAILURE() << "raw connect failed";
      return peer;
    }
    peer.conn = **r;
    peer.conn->start(peer.sink);
    if (full()) {
      peer.send(OutFrame(FrameType::hello, 0, 0, 0, {}, hello_payload()));
      auto ack = peer.sink->next();
      EXPECT_TRUE(ack && ack->header.type == FrameType::hello_ack);
    }
    return peer;
  }

  // Request(echo) → Response "echo:" + text, on `peer`.
  void expect_echo(RawFramePeer& peer, std::uint32_t id, std::string_view text) {
    ASSERT_TRUE(peer.send(FrameType::request, 0, id, method::echo, text));
    auto reply = peer.sink->next();
    ASSERT_TRUE(reply.has_value()) << "no reply to the echo";
    EXPECT_EQ(reply->header.type, FrameType::response);
    EXPECT_EQ(reply->header.request_id, id);
    EXPECT_EQ(payload_text(*reply), "echo:" + std::string(text));
  }

  std::uint64_t ignored() { return server_->stats().frames_ignored; }

  Runtime server_rt_;
  Runtime peer_rt_;
  std::shared_ptr<ServiceState> state_ = std::make_shared<ServiceState>();
  std::unique_ptr<Server> server_;
  std::string uri_;
  std::deque<RawFramePeer> peers_;
};

INSTANTIATE_TEST_SUITE_P(Transports, FrameFaults, ::testing::ValuesIn(all_params()), param_name);

TEST_P(FrameFaults, UnknownFrameTypesAreIgnoredAndCounted) {
  auto& peer = connect();
  expect_echo(peer, 1, "first");  // compatible mode is settled by a call first
  ASSERT_TRUE(peer.send(static_cast<FrameType>(9), 0, 2, method::echo, "unassigned"));
  ASSERT_TRUE(peer.send(static_cast<FrameType>(200), 0, 3, method::echo, "reserved"));
  expect_echo(peer, 4, "still here");
  EXPECT_GE(ignored(), 2u);
}

TEST_P(FrameFaults, FramesForCallsThatDoNotExistAreIgnoredAndCounted) {
  auto& peer = connect();
  expect_echo(peer, 1, "first");
  const auto before = ignored();
  ASSERT_TRUE(peer.send(FrameType::stream_data, wf::streaming, 999, 0, "lost"));
  ASSERT_TRUE(peer.send(FrameType::stream_end, 0, 999, 0));
  ASSERT_TRUE(peer.send(FrameType::cancel, 0, 998, 0));
  ASSERT_TRUE(peer.send(FrameType::response, 0, 997, method::echo, "nobody asked"));
  expect_echo(peer, 2, "after");
  EXPECT_GE(ignored() - before, 4u);
}

TEST_P(FrameFaults, MalformedCancelAndCreditPayloadsAreIgnored) {
  auto& peer = connect();
  expect_echo(peer, 1, "first");
  // A Cancel with a payload for a call that is not open; a CREDIT of the wrong size and one for
  // no call (full-mode type: ignored in compatible mode as an out-of-place type).
  ASSERT_TRUE(peer.send(FrameType::cancel, 0, 55, 0, "unexpected payload"));
  ASSERT_TRUE(peer.send(FrameType::credit, 0, 1, 0, "abc"));
  ASSERT_TRUE(peer.send(FrameType::credit, 0, 77, 0, std::string("\0\0\0\x05", 4)));
  expect_echo(peer, 2, "after");
  EXPECT_GE(ignored(), 3u);
}

TEST_P(FrameFaults, CancelWithAPayloadStillCancelsAnOpenCall) {
  auto& peer = connect();
  ASSERT_TRUE(peer.send(FrameType::request, 0, 5, method::park, "p"));
  ASSERT_TRUE(eventually([&] { return state_->parked_count.load() == 1; }));
  ASSERT_TRUE(peer.send(FrameType::cancel, 0, 5, 0, "junk"));
  auto reply = peer.sink->next();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->header.type, FrameType::error);
  EXPECT_EQ(reply->header.request_id, 5u);
  EXPECT_TRUE(eventually([&] { return state_->cancel_callbacks.load() == 1; }));
}

TEST_P(FrameFaults, FrameOverMaxFrameClosesOnlyThatConnection) {
  auto& other = connect();
  auto& peer = connect();
  expect_echo(peer, 1, "first");
  ASSERT_TRUE(peer.send(FrameType::request, 0, 2, method::echo, std::string(5000, 'x')));  // limit 4096
  if (full()) {  // told why first (protocol.md section 6)
    auto goaway = peer.sink->next();
    ASSERT_TRUE(goaway.has_value());
    EXPECT_EQ(goaway->header.type, FrameType::goaway);
    EXPECT_EQ(static_cast<StatusCode>(static_cast<std::uint8_t>(payload_text(*goaway)[0])),
              StatusCode::resource_exhausted);
  }
  EXPECT_TRUE(peer.sink->wait_closed());
  EXPECT_EQ(peer.sink->closed_calls(), 1);
  expect_echo(other, 1, "unaffected");
}

TEST_P(FrameFaults, HeaderThatLiesAboutItsPayloadOrVersionClosesTheConnection) {
  for (int variant = 0; variant < 2; ++variant) {
    auto& peer = connect();
    expect_echo(peer, 1, "first");
    OutFrame f(FrameType::request, 0, 2, method::echo, Buffer::copy(std::string_view("abcd")));
    if (variant == 0) {
      flatpipe::wire::put_u32(f.head.data() + 16, 3);  // payload_len 3, 4 bytes carried
      // A byte stream reads this as a 3-byte payload followed by garbage: either way the
      // connection must end, never hand a handler a wrong message.
    } else {
      f.head[4] = 3;  // version 3
    }
    ASSERT_TRUE(peer.send(std::move(f)));
    EXPECT_TRUE(peer.sink->wait_closed()) << "variant " << variant;
  }
  auto& fresh = connect();
  expect_echo(fresh, 1, "server still serves");
}

TEST_P(FrameFaults, PeerVanishingWithCallsOpenCancelsItsHandlers) {
  auto& peer = connect();
  ASSERT_TRUE(peer.send(FrameType::request, 0, 1, method::park, "a"));
  ASSERT_TRUE(peer.send(FrameType::request, 0, 2, method::park, "b"));
  ASSERT_TRUE(eventually([&] { return state_->parked_count.load() == 2; }));
  EXPECT_EQ(server_->connection_count(), 1u);
  peer.conn->close(Status(StatusCode::unavailable, "vanish"), false);
  EXPECT_TRUE(eventually([&] { return state_->cancel_callbacks.load() == 2; }));
  EXPECT_TRUE(eventually([&] { return server_->connection_count() == 0; }));
  for (const auto& call : state_->parked_calls()) EXPECT_TRUE(call.context().cancelled());
}

}  // namespace
}  // namespace fptest
