// A real flatpipe::Server driven by raw bytes (tests/support/raw_peer.hpp), over tcp and unix:
// what a netpipe peer sends must work exactly as docs/protocol.md says (compatible mode, the
// captured vectors), and whatever a broken peer sends must neither crash the server nor disturb
// other connections (docs/protocol.md section 15). Then a flatpipe Client against a raw socket
// playing a netpipe server.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <asio/awaitable.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>

#include "flatpipe/flatpipe.hpp"
#include "support/raw_peer.hpp"

namespace {

using flatpipe::Buffer;
using flatpipe::CallContext;
using flatpipe::CallKind;
using flatpipe::Result;
using flatpipe::ServerCall;
using flatpipe::Status;
using flatpipe::StatusCode;
using rawpeer::Bytes;
using rawpeer::from_hex;
using rawpeer::Millis;
using rawpeer::RawFrame;
using rawpeer::RawPeer;
using rawpeer::RawServer;
using rawpeer::ReadOutcome;
namespace type = rawpeer::type;
namespace flag = rawpeer::flag;

constexpr std::uint32_t kEcho = 1;     // unary: echoes the request
constexpr std::uint32_t kHang = 2;     // unary: never finishes; records its cancellation
constexpr std::uint32_t kFail = 3;     // unary: fails INTERNAL "boom"
constexpr std::uint32_t kSplit = 4;    // server streaming: each request byte as a message
constexpr std::uint32_t kConcat = 5;   // client streaming: the concatenation
constexpr std::uint32_t kBidi = 6;     // bidi: echoes each message
constexpr std::uint32_t kSink = 7;     // bidi: never reads, never finishes; records its cancellation
constexpr std::uint32_t kMaxFrame = 1024;

// docs/protocol.md 16.1, captured from netpipe 0.0.7.
constexpr std::string_view kNetpipeRequest = "00000013 02 00 0000 00000000 00000001 00000003 010203";
constexpr std::string_view kNetpipeResponse = "00000013 02 01 0000 00000000 00000001 00000003 010203";
constexpr std::string_view kNetpipeError = "00000014 02 02 0000 00000000 00000003 00000004 626f6f6d";

constexpr Millis kWait{3000};     // for what must happen
constexpr Millis kQuiet{200};     // for what must not

// What the handlers saw, for the tests to wait on.
struct Probe {
  std::mutex mu;
  std::condition_variable cv;
  int hang_started = 0;
  int hang_cancelled = 0;
  int bidi_started = 0;
  int bidi_cancelled = 0;           // via CallContext::on_cancel
  int sink_started = 0;
  int sink_cancelled = 0;
  std::vector<StatusCode> bidi_read_failures;  // what async_read reported when it failed

  void bump(int Probe::*field) {
    {
      std::lock_guard lk(mu);
      ++(this->*field);
    }
    cv.notify_all();
  }
  int get(int Probe::*field) {
    std::lock_guard lk(mu);
    return this->*field;
  }
  // Waits (bounded) until `field` reaches `at_least`.
  bool wait_for(int Probe::*field, int at_least, Millis wait = kWait) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, wait, [&] { return this->*field >= at_least; });
  }
};

asio::awaitable<void> split_body(ServerCall call) {
  const Buffer req = call.request();
  for (std::size_t i = 0; i < req.size(); ++i) {
    Status w = co_await call.async_write(req.slice(i, 1), asio::use_awaitable);
    if (!w.ok()) co_return;
  }
  call.finish(Status());
}

asio::awaitable<void> concat_body(ServerCall call) {
  std::string all;
  for (;;) {
    flatpipe::ReadResult r = co_await call.async_read(asio::use_awaitable);
    if (!r.ok()) co_return;
    if (!*r) break;
    all += (*r)->view();
  }
  call.finish(Buffer::adopt(std::move(all)));
}

asio::awaitable<void> bidi_body(std::shared_ptr<Probe> probe, ServerCall call) {
  probe->bump(&Probe::bidi_started);
  call.context().on_cancel([probe] { probe->bump(&Probe::bidi_cancelled); });
  for (;;) {
    flatpipe::ReadResult r = co_await call.async_read(asio::use_awaitable);
    if (!r.ok()) {
      {
        std::lock_guard lk(probe->mu);
        probe->bidi_read_failures.push_back(r.code());
      }
      probe->cv.notify_all();
      co_return;
    }
    if (!*r) break;
    Status w = co_await call.async_write(**r, asio::use_awaitable);
    if (!w.ok()) co_return;
  }
  call.finish(Status());
}

// A Runtime and a Server with the test methods, listening on one tcp or unix endpoint.
class TestServer {
 public:
  explicit TestServer(const std::string& transport) : server_(runtime_, options()) {
    probe_ = std::make_shared<Probe>();
    auto probe = probe_;
    add_ok(server_.add_unary(kEcho, "t.T.Echo", [](CallContext&, const Buffer& req) -> Result<Buffer> { return req; }));
    add_ok(server_.add({kHang, "t.T.Hang", CallKind::unary, [probe](ServerCall call) {
                          probe->bump(&Probe::hang_started);
                          call.context().on_cancel([probe] { probe->bump(&Probe::hang_cancelled); });
                          // never finished: the call stays open until cancelled or disconnected
                        }}));
    add_ok(server_.add_unary(kFail, "t.T.Fail", [](CallContext&, const Buffer&) -> Result<Buffer> {
      return Status(StatusCode::internal, "boom");
    }));
    add_ok(server_.add_coroutine(kSplit, "t.T.Split", CallKind::server_stream,
                                 [](ServerCall call) { return split_body(std::move(call)); }));
    add_ok(server_.add_coroutine(kConcat, "t.T.Concat", CallKind::client_stream,
                                 [](ServerCall call) { return concat_body(std::move(call)); }));
    add_ok(server_.add_coroutine(kBidi, "t.T.Bidi", CallKind::bidi,
                                 [probe](ServerCall call) { return bidi_body(probe, std::move(call)); }));
    add_ok(server_.add({kSink, "t.T.Sink", CallKind::bidi, [probe](ServerCall call) {
                          probe->bump(&Probe::sink_started);
                          call.context().on_cancel([probe] { probe->bump(&Probe::sink_cancelled); });
                        }}));
    const std::string uri =
        transport == "tcp" ? std::string("tcp://127.0.0.1:0") : "unix://" + rawpeer::unique_socket_path("srv");
    auto bound = server_.listen(uri);
    if (bound.ok()) {
      uri_ = *bound;
    } else {
      error_ = bound.status().to_string();
    }
  }

  const std::string& uri() const { return uri_; }
  const std::string& error() const { return error_; }
  flatpipe::Server& server() { return server_; }
  Probe& probe() { return *probe_; }

 private:
  static flatpipe::ServerOptions options() {
    flatpipe::ServerOptions o;
    o.session.max_frame = kMaxFrame;
    return o;
  }
  void add_ok(const Status& st) {
    if (!st.ok() && error_.empty()) error_ = st.to_string();
  }

  flatpipe::Runtime runtime_;  // outlives server_
  flatpipe::Server server_;
  std::shared_ptr<Probe> probe_;
  std::string uri_;
  std::string error_;
};

// ---- helpers on raw frames ----

void read_one(RawPeer& p, RawFrame& out, Millis wait = kWait) {
  ReadOutcome r = p.read_frame(wait);
  ASSERT_TRUE(r.ok()) << "no frame: " << r.why;
  out = std::move(r.frame);
}

void expect_frame(const RawFrame& f, std::uint8_t frame_type, std::uint16_t flags, std::uint32_t request_id,
                  std::uint32_t method_id) {
  EXPECT_EQ(f.version, 2) << f.hex();
  EXPECT_EQ(int{f.type}, int{frame_type}) << f.hex();
  EXPECT_EQ(f.flags, flags) << f.hex();
  EXPECT_EQ(f.request_id, request_id) << f.hex();
  EXPECT_EQ(f.method_id, method_id) << f.hex();
  EXPECT_EQ(f.payload_len, f.payload.size()) << f.hex();
  EXPECT_EQ(f.length, 16 + f.payload.size()) << f.hex();
}

void expect_frame(const RawFrame& f, std::uint8_t frame_type, std::uint16_t flags, std::uint32_t request_id,
                  std::uint32_t method_id, std::string_view payload) {
  expect_frame(f, frame_type, flags, request_id, method_id);
  EXPECT_EQ(f.text(), payload) << f.hex();
}

// A unary echo round trip on `p`: Request(id, kEcho, payload) → Response with the same bytes.
void echo_call(RawPeer& p, std::uint32_t id, std::string_view payload = "ping") {
  ASSERT_TRUE(p.write_frame(type::request, 0, id, kEcho, payload));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::response, 0, id, kEcho, payload);
}

// ---- the fixture: one server per test, parameterized by transport ----

class BadInput : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    server_ = std::make_unique<TestServer>(GetParam());
    ASSERT_TRUE(server_->error().empty()) << server_->error();
  }
  void TearDown() override { server_.reset(); }

  RawPeer connect() { return RawPeer::connect_uri(server_->uri()); }
  Probe& probe() { return server_->probe(); }

  std::unique_ptr<TestServer> server_;
};

std::string transport_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

// ---------------------------------------------------------------------------------------------
// netpipe-style peers (compatible mode: no handshake)

TEST_P(BadInput, NetpipeUnaryAnswersWithTheCapturedResponse) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_bytes(from_hex(kNetpipeRequest)));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  EXPECT_EQ(f.hex(), rawpeer::to_hex(from_hex(kNetpipeResponse)));

  // netpipe writes the prefix and the body with two write() calls.
  const Bytes second = rawpeer::encode_frame(type::request, 0, 1, kEcho, from_hex("0405"));
  ASSERT_TRUE(p.write_bytes(std::span<const std::uint8_t>(second).first(4)));
  std::this_thread::sleep_for(Millis(20));
  ASSERT_TRUE(p.write_bytes(std::span<const std::uint8_t>(second).subspan(4)));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  EXPECT_EQ(f.hex(), rawpeer::to_hex(rawpeer::encode_frame(type::response, 0, 1, kEcho, from_hex("0405"))));
}

TEST_P(BadInput, NetpipeUnaryFailureIsAnErrorWithTheText) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, 0, 0, kFail, from_hex("010203")));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  // Compatible mode: no STATUS flag, text "NAME: message" (protocol.md 10 and 16.1).
  expect_frame(f, type::error, 0, 0, kFail, "INTERNAL: boom");
}

TEST_P(BadInput, NetpipeServerStreaming) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming | flag::requires_ack, 0, kSplit, "xyz"));
  for (std::string_view m : {"x", "y", "z"}) {
    RawFrame f;
    ASSERT_NO_FATAL_FAILURE(read_one(p, f));
    expect_frame(f, type::stream_data, flag::streaming, 0, kSplit, m);
  }
  RawFrame end;
  ASSERT_NO_FATAL_FAILURE(read_one(p, end));
  expect_frame(end, type::stream_end, 0, 0, kSplit, "");
  echo_call(p, 1);
}

TEST_P(BadInput, NetpipeClientStreamingOpenedByStreamData) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  // Every chunk names the method; the last carries Final; no StreamEnd; no Request.
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 0, kConcat, "ab"));
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 0, kConcat, "cd"));
  EXPECT_TRUE(p.silent_for(Millis(150))) << "the callee answers only after Final";
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming | flag::final, 0, kConcat, "ef"));
  RawFrame reply;
  ASSERT_NO_FATAL_FAILURE(read_one(p, reply));
  expect_frame(reply, type::stream_data, flag::streaming, 0, kConcat, "abcdef");
  RawFrame end;
  ASSERT_NO_FATAL_FAILURE(read_one(p, end));
  expect_frame(end, type::stream_end, 0, 0, kConcat, "");

  // A one-chunk client stream.
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming | flag::final, 1, kConcat, "solo"));
  ASSERT_NO_FATAL_FAILURE(read_one(p, reply));
  expect_frame(reply, type::stream_data, flag::streaming, 1, kConcat, "solo");
  ASSERT_NO_FATAL_FAILURE(read_one(p, end));
  expect_frame(end, type::stream_end, 0, 1, kConcat, "");
  echo_call(p, 2);
}

TEST_P(BadInput, FinalThenStreamEndIsAccepted) {
  // protocol.md 7.2: netpipe may send Final then StreamEnd; the StreamEnd is accepted as is.
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 0, kConcat, "a"));
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming | flag::final, 0, kConcat, "bc"));
  ASSERT_TRUE(p.write_frame(type::stream_end, 0, 0, 0, ""));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_data, flag::streaming, 0, kConcat, "abc");
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_end, 0, 0, kConcat, "");
  EXPECT_TRUE(p.silent_for(kQuiet)) << "nothing more for the call";
  echo_call(p, 1);
}

TEST_P(BadInput, StreamDataAfterFinalIsIgnoredAndCounted) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 0, kSink, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::sink_started, 1));
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming | flag::final, 0, 0, "last"));
  echo_call(p, 1);
  const std::uint64_t before = server_->server().stats().frames_ignored;
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 0, 0, "after the end"));
  echo_call(p, 2);
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 1);
  EXPECT_EQ(probe().get(&Probe::sink_cancelled), 0);
}

TEST_P(BadInput, NetpipeBidi) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 0, kBidi, ""));
  for (std::string_view m : {"one", "two", "three"}) {
    ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 0, 0, m));  // netpipe: method 0
    RawFrame f;
    ASSERT_NO_FATAL_FAILURE(read_one(p, f));
    expect_frame(f, type::stream_data, flag::streaming, 0, kBidi, m);
  }
  ASSERT_TRUE(p.write_frame(type::stream_end, 0, 0, 0, ""));
  RawFrame end;
  ASSERT_NO_FATAL_FAILURE(read_one(p, end));
  expect_frame(end, type::stream_end, 0, 0, kBidi, "");
  EXPECT_EQ(probe().get(&Probe::bidi_cancelled), 0);
  echo_call(p, 1);
}

TEST_P(BadInput, CancelOfAnOpenUnaryCall) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, 0, 3, kHang, "wait"));
  ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1)) << "handler never ran";
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 3, 0, ""));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 3, kHang);
  EXPECT_TRUE(f.text().starts_with("CANCELLED")) << f.text();
  EXPECT_TRUE(probe().wait_for(&Probe::hang_cancelled, 1)) << "the handler did not observe the cancellation";
  echo_call(p, 4);
}

TEST_P(BadInput, CancelOfAnOpenBidiCall) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 4, kBidi, ""));
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 4, 0, "m"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_data, flag::streaming, 4, kBidi, "m");
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 4, 0, ""));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  // A call opened by a streaming Request fails with StreamError in compatible mode (7.1).
  expect_frame(f, type::stream_error, 0, 4, kBidi);
  EXPECT_TRUE(f.text().starts_with("CANCELLED")) << f.text();
  EXPECT_TRUE(probe().wait_for(&Probe::bidi_cancelled, 1)) << "the handler did not observe the cancellation";
  {
    std::unique_lock lk(probe().mu);
    ASSERT_TRUE(probe().cv.wait_for(lk, kWait, [&] { return !probe().bidi_read_failures.empty(); }));
    EXPECT_EQ(probe().bidi_read_failures.front(), StatusCode::cancelled);
  }
  // Nothing more for the cancelled call (the handler's later output is discarded).
  EXPECT_TRUE(p.silent_for(kQuiet));
  echo_call(p, 5);
}

// ---------------------------------------------------------------------------------------------
// call-level bad input: the connection stays up

TEST_P(BadInput, UnknownMethodIsUnimplementedAndTheConnectionStays) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, 0, 7, 42, ""));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 7, 42);
  EXPECT_NE(f.text().find("UNIMPLEMENTED"), std::string::npos) << f.text();
  EXPECT_NE(f.text().find("42"), std::string::npos) << f.text();
  // docs/protocol.md 16.4, byte for byte.
  EXPECT_EQ(f.hex(), rawpeer::to_hex(from_hex("00000040 02 02 0000 00000007 0000002a 00000030 "
                                              "554e494d504c454d454e5445443a206e6f206d6574686f642077697468206964 "
                                              "20343220283078303030303030326129")));
  echo_call(p, 8);
}

TEST_P(BadInput, UnknownMethodOnAStreamingRequestIsStreamError) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming | flag::requires_ack, 0, 42, "x"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, 0, 0, 42);
  EXPECT_NE(f.text().find("UNIMPLEMENTED"), std::string::npos) << f.text();
  EXPECT_NE(f.text().find("42"), std::string::npos) << f.text();
  // The bidi opener too.
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 1, 0x15CBDF15, ""));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, 0, 1, 0x15CBDF15);
  EXPECT_NE(f.text().find("UNIMPLEMENTED"), std::string::npos) << f.text();
  EXPECT_NE(f.text().find("365682453"), std::string::npos) << f.text();
  echo_call(p, 2);
}

TEST_P(BadInput, FramesForCallsThatDoNotExistAreIgnoredAndCounted) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  echo_call(p, 0);  // the connection is in compatible mode now
  const std::uint64_t before = server_->server().stats().frames_ignored;
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 50, 0, ""));
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 51, 0, "orphan"));
  ASSERT_TRUE(p.write_frame(type::stream_end, 0, 52, 0, ""));
  EXPECT_TRUE(p.silent_for(kQuiet)) << "nothing is answered";
  echo_call(p, 1);  // the connection is still up
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 3);
}

TEST_P(BadInput, ReusedRequestIdIsRefusedAndTheOpenCallIsUntouched) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, 0, 5, kHang, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1));
  ASSERT_TRUE(p.write_frame(type::request, 0, 5, kEcho, "dup"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 5, kEcho);
  EXPECT_TRUE(f.text().starts_with("FAILED_PRECONDITION")) << f.text();
  EXPECT_NE(f.text().find('5'), std::string::npos) << f.text();
  EXPECT_TRUE(p.silent_for(kQuiet)) << "the duplicate must not run";
  EXPECT_EQ(probe().get(&Probe::hang_cancelled), 0);
  // The first call is still open: a Cancel reaches it.
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 5, 0, ""));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 5, kHang);
  EXPECT_TRUE(f.text().starts_with("CANCELLED")) << f.text();
  EXPECT_TRUE(probe().wait_for(&Probe::hang_cancelled, 1));
  echo_call(p, 6);
}

TEST_P(BadInput, PipelinedRequestsInOneWriteAreAllAnswered) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  Bytes all;
  constexpr std::uint32_t kCount = 200;
  for (std::uint32_t i = 0; i < kCount; ++i) {
    const Bytes one = rawpeer::encode_frame(type::request, 0, i, kEcho, rawpeer::to_bytes("m" + std::to_string(i)));
    all.insert(all.end(), one.begin(), one.end());
  }
  ASSERT_TRUE(p.write_bytes(all));
  std::vector<bool> seen(kCount, false);
  for (std::uint32_t n = 0; n < kCount; ++n) {
    RawFrame f;
    ASSERT_NO_FATAL_FAILURE(read_one(p, f));
    ASSERT_EQ(int{f.type}, int{type::response}) << f.hex();
    ASSERT_LT(f.request_id, kCount);
    EXPECT_FALSE(seen[f.request_id]) << "two answers for " << f.request_id;
    seen[f.request_id] = true;
    EXPECT_EQ(f.text(), "m" + std::to_string(f.request_id));
  }
  EXPECT_TRUE(p.silent_for(Millis(50)));
}

TEST_P(BadInput, RequestDribbledOneByteAtATime) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_pieces(from_hex(kNetpipeRequest), 1, Millis(2)));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  EXPECT_EQ(f.hex(), rawpeer::to_hex(from_hex(kNetpipeResponse)));
}

TEST_P(BadInput, KindMismatchIsUnimplemented) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  // Streaming flag on a unary method: the opener was streaming, so StreamError.
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 0, kEcho, ""));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, 0, 0, kEcho);
  EXPECT_TRUE(f.text().starts_with("UNIMPLEMENTED: ")) << f.text();
  // No Streaming flag on a server-streaming method: Error.
  ASSERT_TRUE(p.write_frame(type::request, 0, 1, kSplit, "abc"));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 1, kSplit);
  EXPECT_TRUE(f.text().starts_with("UNIMPLEMENTED: ")) << f.text();
  echo_call(p, 2);
}

TEST_P(BadInput, NetpipeClientStreamToAnUnknownMethodIsStreamError) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 0, 42, "a"));
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming | flag::final, 0, 42, "b"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, 0, 0, 42);
  EXPECT_TRUE(f.text().starts_with("UNIMPLEMENTED: ")) << f.text();
  EXPECT_NE(f.text().find("42"), std::string::npos) << f.text();
  echo_call(p, 1);
}

TEST_P(BadInput, NetpipeClientStreamToANonClientStreamingMethodIsUnimplemented) {
  // protocol.md 15: "a netpipe client stream names a method that is not client-streaming:
  // UNIMPLEMENTED", sent as StreamError (7.1).
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming | flag::final, 0, kEcho, "a"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, 0, 0, kEcho);
  EXPECT_TRUE(f.text().starts_with("UNIMPLEMENTED: ")) << f.text();
  echo_call(p, 1);
}

TEST_P(BadInput, CompressedRequestIsUnimplemented) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, flag::compressed, 0, kEcho, "zz"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 0, kEcho, "UNIMPLEMENTED: compressed payloads are not supported");
  echo_call(p, 1);
}

TEST_P(BadInput, NotificationsAreNeverAnswered) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  echo_call(p, 0);
  const std::uint64_t before = server_->server().stats().frames_ignored;
  ASSERT_TRUE(p.write_frame(type::notification, 0, 1, kEcho, "one-way"));
  ASSERT_TRUE(p.write_frame(type::notification, 0, 2, 42, "nobody"));     // unknown: dropped, counted
  ASSERT_TRUE(p.write_frame(type::notification, 0, 3, kHang, "forever"));  // runs; nothing to answer
  EXPECT_TRUE(p.silent_for(kQuiet));
  echo_call(p, 4);
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 1);
}

TEST_P(BadInput, StrayRepliesAndFullModeTypesAreIgnoredInCompatibleMode) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  echo_call(p, 0);
  const std::uint64_t before = server_->server().stats().frames_ignored;
  // Replies to calls this side never opened.
  ASSERT_TRUE(p.write_frame(type::response, 0, 90, kEcho, "r"));
  ASSERT_TRUE(p.write_frame(type::error, 0, 91, kEcho, "e"));
  ASSERT_TRUE(p.write_frame(type::stream_error, 0, 92, kEcho, "se"));
  // Unassigned and reserved types.
  ASSERT_TRUE(p.write_frame(9, 0, 0, 0, ""));
  ASSERT_TRUE(p.write_frame(200, 0, 0, 0, "x"));
  // Full-mode types on a compatible connection: no PONG, no closing on GOAWAY, no handshake.
  ASSERT_TRUE(p.write_frame(type::ping, 0, 0, 0, from_hex("0102030405060708")));
  ASSERT_TRUE(p.write_frame(type::pong, 0, 0, 0, from_hex("0102030405060708")));
  ASSERT_TRUE(p.write_frame(type::credit, 0, 0, 0, from_hex("00000010")));
  ASSERT_TRUE(p.write_frame(type::goaway, flag::status, 0, 0, from_hex("08 78")));
  ASSERT_TRUE(p.write_frame(type::hello, 0, 0, 0, rawpeer::hello_payload()));
  ASSERT_TRUE(p.write_frame(type::hello_ack, 0, 0, 0, rawpeer::hello_payload()));
  EXPECT_TRUE(p.silent_for(kQuiet)) << "nothing is answered";
  echo_call(p, 1);
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 11);
}

// ---------------------------------------------------------------------------------------------
// connection-level bad input: that connection closes, nothing else is disturbed

TEST_P(BadInput, OversizedFrameClosesOnlyThatConnection) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  RawPeer bad = connect();
  ASSERT_TRUE(bad.valid());
  ASSERT_TRUE(bad.write_bytes(from_hex("40000000")));  // 1 GiB, against a 1 KiB limit
  EXPECT_TRUE(bad.closed_within(kWait)) << "connection left open";
  EXPECT_TRUE(bad.buffered().empty()) << "compatible mode sends nothing before closing";
  echo_call(good, 1);
  RawPeer fresh = connect();
  ASSERT_TRUE(fresh.valid());
  echo_call(fresh, 0);
}

TEST_P(BadInput, TruncatedFrameThenCloseLeavesTheServerRunning) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  {
    RawPeer bad = connect();
    ASSERT_TRUE(bad.valid());
    // Claims 100 bytes of body, sends 26 of them, then goes away.
    const Bytes frame = rawpeer::encode_frame(type::request, 0, 0, kEcho, Bytes(84, 0xAB));
    ASSERT_EQ(frame.size(), 104u);
    ASSERT_TRUE(bad.write_bytes(std::span<const std::uint8_t>(frame).first(30)));
    std::this_thread::sleep_for(Millis(20));
  }
  echo_call(good, 1);
  RawPeer fresh = connect();
  ASSERT_TRUE(fresh.valid());
  echo_call(fresh, 0);
}

TEST_P(BadInput, GarbageClosesTheConnection) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  std::mt19937 rng(12345);
  Bytes garbage(64);
  for (auto& b : garbage) b = static_cast<std::uint8_t>(rng());
  // A plausible length (the whole 64 bytes) so that the version byte is what gets it refused.
  garbage[0] = 0;
  garbage[1] = 0;
  garbage[2] = 0;
  garbage[3] = 60;
  garbage[4] = 0x01;  // netpipe V1, or anything but 2
  RawPeer bad = connect();
  ASSERT_TRUE(bad.valid());
  ASSERT_TRUE(bad.write_bytes(garbage));
  EXPECT_TRUE(bad.closed_within(kWait)) << "connection left open";
  EXPECT_TRUE(bad.buffered().empty());
  echo_call(good, 1);
}

TEST_P(BadInput, MalformedLengthsCloseTheConnection) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  const Bytes too_short = from_hex("00000005 02 00 0000 00");
  const Bytes mismatch = from_hex("00000013 02 00 0000 00000000 00000001 00000009 010203");
  for (const Bytes* bad_bytes : {&too_short, &mismatch}) {
    SCOPED_TRACE(rawpeer::to_hex(*bad_bytes));
    RawPeer bad = connect();
    ASSERT_TRUE(bad.valid());
    ASSERT_TRUE(bad.write_bytes(*bad_bytes));
    EXPECT_TRUE(bad.closed_within(kWait)) << "connection left open";
    EXPECT_TRUE(bad.buffered().empty());
  }
  echo_call(good, 1);
}

TEST_P(BadInput, FirstFrameThatIsNotACallClosesTheConnection) {
  // protocol.md 5.3: a first frame other than HELLO / Request / Notification / StreamData /
  // Cancel is a protocol error: close, nothing sent.
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  RawPeer bad = connect();
  ASSERT_TRUE(bad.valid());
  ASSERT_TRUE(bad.write_bytes(from_hex(kNetpipeResponse)));
  EXPECT_TRUE(bad.closed_within(kWait)) << "connection left open";
  EXPECT_TRUE(bad.buffered().empty());
  echo_call(good, 1);
}

TEST_P(BadInput, PeerVanishingMidFrameCancelsItsPendingHandler) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  {
    RawPeer p = connect();
    ASSERT_TRUE(p.valid());
    ASSERT_TRUE(p.write_frame(type::request, 0, 0, kHang, "pending"));
    ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1));
    const Bytes next = rawpeer::encode_frame(type::request, 0, 1, kEcho, Bytes(40, 0x11));
    ASSERT_TRUE(p.write_bytes(std::span<const std::uint8_t>(next).first(10)));
  }  // closed in the middle of a frame
  EXPECT_TRUE(probe().wait_for(&Probe::hang_cancelled, 1)) << "the pending handler never saw the peer go";
  echo_call(good, 1);
}

// ---------------------------------------------------------------------------------------------
// full mode: the connection-level faults are explained with GOAWAY first

// Sends a HELLO as a flatpipe client would and checks the HELLO_ACK.
void full_handshake(RawPeer& p) {
  ASSERT_TRUE(p.write_frame(type::hello, 0, 0, 0, rawpeer::hello_payload(0x3f, 1u << 20, 64, 0)));
  RawFrame ack;
  ASSERT_NO_FATAL_FAILURE(read_one(p, ack));
  expect_frame(ack, type::hello_ack, 0, 0, 0);
  ASSERT_GE(ack.payload.size(), 24u);
  EXPECT_EQ(rawpeer::to_hex(std::span<const std::uint8_t>(ack.payload).first(6)), "465049500100");
  EXPECT_EQ(rawpeer::be32(ack.payload.data() + 12), kMaxFrame) << "HELLO_ACK announces the server's limit";
  EXPECT_GE(rawpeer::be32(ack.payload.data() + 16), 1u);
}

void expect_goaway_then_close(RawPeer& p, std::uint8_t code) {
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::goaway, flag::status, 0, 0);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, int{code}) << f.text();
  EXPECT_TRUE(p.closed_within(kWait)) << "connection left open after GOAWAY";
}

TEST_P(BadInput, FullModeOversizedFrameGetsGoawayBeforeClose) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  ASSERT_TRUE(p.write_bytes(from_hex("40000000")));
  expect_goaway_then_close(p, static_cast<std::uint8_t>(StatusCode::resource_exhausted));
  echo_call(good, 1);
}

TEST_P(BadInput, FullModeBadVersionGetsGoawayInvalidArgument) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  Bytes bad = rawpeer::encode_frame(type::request, 0, 0, kEcho, from_hex("010203"));
  bad[4] = 1;
  ASSERT_TRUE(p.write_bytes(bad));
  expect_goaway_then_close(p, static_cast<std::uint8_t>(StatusCode::invalid_argument));
}

TEST_P(BadInput, InvalidHelloMajorGetsGoawayFailedPrecondition) {
  // protocol.md 5.3: an invalid HELLO is answered GOAWAY (FAILED_PRECONDITION for major != 1).
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::hello, 0, 0, 0, rawpeer::hello_payload(0x3f, 1u << 20, 64, 0, 2, 0)));
  expect_goaway_then_close(p, static_cast<std::uint8_t>(StatusCode::failed_precondition));
}

TEST_P(BadInput, InvalidHelloGetsGoawayInvalidArgument) {
  Bytes bad_magic = rawpeer::hello_payload();
  bad_magic[0] = 'X';
  Bytes short_hello = rawpeer::hello_payload();
  short_hello.resize(20);
  const Bytes small_frame = rawpeer::hello_payload(0x3f, 15, 64, 0);
  const Bytes no_credit = rawpeer::hello_payload(0x3f, 1u << 20, 0, 0);
  const std::initializer_list<const Bytes*> hellos = {&bad_magic, &short_hello, &small_frame, &no_credit};
  for (const Bytes* hello : hellos) {
    SCOPED_TRACE(rawpeer::to_hex(*hello));
    RawPeer p = connect();
    ASSERT_TRUE(p.valid());
    ASSERT_TRUE(p.write_frame(type::hello, 0, 0, 0, *hello));
    expect_goaway_then_close(p, static_cast<std::uint8_t>(StatusCode::invalid_argument));
  }
}

TEST_P(BadInput, FullModeFatalGoawayFromThePeerClosesAndCancels) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  ASSERT_TRUE(p.write_frame(type::request, 0, 1, kHang, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1));
  ASSERT_TRUE(p.write_frame(type::goaway, flag::status, 0, 0, from_hex("0d 627965")));  // INTERNAL "bye"
  EXPECT_TRUE(p.closed_within(kWait)) << "connection left open after a fatal GOAWAY";
  EXPECT_TRUE(probe().wait_for(&Probe::hang_cancelled, 1)) << "the open call was not failed";
}

TEST_P(BadInput, FullModeCallLevelRejectionsCarryStatusCodes) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  RawFrame f;
  // Unknown method: Error with STATUS, code 12, the message without the name.
  ASSERT_TRUE(p.write_frame(type::request, 0, 1, 42, ""));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, flag::status, 1, 42);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, static_cast<int>(StatusCode::unimplemented));
  EXPECT_EQ(f.text().substr(1), "no method with id 42 (0x0000002a)");
  // An id in the acceptor's half.
  ASSERT_TRUE(p.write_frame(type::request, 0, 0x80000001u, kEcho, "x"));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, flag::status, 0x80000001u, kEcho);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, static_cast<int>(StatusCode::invalid_argument));
  // A malformed header block: INVALID_ARGUMENT and the handler never runs.
  ASSERT_TRUE(p.write_frame(type::request, flag::headers, 2, kHang, from_hex("00000005 0000000000 aa")));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, flag::status, 2, kHang);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, static_cast<int>(StatusCode::invalid_argument));
  // A well-formed header block: the handler gets the body after it.
  ASSERT_TRUE(p.write_frame(type::request, flag::headers, 3, kEcho,
                            from_hex("0000001b 00000000 00000000 0001 0008 74726163652d6964 00000003 616263 010203")));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::response, 0, 3, kEcho);
  EXPECT_EQ(rawpeer::to_hex(f.payload), "010203");
  EXPECT_EQ(probe().get(&Probe::hang_started), 0) << "a handler ran for a Request with a malformed header block";
  // A reused id.
  ASSERT_TRUE(p.write_frame(type::request, 0, 4, kHang, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1));
  ASSERT_TRUE(p.write_frame(type::request, 0, 4, kEcho, "dup"));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, flag::status, 4, kEcho);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, static_cast<int>(StatusCode::failed_precondition));
  EXPECT_EQ(probe().get(&Probe::hang_cancelled), 0);
  echo_call(p, 5);
}

TEST_P(BadInput, FullModeRejectionOfAStreamingRequestIsStreamError) {
  // protocol.md 7.1: in both modes a rejection before a handler runs follows the opening frame:
  // StreamError for a Request with the Streaming flag.
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming | flag::requires_ack, 1, 42, "x"));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, flag::status, 1, 42);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, static_cast<int>(StatusCode::unimplemented));
  echo_call(p, 2);
}

TEST_P(BadInput, FullModeCancelOfABidiIsStreamErrorCancelled) {
  // protocol.md 7.1 and 14: a Cancel ending follows the terminal-frame table; a bidi call ends
  // with StreamError CANCELLED, carrying the STATUS flag in full mode.
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 1, kSink, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::sink_started, 1));
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 1, 0, ""));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, flag::status, 1, kSink);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, static_cast<int>(StatusCode::cancelled));
  EXPECT_TRUE(probe().wait_for(&Probe::sink_cancelled, 1));
  echo_call(p, 2);
}

TEST_P(BadInput, FullModeStreamDataBeyondCreditGetsGoaway) {
  RawPeer good = connect();
  ASSERT_TRUE(good.valid());
  echo_call(good, 0);
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 1, kSink, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::sink_started, 1));
  // The server's initial credit (64, from its HELLO_ACK) may be used up; the handler reads none.
  for (int i = 0; i < 64; ++i) ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 1, 0, "m"));
  EXPECT_TRUE(p.silent_for(kQuiet)) << "StreamData within the credit was refused";
  ASSERT_TRUE(p.write_frame(type::stream_data, flag::streaming, 1, 0, "one too many"));
  expect_goaway_then_close(p, static_cast<std::uint8_t>(StatusCode::resource_exhausted));
  EXPECT_TRUE(probe().wait_for(&Probe::sink_cancelled, 1)) << "the handler never saw the connection go";
  echo_call(good, 1);
}

TEST_P(BadInput, FullModeStrayControlFramesAreIgnored) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  echo_call(p, 0);
  const std::uint64_t before = server_->server().stats().frames_ignored;
  ASSERT_TRUE(p.write_frame(type::credit, 0, 77, 0, from_hex("00000010")));    // unknown call
  ASSERT_TRUE(p.write_frame(type::goaway, flag::status, 0, 0, ""));             // empty GOAWAY
  ASSERT_TRUE(p.write_frame(type::hello, 0, 0, 0, rawpeer::hello_payload()));  // second HELLO
  ASSERT_TRUE(p.write_frame(30, 0, 0, 0, "x"));                                 // reserved type
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 78, 0, ""));
  ASSERT_TRUE(p.write_frame(type::stream_end, 0, 79, 0, ""));
  EXPECT_TRUE(p.silent_for(kQuiet)) << "nothing is answered";
  echo_call(p, 1);
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 6);
  // A CREDIT whose payload is not 4 bytes, for an open call.
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming, 2, kSink, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::sink_started, 1));
  ASSERT_TRUE(p.write_frame(type::credit, 0, 2, 0, from_hex("000010")));
  ASSERT_TRUE(p.write_frame(type::credit, 0, 2, 0, from_hex("0000001000")));
  echo_call(p, 3);
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 8);
  // A PING is answered at once with its bytes.
  ASSERT_TRUE(p.write_frame(type::ping, 0, 0, 0, from_hex("0102030405060708")));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::pong, 0, 0, 0);
  EXPECT_EQ(rawpeer::to_hex(f.payload), "0102030405060708");
}

TEST_P(BadInput, FullModeUnsolicitedPongIsCounted) {
  // protocol.md 15: "unknown frame type, second HELLO, unsolicited PONG ...: ignored, counted".
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  echo_call(p, 0);
  const std::uint64_t before = server_->server().stats().frames_ignored;
  ASSERT_TRUE(p.write_frame(type::pong, 0, 0, 0, from_hex("0102030405060708")));
  echo_call(p, 1);
  EXPECT_EQ(server_->server().stats().frames_ignored, before + 1);
}

TEST_P(BadInput, FullModeDrainingServerSendsGoawayOkAndRefusesNewCalls) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_NO_FATAL_FAILURE(full_handshake(p));
  ASSERT_TRUE(p.write_frame(type::request, 0, 1, kHang, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1));
  std::thread stopper([this] { server_->server().shutdown(std::chrono::milliseconds(2000)); });
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::goaway, flag::status, 0, 0);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(int{f.payload[0]}, 0) << "graceful shutdown is GOAWAY OK";
  ASSERT_TRUE(p.write_frame(type::request, 0, 2, kEcho, "late"));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, flag::status, 2, kEcho);
  ASSERT_FALSE(f.payload.empty());
  EXPECT_EQ(static_cast<int>(f.payload[0]), static_cast<int>(StatusCode::unavailable));
  EXPECT_EQ(probe().get(&Probe::hang_cancelled), 0) << "open calls run on while draining";
  // The open call ends (here by Cancel); then the server closes the drained connection.
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 1, 0, ""));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, flag::status, 1, kHang);
  EXPECT_TRUE(p.closed_within(kWait));
  stopper.join();
}

TEST_P(BadInput, CompatibleModeDrainingServerAnswersUnavailable) {
  RawPeer p = connect();
  ASSERT_TRUE(p.valid());
  ASSERT_TRUE(p.write_frame(type::request, 0, 0, kHang, ""));
  ASSERT_TRUE(probe().wait_for(&Probe::hang_started, 1));
  std::thread stopper([this] { server_->server().shutdown(std::chrono::milliseconds(2000)); });
  // Nothing announces the drain to a netpipe peer; poll with unary calls until one is refused.
  RawFrame f;
  std::uint32_t id = 1;
  const auto until = std::chrono::steady_clock::now() + kWait;
  for (;; ++id) {
    ASSERT_TRUE(p.write_frame(type::request, 0, id, kEcho, "x"));
    ASSERT_NO_FATAL_FAILURE(read_one(p, f));
    ASSERT_NE(int{f.type}, int{type::goaway}) << "GOAWAY sent to a netpipe peer";
    if (f.type == type::error || std::chrono::steady_clock::now() > until) break;
    std::this_thread::sleep_for(Millis(10));
  }
  expect_frame(f, type::error, 0, id, kEcho, "UNAVAILABLE: server is shutting down");
  // A streaming opener gets StreamError.
  ASSERT_TRUE(p.write_frame(type::request, flag::streaming | flag::requires_ack, id + 1, kSplit, "ab"));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::stream_error, 0, id + 1, kSplit, "UNAVAILABLE: server is shutting down");
  ASSERT_TRUE(p.write_frame(type::cancel, 0, 0, 0, ""));
  ASSERT_NO_FATAL_FAILURE(read_one(p, f));
  expect_frame(f, type::error, 0, 0, kHang);
  EXPECT_TRUE(p.closed_within(kWait));
  stopper.join();
}

INSTANTIATE_TEST_SUITE_P(Transports, BadInput, ::testing::Values("tcp", "unix"), transport_name);

// ---------------------------------------------------------------------------------------------
// a flatpipe Client against a raw socket playing a netpipe server

class NetpipeServerPeer : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const bool ok = GetParam() == "tcp" ? raw_.listen_tcp() : raw_.listen_unix(rawpeer::unique_socket_path("np"));
    ASSERT_TRUE(ok) << "cannot listen";
  }

  // Connects without blocking; the outcome arrives in the future.
  std::future<Result<flatpipe::Client>> connect(const std::string& uri, flatpipe::ClientOptions options = {}) {
    auto promise = std::make_shared<std::promise<Result<flatpipe::Client>>>();
    auto fut = promise->get_future();
    flatpipe::Client::async_connect(runtime_, uri, std::move(options),
                                    [promise](Result<flatpipe::Client> r) { promise->set_value(std::move(r)); });
    return fut;
  }

  static std::future<Result<Buffer>> call(const flatpipe::Client& c, std::uint32_t method, Buffer request) {
    auto promise = std::make_shared<std::promise<Result<Buffer>>>();
    auto fut = promise->get_future();
    c.async_call(method, std::move(request), flatpipe::CallOptions{},
                 [promise](Result<Buffer> r) { promise->set_value(std::move(r)); });
    return fut;
  }

  flatpipe::Runtime runtime_;
  RawServer raw_;
};

template <class T>
bool ready_within(std::future<T>& f, Millis wait) {
  return f.wait_for(wait) == std::future_status::ready;
}

TEST_P(NetpipeServerPeer, NetpipeModeSendsAPlainRequestFirst) {
  auto connecting = connect(raw_.uri() + "?mode=netpipe");
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid()) << "the client never connected";
  ASSERT_TRUE(ready_within(connecting, kWait)) << "connect did not complete";
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  EXPECT_TRUE(server.silent_for(kQuiet)) << "a netpipe client sends nothing before its first Request";

  auto answer = call(*client, 1, Buffer::copy(std::span<const std::uint8_t>(from_hex("010203"))));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  EXPECT_EQ(int{f.type}, int{type::request});
  EXPECT_EQ(f.hex(), rawpeer::to_hex(from_hex(kNetpipeRequest)));
  ASSERT_TRUE(server.write_bytes(from_hex(kNetpipeResponse)));
  ASSERT_TRUE(ready_within(answer, kWait)) << "no answer";
  Result<Buffer> r = answer.get();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(rawpeer::to_hex(r->span()), "010203");

  // The next call counts on from 1; netpipe's error text arrives as UNKNOWN.
  auto failing = call(*client, 3, Buffer::copy(std::string_view("x")));
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  expect_frame(f, type::request, 0, 1, 3, "x");
  ASSERT_TRUE(server.write_frame(type::error, 0, 1, 3, "boom"));
  ASSERT_TRUE(ready_within(failing, kWait)) << "no answer";
  Result<Buffer> e = failing.get();
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.code(), StatusCode::unknown);
  EXPECT_NE(e.status().message().find("boom"), std::string::npos) << e.status().to_string();
}

TEST_P(NetpipeServerPeer, NetpipeModeAcceptsTheCapturedErrorFrame) {
  auto connecting = connect(raw_.uri() + "?mode=netpipe");
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto failing = call(*client, 3, Buffer::copy(std::span<const std::uint8_t>(from_hex("010203"))));
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  expect_frame(f, type::request, 0, 0, 3);
  ASSERT_TRUE(server.write_bytes(from_hex(kNetpipeError)));
  ASSERT_TRUE(ready_within(failing, kWait));
  Result<Buffer> e = failing.get();
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.code(), StatusCode::unknown);
  EXPECT_EQ(e.status().message(), "boom");
}

TEST_P(NetpipeServerPeer, FullModeClientFailsFastWhenTheHelloIsAnsweredWithError) {
  flatpipe::ClientOptions options;
  options.session.handshake_timeout = Millis(4000);  // the failure must not come from this timer
  auto connecting = connect(raw_.uri(), options);
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  RawFrame hello;
  ASSERT_NO_FATAL_FAILURE(read_one(server, hello));
  expect_frame(hello, type::hello, 0, 0, 0);
  ASSERT_GE(hello.payload.size(), 24u);
  EXPECT_EQ(rawpeer::to_hex(std::span<const std::uint8_t>(hello.payload).first(5)), "4650495001");
  // What a netpipe RemoteRouter answers (protocol.md 5.4).
  ASSERT_TRUE(server.write_frame(type::error, 0, 0, 0, "No handler for method_id: 0"));
  ASSERT_TRUE(ready_within(connecting, kWait)) << "connect hangs instead of failing";
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.code(), StatusCode::unavailable) << client.status().to_string();
  EXPECT_TRUE(server.closed_within(kWait)) << "the client must close the connection";
}

TEST_P(NetpipeServerPeer, NetpipeModeStreamsAreSentNetpipeStyle) {
  auto connecting = connect(raw_.uri() + "?mode=netpipe");
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  // Notifications are never sent to netpipe peers.
  EXPECT_FALSE(client->notify(1, Buffer::copy(std::string_view("n"))).ok());

  // Client streaming: no Request; every chunk names the method; the last carries Final.
  {
    Result<flatpipe::ClientStream> cs = client->open(kConcat, CallKind::client_stream);
    ASSERT_TRUE(cs.ok()) << cs.status().to_string();
    ASSERT_TRUE(cs->write(Buffer::copy(std::string_view("ab"))).ok());
    ASSERT_TRUE(cs->write(Buffer::copy(std::string_view("cd"))).ok());
    cs->write_done();
    RawFrame f;
    ASSERT_NO_FATAL_FAILURE(read_one(server, f));
    expect_frame(f, type::stream_data, flag::streaming, 0, kConcat, "ab");
    ASSERT_NO_FATAL_FAILURE(read_one(server, f));
    expect_frame(f, type::stream_data, flag::streaming | flag::final, 0, kConcat, "cd");
    auto done = std::make_shared<std::promise<Result<Buffer>>>();
    auto finished = done->get_future();
    cs->async_finish([done](Result<Buffer> r) { done->set_value(std::move(r)); });
    // netpipe's answer: the reply as StreamData, then StreamEnd.
    ASSERT_TRUE(server.write_frame(type::stream_data, flag::streaming, 0, kConcat, "abcd"));
    ASSERT_TRUE(server.write_frame(type::stream_end, 0, 0, kConcat, ""));
    ASSERT_TRUE(ready_within(finished, kWait));
    Result<Buffer> r = finished.get();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->to_string(), "abcd");
  }
  // Bidi: Request(0x0002, empty), StreamData and StreamEnd with method 0.
  {
    Result<flatpipe::ClientStream> bs = client->open(kBidi, CallKind::bidi);
    ASSERT_TRUE(bs.ok()) << bs.status().to_string();
    RawFrame f;
    ASSERT_NO_FATAL_FAILURE(read_one(server, f));
    expect_frame(f, type::request, flag::streaming, 1, kBidi, "");
    ASSERT_TRUE(bs->write(Buffer::copy(std::string_view("hi"))).ok());
    ASSERT_NO_FATAL_FAILURE(read_one(server, f));
    expect_frame(f, type::stream_data, flag::streaming, 1, 0, "hi");
    bs->write_done();
    ASSERT_NO_FATAL_FAILURE(read_one(server, f));
    expect_frame(f, type::stream_end, 0, 1, 0, "");
    ASSERT_TRUE(server.write_frame(type::stream_end, 0, 1, kBidi, ""));
    auto done = std::make_shared<std::promise<Result<Buffer>>>();
    auto finished = done->get_future();
    bs->async_finish([done](Result<Buffer> r) { done->set_value(std::move(r)); });
    ASSERT_TRUE(ready_within(finished, kWait));
    EXPECT_TRUE(finished.get().ok());
  }
}

TEST_P(NetpipeServerPeer, StreamingCallAnsweredWithAUnaryResponseIsUnimplemented) {
  // protocol.md 7.1: a netpipe server runs every method as unary.
  auto connecting = connect(raw_.uri() + "?mode=netpipe");
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  Result<flatpipe::ClientStream> ss =
      client->open(kSplit, CallKind::server_stream, Buffer::copy(std::string_view("abc")));
  ASSERT_TRUE(ss.ok()) << ss.status().to_string();
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  expect_frame(f, type::request, flag::streaming | flag::requires_ack, 0, kSplit, "abc");
  ASSERT_TRUE(server.write_frame(type::response, 0, 0, kSplit, "abc"));
  auto done = std::make_shared<std::promise<Result<Buffer>>>();
  auto finished = done->get_future();
  ss->async_finish([done](Result<Buffer> r) { done->set_value(std::move(r)); });
  ASSERT_TRUE(ready_within(finished, kWait));
  Result<Buffer> r = finished.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), StatusCode::unimplemented) << r.status().to_string();
}

TEST_P(NetpipeServerPeer, NetpipeModeTimeoutSendsNothingAndDropsTheLateAnswer) {
  // protocol.md 8: in compatible mode the caller's deadline is not transmitted and no Cancel is
  // sent when it expires (some netpipe servers run a handler for a Cancel).
  auto connecting = connect(raw_.uri() + "?mode=netpipe");
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  auto promise = std::make_shared<std::promise<Result<Buffer>>>();
  auto expired = promise->get_future();
  client->async_call(kEcho, Buffer::copy(std::string_view("slow")),
                     flatpipe::CallOptions::with_timeout(std::chrono::milliseconds(100)),
                     [promise](Result<Buffer> r) { promise->set_value(std::move(r)); });
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  expect_frame(f, type::request, 0, 0, kEcho, "slow");  // no header block, no flags
  ASSERT_TRUE(ready_within(expired, kWait));
  Result<Buffer> r = expired.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), StatusCode::deadline_exceeded);
  EXPECT_TRUE(server.silent_for(kQuiet)) << "a Cancel (or anything) was sent after the deadline";
  // The late answer is dropped; the connection still works.
  ASSERT_TRUE(server.write_frame(type::response, 0, 0, kEcho, "slow"));
  auto next = call(*client, kEcho, Buffer::copy(std::string_view("next")));
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  expect_frame(f, type::request, 0, 1, kEcho, "next");
  ASSERT_TRUE(server.write_frame(type::response, 0, 1, kEcho, "next"));
  ASSERT_TRUE(ready_within(next, kWait));
  Result<Buffer> n = next.get();
  ASSERT_TRUE(n.ok()) << n.status().to_string();
  EXPECT_EQ(n->to_string(), "next");
}

TEST_P(NetpipeServerPeer, FullModeClientReportsTheGoawayReason) {
  // protocol.md 5.4: GOAWAY in answer to HELLO: connect fails UNAVAILABLE with the peer's
  // "NAME: reason".
  auto connecting = connect(raw_.uri());
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  RawFrame hello;
  ASSERT_NO_FATAL_FAILURE(read_one(server, hello));
  expect_frame(hello, type::hello, 0, 0, 0);
  Bytes payload = {static_cast<std::uint8_t>(StatusCode::failed_precondition)};
  for (char c : std::string_view("unsupported major")) payload.push_back(static_cast<std::uint8_t>(c));
  ASSERT_TRUE(server.write_frame(type::goaway, flag::status, 0, 0, payload));
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.code(), StatusCode::unavailable);
  EXPECT_NE(client.status().message().find("FAILED_PRECONDITION: unsupported major"), std::string::npos)
      << client.status().to_string();
}

TEST_P(NetpipeServerPeer, FullModeClientRejectsAnInvalidHelloAck) {
  auto connecting = connect(raw_.uri());
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  RawFrame hello;
  ASSERT_NO_FATAL_FAILURE(read_one(server, hello));
  expect_frame(hello, type::hello, 0, 0, 0);
  Bytes ack = rawpeer::hello_payload();
  ack[0] = 'X';
  ASSERT_TRUE(server.write_frame(type::hello_ack, 0, 0, 0, ack));
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.code(), StatusCode::unavailable) << client.status().to_string();
  EXPECT_TRUE(server.closed_within(kWait));
}

TEST_P(NetpipeServerPeer, FullModeClientRespectsThePeersMaxFrame) {
  // protocol.md 5.1 and 15: never send a body larger than the peer's max_frame; the call fails
  // RESOURCE_EXHAUSTED and nothing is sent.
  auto connecting = connect(raw_.uri());
  RawPeer server = raw_.accept(kWait);
  ASSERT_TRUE(server.valid());
  RawFrame f;
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  expect_frame(f, type::hello, 0, 0, 0);
  ASSERT_TRUE(server.write_frame(type::hello_ack, 0, 0, 0, rawpeer::hello_payload(0x3f, 64, 64, 0)));
  ASSERT_TRUE(ready_within(connecting, kWait));
  Result<flatpipe::Client> client = connecting.get();
  ASSERT_TRUE(client.ok()) << client.status().to_string();

  auto too_big = call(*client, kEcho, Buffer::copy(std::string(49, 'x')));  // body 16 + 49 > 64
  ASSERT_TRUE(ready_within(too_big, kWait));
  Result<Buffer> r = too_big.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.code(), StatusCode::resource_exhausted) << r.status().to_string();
  EXPECT_TRUE(server.silent_for(kQuiet)) << "the oversized Request was sent anyway";

  auto fits = call(*client, kEcho, Buffer::copy(std::string(48, 'y')));  // body exactly 64
  ASSERT_NO_FATAL_FAILURE(read_one(server, f));
  EXPECT_EQ(int{f.type}, int{type::request});
  EXPECT_EQ(f.length, 64u);
  ASSERT_TRUE(server.write_frame(type::response, 0, f.request_id, kEcho, "ok"));
  ASSERT_TRUE(ready_within(fits, kWait));
  Result<Buffer> ok = fits.get();
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->to_string(), "ok");
}

INSTANTIATE_TEST_SUITE_P(Transports, NetpipeServerPeer, ::testing::Values("tcp", "unix"), transport_name);

}  // namespace

namespace {

// A Client closed right before its Runtime is destroyed: the close is queued on the I/O thread,
// and the Runtime's destructor must not drop it (the connection would stay open, its Session and
// socket leaked: Session::conn_ and StreamConnection::sink_ hold each other until the socket's
// read completes). The I/O thread is kept busy for a moment so that the destructor reliably
// starts while the close is still queued.
TEST(NetpipeRuntimeTeardown, ClientClosedJustBeforeTheRuntimeStillClosesItsConnection) {
  RawServer raw;
  ASSERT_TRUE(raw.listen_tcp());
  RawPeer server;
  std::weak_ptr<flatpipe::Session> weak;
  auto runtime = std::make_unique<flatpipe::Runtime>();
  std::promise<void> release;
  {
    Result<flatpipe::Client> client = flatpipe::Client::connect(*runtime, raw.uri() + "?mode=netpipe");
    ASSERT_TRUE(client.ok()) << client.status().to_string();
    server = raw.accept(kWait);
    ASSERT_TRUE(server.valid());
    weak = client->session();
    std::shared_future<void> released = release.get_future().share();
    asio::post(runtime->io(), [released] { released.wait_for(std::chrono::seconds(5)); });
  }  // the Client goes: its close is queued behind the busy handler
  std::thread releaser([&release] {
    std::this_thread::sleep_for(Millis(100));
    release.set_value();
  });
  runtime.reset();
  releaser.join();
  EXPECT_TRUE(server.closed_within(kWait)) << "the connection was left open";
  EXPECT_TRUE(weak.expired()) << "the Session was leaked";
}

}  // namespace
