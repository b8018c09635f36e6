// The generated, typed API (docs/compiler.md) over every transport of fixtures.hpp's table: every
// call kind in every style (blocking, callback, coroutine), errors, deadlines, cancellation, the
// UNIMPLEMENTED default, messages that fail verification, Message<T>, the object API, and
// methods named like the runtime's verbs. The schema: tests/compiler/schemas/everything.fbs.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "everything_flatpipe.hpp"
#include "support/fixtures.hpp"

namespace {

using namespace std::chrono_literals;
using fptest::kWait;
using fptest::TestParam;
using flatpipe::Message;
using flatpipe::Payload;
using flatpipe::Reply;
using flatpipe::Status;
using flatpipe::StatusCode;
namespace typed = fptest::typed;
namespace verbs = fptest::typed::verbs;
namespace geo = fptest::geo;

std::string text_of(const Message<typed::Note>& note) {
  return note->text() ? note->text()->str() : std::string();
}

typed::NoteT note(std::string text, int code = 0, std::uint32_t count = 0, std::uint32_t delay_ms = 0) {
  typed::NoteT n;
  n.text = std::move(text);
  n.code = code;
  n.count = count;
  n.delay_ms = delay_ms;
  return n;
}

// Waits on the coroutine's executor until `done()` or `limit`.
template <class Pred>
asio::awaitable<void> wait_until(Pred done, std::chrono::milliseconds limit) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < until) {
    timer.expires_after(2ms);
    std::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

struct LabState {
  std::atomic<int> echo_runs{0};
  std::atomic<int> collect_runs{0};
  std::atomic<bool> park_started{false};
  std::atomic<bool> park_saw_cancel{false};
  std::atomic<bool> chat_saw_cancel{false};
  std::atomic<bool> chat_ended{false};
  std::atomic<bool> freshest_written{false};
};

class LabImpl : public typed::Lab::Server {
 public:
  explicit LabImpl(std::shared_ptr<LabState> state) : st_(std::move(state)) {}

  // Plain unary: forwards the received message itself (zero-copy), or fails with its code.
  Reply<typed::Note> Echo(const flatpipe::ServerCall&, Message<typed::Note> request) override {
    ++st_->echo_runs;
    if (request->code() != 0) return Status(static_cast<StatusCode>(request->code()), text_of(request));
    return request;
  }

  // Coroutine unary: waits, then answers through the object API.
  asio::awaitable<Reply<typed::Note>> co_Slow(flatpipe::ServerCall call, Message<typed::Note> request) override {
    co_await wait_until([&] { return call.context().cancelled(); }, std::chrono::milliseconds(request->delay_ms()));
    if (call.context().cancelled()) co_return Status(StatusCode::cancelled, "slow: cancelled");
    auto native = request.unpack();
    native->text = "slow:" + native->text;
    co_return *native;
  }

  asio::awaitable<Reply<typed::Note>> co_Park(flatpipe::ServerCall call, Message<typed::Note>) override {
    st_->park_started = true;
    co_await wait_until([&] { return call.context().cancelled(); }, kWait);
    st_->park_saw_cancel = call.context().cancelled();
    co_return Status(StatusCode::cancelled, "park: cancelled");
  }

  asio::awaitable<Status> Countdown(flatpipe::ServerWriter<typed::Note> stream,
                                    Message<typed::Note> request) override {
    for (std::uint32_t i = 0; i < request->count(); ++i) {
      auto b = stream.builder();  // built in the connection's memory
      b.Finish(typed::CreateNote(b, b.CreateString(std::to_string(i))));
      Status w = co_await stream.async_write(std::move(b), asio::use_awaitable);
      if (!w.ok()) co_return w;
    }
    if (request->code() != 0) co_return Status(static_cast<StatusCode>(request->code()), text_of(request));
    co_return Status();
  }

  asio::awaitable<Status> Freshest(flatpipe::ServerWriter<typed::Note> stream, Message<typed::Note> request) override {
    for (std::uint32_t i = 0; i < request->count(); ++i) {
      Status w = co_await stream.async_write(note(std::to_string(i)), asio::use_awaitable);
      if (!w.ok()) co_return w;
    }
    st_->freshest_written = true;
    co_return Status();
  }

  asio::awaitable<Reply<typed::Summary>> Collect(flatpipe::ServerReader<typed::Note> stream) override {
    ++st_->collect_runs;
    typed::SummaryT summary;
    for (;;) {
      auto r = co_await stream.async_read(asio::use_awaitable);
      if (!r) co_return r.status();
      if (!*r) break;
      const Message<typed::Note>& n = **r;
      if (n->code() != 0) co_return Status(static_cast<StatusCode>(n->code()), text_of(n));
      summary.joined += (summary.count ? "+" : "") + text_of(n);
      ++summary.count;
    }
    co_return summary;
  }

  asio::awaitable<Status> Chat(flatpipe::ServerReaderWriter<typed::Note, typed::Note> stream) override {
    for (;;) {
      auto r = co_await stream.async_read(asio::use_awaitable);
      if (!r) {
        st_->chat_saw_cancel = stream.context().cancelled();
        co_return r.status();
      }
      if (!*r) break;
      Status w = co_await stream.async_write(note("chat:" + text_of(**r)), asio::use_awaitable);
      if (!w.ok()) co_return w;
    }
    st_->chat_ended = true;
    co_return Status();
  }

 private:
  std::shared_ptr<LabState> st_;
};

// Every verb-named method answers with its own name.
class VerbsImpl : public verbs::Verbs::Server {
  static Reply<typed::Note> named(const char* name) { return note(name); }

 public:
  Reply<typed::Note> Call(const flatpipe::ServerCall&, Message<typed::Note>) override { return named("Call"); }
  asio::awaitable<Status> Cancel(flatpipe::ServerWriter<typed::Note> stream, Message<typed::Note>) override {
    co_return co_await stream.async_write(note("Cancel"), asio::use_awaitable);
  }
  asio::awaitable<Reply<typed::Summary>> Stream(flatpipe::ServerReader<typed::Note> stream) override {
    typed::SummaryT s;
    for (;;) {
      auto r = co_await stream.async_read(asio::use_awaitable);
      if (!r) co_return r.status();
      if (!*r) break;
      ++s.count;
    }
    s.joined = "Stream";
    co_return s;
  }
  asio::awaitable<Status> Close(flatpipe::ServerReaderWriter<typed::Note, typed::Note> stream) override {
    co_return co_await stream.async_write(note("Close"), asio::use_awaitable);
  }
  Reply<geo::Polygon> Connect(const flatpipe::ServerCall&, Message<geo::Circle> circle) override {
    geo::PolygonT poly;
    poly.points.push_back(circle->center() ? *circle->center() : geo::Point(0.f, 0.f));
    poly.points.emplace_back(circle->radius(), 0.f);
    return poly;
  }
  Reply<typed::Note> call(const flatpipe::ServerCall&, Message<typed::Note>) override { return named("call"); }
  asio::awaitable<Reply<typed::Note>> co_cancel(flatpipe::ServerCall, Message<typed::Note>) override {
    co_return named("cancel");
  }
  Reply<typed::Note> stream(const flatpipe::ServerCall&, Message<typed::Note>) override { return named("stream"); }
  Reply<typed::Note> close(const flatpipe::ServerCall&, Message<typed::Note>) override { return named("close"); }
  Reply<typed::Note> connect(const flatpipe::ServerCall&, Message<typed::Note>) override { return named("connect"); }
};

class Typed : public ::testing::TestWithParam<TestParam> {
 protected:
  void SetUp() override {
    if (auto why = fptest::reliable_only_skip(GetParam())) GTEST_SKIP() << *why;
    server_ = std::make_unique<flatpipe::Server>(server_rt_);
    ASSERT_TRUE(typed::Lab::add_to(*server_, std::make_shared<LabImpl>(st_)).ok());
    ASSERT_TRUE(verbs::Verbs::add_to(*server_, std::make_shared<VerbsImpl>()).ok());
    auto bound = server_->listen(GetParam().transport.listen_uri());
    ASSERT_TRUE(bound.ok()) << bound.status().to_string();
    bound_ = *bound;
    auto lab = typed::Lab::connect(client_rt_, bound_);
    ASSERT_TRUE(lab.ok()) << lab.status().to_string();
    lab_ = *lab;
  }
  void TearDown() override {
    if (server_) server_->shutdown(0ms);
    server_.reset();
  }

  template <class T, class F>
  std::optional<T> coro(F&& fn) {
    return fptest::run_coroutine<T>(client_rt_.io(), std::forward<F>(fn));
  }

  std::shared_ptr<LabState> st_ = std::make_shared<LabState>();
  flatpipe::Runtime server_rt_;
  flatpipe::Runtime client_rt_;
  std::unique_ptr<flatpipe::Server> server_;
  std::string bound_;
  typed::Lab::Client lab_;
};

// The unary-only tests hold over a transport that may lose frames (udp; loopback does not lose
// them); those that also open reliable streams need a reliable transport.
const bool kTypedDatagramSafe = fptest::mark_datagram_safe({
    "UnaryBlockingSendsObjectApiAndReturnsAVerifiedMessage",
    "UnaryBlockingSendsABuilderMadeOnTheConnection",
    "UnaryCallbackStyle",
    "UnaryCoroutineStyleAgainstACoroutineHandler",
    "UnaryErrorsCarryCodeAndTextInEveryStyle",
    "UnaryDeadlineExceededInEveryStyle",
    "UnaryHandlerObservesCancellationWhenTheDeadlinePasses",
});

INSTANTIATE_TEST_SUITE_P(Transports, Typed, ::testing::ValuesIn(fptest::full_params()), fptest::param_name);

// ---- unary ----

TEST_P(Typed, UnaryBlockingSendsObjectApiAndReturnsAVerifiedMessage) {
  typed::NoteT n = note("hello");
  auto circle = std::make_unique<geo::CircleT>();
  circle->center = std::make_unique<geo::Point>(1.f, 2.f);
  circle->radius = 3.f;
  n.shape.Set(std::move(*circle));
  n.points = {geo::Point(1.f, 2.f), geo::Point(3.f, 4.f)};

  auto r = lab_.Echo(n, flatpipe::CallOptions::with_timeout(kWait));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(text_of(*r), "hello");
  ASSERT_EQ((*r)->points()->size(), 2u);
  EXPECT_EQ((*r)->points()->Get(1)->y(), 4.f);
  ASSERT_EQ((*r)->shape_type(), typed::Shape_fptest_geo_Circle);
  EXPECT_EQ((*r)->shape_as_fptest_geo_Circle()->radius(), 3.f);
  auto back = r->unpack();
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->text, "hello");
  EXPECT_EQ(back->points.size(), 2u);
  ASSERT_NE(back->shape.Asfptest_geo_Circle(), nullptr);
  EXPECT_EQ(back->shape.Asfptest_geo_Circle()->center->x(), 1.f);
}

TEST_P(Typed, UnaryBlockingSendsABuilderMadeOnTheConnection) {
  auto b = lab_.channel().builder();
  b.Finish(typed::CreateNote(b, b.CreateString("built")));
  auto r = lab_.Echo(std::move(b));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(text_of(*r), "built");
}

TEST_P(Typed, UnaryCallbackStyle) {
  std::promise<flatpipe::Result<Message<typed::Note>>> p;
  auto f = p.get_future();
  lab_.async_Echo(note("cb"), {}, [&p](flatpipe::Result<Message<typed::Note>> r) { p.set_value(std::move(r)); });
  auto r = fptest::get_within(f);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->ok()) << r->status().to_string();
  EXPECT_EQ(text_of(**r), "cb");
}

TEST_P(Typed, UnaryCoroutineStyleAgainstACoroutineHandler) {
  auto text = coro<std::string>([this]() -> asio::awaitable<std::string> {
    auto r = co_await lab_.async_Slow(note("co", 0, 0, 5), flatpipe::CallOptions::with_timeout(kWait));
    co_return r.ok() ? text_of(*r) : r.status().to_string();
  });
  ASSERT_TRUE(text.has_value());
  EXPECT_EQ(*text, "slow:co");
}

TEST_P(Typed, UnaryErrorsCarryCodeAndTextInEveryStyle) {
  const Status want(StatusCode::not_found, "no such note");
  auto blocking = lab_.Echo(note("no such note", 5));
  EXPECT_EQ(blocking.status(), want);

  std::promise<Status> p;
  auto f = p.get_future();
  lab_.async_Echo(note("no such note", 5), {},
                  [&p](flatpipe::Result<Message<typed::Note>> r) { p.set_value(r.status()); });
  EXPECT_EQ(fptest::get_within(f), want);

  auto co = coro<Status>([this]() -> asio::awaitable<Status> {
    co_return (co_await lab_.async_Echo(note("no such note", 5))).status();
  });
  EXPECT_EQ(co, want);
}

TEST_P(Typed, UnaryDeadlineExceededInEveryStyle) {
  const auto started = std::chrono::steady_clock::now();
  auto blocking = lab_.Slow(note("late", 0, 0, 3000), flatpipe::CallOptions::with_timeout(50ms));
  EXPECT_EQ(blocking.code(), StatusCode::deadline_exceeded) << blocking.status().to_string();

  std::promise<StatusCode> p;
  auto f = p.get_future();
  lab_.async_Slow(note("late", 0, 0, 3000), flatpipe::CallOptions::with_timeout(50ms),
                  [&p](flatpipe::Result<Message<typed::Note>> r) { p.set_value(r.code()); });
  EXPECT_EQ(fptest::get_within(f), StatusCode::deadline_exceeded);

  auto co = coro<StatusCode>([this]() -> asio::awaitable<StatusCode> {
    co_return (co_await lab_.async_Slow(note("late", 0, 0, 3000), flatpipe::CallOptions::with_timeout(50ms))).code();
  });
  EXPECT_EQ(co, StatusCode::deadline_exceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2500ms);
}

TEST_P(Typed, UnaryHandlerObservesCancellationWhenTheDeadlinePasses) {
  auto r = lab_.Park(note("park"), flatpipe::CallOptions::with_timeout(100ms));
  EXPECT_EQ(r.code(), StatusCode::deadline_exceeded);
  EXPECT_TRUE(st_->park_started.load());
  EXPECT_TRUE(fptest::eventually([&] { return st_->park_saw_cancel.load(); }));
}

TEST_P(Typed, MethodsNotOverriddenAnswerUnimplemented) {
  auto r = lab_.Missing(note("x"));
  EXPECT_EQ(r.code(), StatusCode::unimplemented);
  EXPECT_NE(r.status().message().find("fptest.typed.Lab.Missing"), std::string::npos) << r.status().message();

  auto s = lab_.MissingStream();
  ASSERT_TRUE(s.ok());
  Status end = s->finish();
  EXPECT_EQ(end.code(), StatusCode::unimplemented);
  EXPECT_NE(end.message().find("fptest.typed.Lab.MissingStream"), std::string::npos) << end.message();
}

TEST_P(Typed, ARequestThatFailsVerificationNeverReachesTheHandler) {
  auto r = lab_.Echo(Payload<typed::Note>(flatpipe::Buffer::copy(std::string_view("\x05\x00\x00\x00garbage", 11))));
  EXPECT_EQ(r.code(), StatusCode::invalid_argument) << r.status().to_string();
  EXPECT_NE(r.status().message().find("fptest.typed.Note"), std::string::npos) << r.status().message();
  EXPECT_EQ(st_->echo_runs.load(), 0);

  auto w = lab_.Collect();
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->write(note("fine")).ok());
  (void)w->write(Payload<typed::Note>(flatpipe::Buffer::copy(std::string_view("bad"))));
  w->write_done();
  auto summary = w->finish();
  EXPECT_EQ(summary.code(), StatusCode::invalid_argument) << summary.status().to_string();
}

// ---- server streaming ----

TEST_P(Typed, ServerStreamBlockingReadsEveryMessageThenTheStatus) {
  auto s = lab_.Countdown(note("", 0, 5));
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  std::vector<std::string> got;
  for (;;) {
    auto m = s->read();
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    if (!*m) break;
    got.push_back(text_of(**m));
  }
  EXPECT_EQ(got, (std::vector<std::string>{"0", "1", "2", "3", "4"}));
  EXPECT_TRUE(s->finish().ok());
}

TEST_P(Typed, ServerStreamCallbackStyleAndItsError) {
  auto s = lab_.Countdown(note("stream broke", 9, 2));
  ASSERT_TRUE(s.ok());
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    std::promise<flatpipe::ReadOutcome<typed::Note>> p;
    auto f = p.get_future();
    s->async_read([&p](flatpipe::ReadOutcome<typed::Note> r) { p.set_value(std::move(r)); });
    auto r = fptest::get_within(f);
    ASSERT_TRUE(r.has_value());
    if (!r->ok() || !**r) {
      EXPECT_EQ(r->status(), Status(StatusCode::failed_precondition, "stream broke"));
      break;
    }
    got.push_back(text_of(***r));
  }
  EXPECT_EQ(got, (std::vector<std::string>{"0", "1"}));
  std::promise<Status> p;
  auto f = p.get_future();
  s->async_finish([&p](Status st) { p.set_value(std::move(st)); });
  EXPECT_EQ(fptest::get_within(f), Status(StatusCode::failed_precondition, "stream broke"));
}

TEST_P(Typed, ServerStreamCoroutineStyle) {
  auto joined = coro<std::string>([this]() -> asio::awaitable<std::string> {
    auto s = lab_.Countdown(note("", 0, 3));
    if (!s) co_return s.status().to_string();
    std::string out;
    for (;;) {
      auto m = co_await s->async_read(asio::use_awaitable);
      if (!m) co_return m.status().to_string();
      if (!*m) break;
      out += text_of(**m);
    }
    Status end = co_await s->async_finish(asio::use_awaitable);
    co_return out + "|" + end.to_string();
  });
  EXPECT_EQ(joined, "012|OK");
}

TEST_P(Typed, LatestStreamWritesNeverWaitForTheReader) {
  // 200 messages against the reader's initial credit of 64, not read yet: a reliable writer would
  // wait after 64; under `latest` (from the schema) every write completes and older unsent
  // messages are replaced.
  auto s = lab_.Freshest(note("", 0, 200));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(fptest::eventually([&] { return st_->freshest_written.load(); }));
  EXPECT_GT(server_->stats().messages_dropped_latest, 0u);
  int previous = -1;
  int count = 0;
  for (;;) {
    auto m = s->read();
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    if (!*m) break;
    const int value = std::stoi(text_of(**m));
    EXPECT_GT(value, previous);
    previous = value;
    ++count;
  }
  EXPECT_GE(count, 1);
  EXPECT_LT(count, 200);
  EXPECT_TRUE(s->finish().ok());
}

// ---- client streaming ----

TEST_P(Typed, ClientStreamInEveryStyle) {
  {
    auto w = lab_.Collect();
    ASSERT_TRUE(w.ok());
    EXPECT_TRUE(w->write(note("a")).ok());
    EXPECT_TRUE(w->write(note("b")).ok());
    w->write_done();
    auto s = w->finish();
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    EXPECT_EQ((*s)->count(), 2u);
    EXPECT_EQ((*s)->joined()->str(), "a+b");
  }
  {
    auto w = lab_.Collect();
    ASSERT_TRUE(w.ok());
    std::promise<Status> wp;
    auto wf = wp.get_future();
    w->async_write(note("c"), [&wp](Status st) { wp.set_value(std::move(st)); });
    EXPECT_EQ(fptest::get_within(wf), Status());
    w->write_done();
    std::promise<std::string> p;
    auto f = p.get_future();
    w->async_finish([&p](flatpipe::Result<Message<typed::Summary>> r) {
      p.set_value(r.ok() ? (*r)->joined()->str() : r.status().to_string());
    });
    EXPECT_EQ(fptest::get_within(f), "c");
  }
  auto co = coro<std::string>([this]() -> asio::awaitable<std::string> {
    auto w = lab_.Collect();
    if (!w) co_return w.status().to_string();
    for (const char* t : {"x", "y", "z"}) {
      Status st = co_await w->async_write(note(t), asio::use_awaitable);
      if (!st.ok()) co_return st.to_string();
    }
    w->write_done();
    auto r = co_await w->async_finish(asio::use_awaitable);
    co_return r.ok() ? (*r)->joined()->str() : r.status().to_string();
  });
  EXPECT_EQ(co, "x+y+z");
}

TEST_P(Typed, ClientStreamHandlerErrorReachesTheCaller) {
  auto w = lab_.Collect();
  ASSERT_TRUE(w.ok());
  (void)w->write(note("too much", 8));
  w->write_done();
  auto r = w->finish();
  EXPECT_EQ(r.status(), Status(StatusCode::resource_exhausted, "too much"));
}

// ---- bidi ----

TEST_P(Typed, BidiInEveryStyle) {
  {
    auto c = lab_.Chat();
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c->write(note("1")).ok());
    auto m = c->read();
    ASSERT_TRUE(m.ok() && *m) << m.status().to_string();
    EXPECT_EQ(text_of(**m), "chat:1");
    c->write_done();
    auto end = c->read();
    ASSERT_TRUE(end.ok());
    EXPECT_FALSE(end->has_value());
    EXPECT_TRUE(c->finish().ok());
  }
  {
    auto c = lab_.Chat();
    ASSERT_TRUE(c.ok());
    std::promise<Status> wp;
    auto wf = wp.get_future();
    c->async_write(note("2"), [&wp](Status st) { wp.set_value(std::move(st)); });
    EXPECT_EQ(fptest::get_within(wf), Status());
    std::promise<std::string> rp;
    auto rf = rp.get_future();
    c->async_read([&rp](flatpipe::ReadOutcome<typed::Note> r) {
      rp.set_value(r.ok() && *r ? text_of(**r) : r.status().to_string());
    });
    EXPECT_EQ(fptest::get_within(rf), "chat:2");
    c->write_done();
    std::promise<Status> fp;
    auto ff = fp.get_future();
    c->async_finish([&fp](Status st) { fp.set_value(std::move(st)); });
    EXPECT_EQ(fptest::get_within(ff), Status());
  }
  auto co = coro<std::string>([this]() -> asio::awaitable<std::string> {
    auto c = lab_.Chat();
    if (!c) co_return c.status().to_string();
    std::string out;
    for (const char* t : {"p", "q"}) {
      Status st = co_await c->async_write(note(t), asio::use_awaitable);
      if (!st.ok()) co_return st.to_string();
      auto m = co_await c->async_read(asio::use_awaitable);
      if (!m || !*m) co_return "read failed: " + m.status().to_string();
      out += text_of(**m) + ";";
    }
    c->write_done();
    co_return out + (co_await c->async_finish(asio::use_awaitable)).to_string();
  });
  EXPECT_EQ(co, "chat:p;chat:q;OK");
  EXPECT_TRUE(fptest::eventually([&] { return st_->chat_ended.load(); }));
}

TEST_P(Typed, CancellingAStreamIsObservedByTheHandler) {
  auto c = lab_.Chat();
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->write(note("hi")).ok());
  auto m = c->read();
  ASSERT_TRUE(m.ok() && *m);
  c->cancel();
  EXPECT_EQ(c->finish().code(), StatusCode::cancelled);
  EXPECT_TRUE(fptest::eventually([&] { return st_->chat_saw_cancel.load(); }));
}

TEST_P(Typed, AStreamPastItsDeadlineFailsWithDeadlineExceededAndTheHandlerObservesIt) {
  auto c = lab_.Chat(flatpipe::CallOptions::with_timeout(100ms));
  ASSERT_TRUE(c.ok());
  auto m = c->read();  // the handler writes nothing until it reads: this waits for the deadline
  EXPECT_EQ(m.code(), StatusCode::deadline_exceeded) << m.status().to_string();
  EXPECT_EQ(c->finish().code(), StatusCode::deadline_exceeded);
  EXPECT_TRUE(fptest::eventually([&] { return st_->chat_saw_cancel.load(); }));
}

// ---- received messages that fail verification on the caller's side ----

TEST_P(Typed, AResponseThatFailsVerificationIsInternal) {
  flatpipe::Server raw(server_rt_);
  ASSERT_TRUE(raw.add_unary(typed::Lab::Ids::Echo, "fptest.typed.Lab.Echo",
                            [](flatpipe::CallContext&, const flatpipe::Buffer&) -> flatpipe::Result<flatpipe::Buffer> {
                              return flatpipe::Buffer::copy(std::string_view("\xff\xff\xff\x7fnot a note", 14));
                            })
                  .ok());
  ASSERT_TRUE(raw.add_coroutine(typed::Lab::Ids::Countdown, "fptest.typed.Lab.Countdown",
                                flatpipe::CallKind::server_stream,
                                [](flatpipe::ServerCall call) -> asio::awaitable<void> {
                                  co_await call.async_write(flatpipe::Buffer::copy(std::string_view("zz")),
                                                            asio::use_awaitable);
                                  co_await wait_until([&] { return call.context().cancelled(); }, kWait);
                                  call.finish(Status());
                                })
                  .ok());
  auto bound = raw.listen(GetParam().transport.listen_uri());
  ASSERT_TRUE(bound.ok());
  auto stub = typed::Lab::connect(client_rt_, *bound);
  ASSERT_TRUE(stub.ok());

  auto r = stub->Echo(note("x"));
  EXPECT_EQ(r.code(), StatusCode::internal) << r.status().to_string();
  EXPECT_NE(r.status().message().find("fptest.typed.Note"), std::string::npos) << r.status().message();

  auto s = stub->Countdown(note("", 0, 1));
  ASSERT_TRUE(s.ok());
  auto m = s->read();
  EXPECT_EQ(m.code(), StatusCode::internal) << m.status().to_string();
  EXPECT_EQ(s->finish().code(), StatusCode::internal);
  raw.shutdown(0ms);
}

// ---- names and both ends serving ----

TEST_P(Typed, MethodsNamedLikeTheRuntimesVerbsWork) {
  auto v = verbs::Verbs::connect(client_rt_, bound_);
  ASSERT_TRUE(v.ok());
  auto text = [](const flatpipe::Result<Message<typed::Note>>& r) {
    return r.ok() ? text_of(*r) : r.status().to_string();
  };
  EXPECT_EQ(text(v->Call(note(""))), "Call");
  EXPECT_EQ(text(v->call(note(""))), "call");
  EXPECT_EQ(text(v->cancel(note(""))), "cancel");
  EXPECT_EQ(text(v->stream(note(""))), "stream");
  EXPECT_EQ(text(v->close(note(""))), "close");
  EXPECT_EQ(text(v->connect(note(""))), "connect");

  geo::CircleT circle;
  circle.center = std::make_unique<geo::Point>(5.f, 6.f);
  circle.radius = 7.f;
  auto poly = v->Connect(circle);
  ASSERT_TRUE(poly.ok()) << poly.status().to_string();
  ASSERT_EQ((*poly)->points()->size(), 2u);
  EXPECT_EQ((*poly)->points()->Get(0)->y(), 6.f);
  EXPECT_EQ((*poly)->points()->Get(1)->x(), 7.f);

  auto cancel = v->Cancel(note(""));
  ASSERT_TRUE(cancel.ok());
  auto m = cancel->read();
  ASSERT_TRUE(m.ok() && *m);
  EXPECT_EQ(text_of(**m), "Cancel");
  EXPECT_TRUE(cancel->finish().ok());

  auto stream = v->Stream();
  ASSERT_TRUE(stream.ok());
  (void)stream->write(note("1"));
  stream->write_done();
  auto sum = stream->finish();
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ((*sum)->joined()->str(), "Stream");

  auto close = v->Close();
  ASSERT_TRUE(close.ok());
  auto c = close->read();
  ASSERT_TRUE(c.ok() && *c);
  EXPECT_EQ(text_of(**c), "Close");
  close->write_done();
  EXPECT_TRUE(close->finish().ok());
}

TEST_P(Typed, AClientServesTheServerThroughAMethodTable) {
  std::promise<flatpipe::Client> peer_promise;
  auto peer_future = peer_promise.get_future();
  std::atomic<bool> once{false};
  flatpipe::Server server(server_rt_);
  server.on_connection([&](flatpipe::Client peer) {
    if (!once.exchange(true)) peer_promise.set_value(std::move(peer));
  });
  auto bound = server.listen(GetParam().transport.listen_uri());
  ASSERT_TRUE(bound.ok());

  auto table = std::make_shared<flatpipe::MethodTable>();
  ASSERT_TRUE(verbs::Verbs::add_to(*table, std::make_shared<VerbsImpl>()).ok());
  flatpipe::ClientOptions options;
  options.methods = table;
  auto client = flatpipe::Client::connect(client_rt_, *bound, options);
  ASSERT_TRUE(client.ok());

  auto peer = fptest::get_within(peer_future);
  ASSERT_TRUE(peer.has_value());
  verbs::Verbs::Client back(*peer);
  auto r = back.Call(note("from the server"), flatpipe::CallOptions::with_timeout(kWait));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(text_of(*r), "Call");
  server.shutdown(0ms);
}

TEST(TypedRegistration, AddToRefusesANullImplementationAndTakenIds) {
  flatpipe::MethodTable table;
  EXPECT_EQ(typed::Lab::add_to(table, nullptr).code(), StatusCode::invalid_argument);
  EXPECT_TRUE(typed::Lab::add_to(table, std::make_shared<LabImpl>(std::make_shared<LabState>())).ok());
  EXPECT_EQ(typed::Lab::add_to(table, std::make_shared<LabImpl>(std::make_shared<LabState>())).code(),
            StatusCode::already_exists);
}

TEST(TypedIds, FollowTheProtocolsHashAndTheIdAttribute) {
  // FNV-1a 32 of "fptest.typed.Lab.Echo", computed independently of the generator.
  std::uint32_t h = 2166136261u;
  for (char ch : std::string_view("fptest.typed.Lab.Echo")) {
    h ^= static_cast<std::uint8_t>(ch);
    h *= 16777619u;
  }
  EXPECT_EQ(typed::Lab::Ids::Echo, h);
  EXPECT_EQ(typed::Lab::Ids::Chat, 4242u);
  EXPECT_STREQ(typed::Lab::service_name, "fptest.typed.Lab");
}

// ---- Message<T> and Payload<T> ----

TEST(TypedMessage, VerifyAcceptsAFinishedTableAndUnpacks) {
  flatpipe::MessageBuilder b;
  auto pts = std::vector<geo::Point>{geo::Point(1, 2)};
  b.Finish(typed::CreateNote(b, b.CreateString("m"), 3, 4, 5, b.CreateVectorOfStructs(pts)));
  auto m = Message<typed::Note>::verify(b.release());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->count(), 4u);
  auto native = m->unpack();
  EXPECT_EQ(native->text, "m");
  EXPECT_EQ(native->code, 3);
  EXPECT_EQ(native->delay_ms, 5u);
  ASSERT_EQ(native->points.size(), 1u);
  EXPECT_EQ(native->points[0].y(), 2.f);
}

TEST(TypedMessage, VerifyRefusesGarbageAndTruncation) {
  auto garbage = Message<typed::Note>::verify(flatpipe::Buffer::copy(std::string_view("\x40\x00\x00\x00xyz", 7)));
  EXPECT_EQ(garbage.code(), StatusCode::invalid_argument);
  EXPECT_NE(garbage.status().message().find("fptest.typed.Note"), std::string::npos);

  Payload<typed::Note> p(note("truncate me"));
  const flatpipe::Buffer& whole = p.bytes();
  ASSERT_TRUE(Message<typed::Note>::verify(whole).ok());
  EXPECT_EQ(Message<typed::Note>::verify(whole.slice(0, whole.size() / 2)).code(), StatusCode::invalid_argument);
  EXPECT_EQ(Message<typed::Note>::verify(flatpipe::Buffer()).code(), StatusCode::invalid_argument);
}

// A message at an odd offset of a receive buffer (small frames over a byte stream) is copied once
// to aligned memory before FlatBuffers reads a scalar of it; an aligned one is read in place.
TEST(TypedMessage, MisalignedBytesAreReadFromAnAlignedCopy) {
  Payload<typed::Note> p(note("aligned?"));
  const flatpipe::Buffer& bytes = p.bytes();
  ASSERT_EQ(reinterpret_cast<std::uintptr_t>(bytes.data()) % 8, 0u);
  auto in_place = Message<typed::Note>::verify(bytes);
  ASSERT_TRUE(in_place.ok()) << in_place.status().to_string();
  EXPECT_EQ(in_place->buffer().data(), bytes.data()) << "an aligned message must not be copied";

  for (std::size_t offset = 1; offset < 8; ++offset) {
    std::string storage(offset, '\0');
    storage.append(bytes.view());
    const flatpipe::Buffer stream = flatpipe::Buffer::adopt(std::move(storage));
    const flatpipe::Buffer odd = stream.slice(offset);
    ASSERT_NE(reinterpret_cast<std::uintptr_t>(odd.data()) % 8, 0u);
    auto m = Message<typed::Note>::verify(odd);
    ASSERT_TRUE(m.ok()) << "offset " << offset << ": " << m.status().to_string();
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(m->buffer().data()) % 8, 0u) << "offset " << offset;
    EXPECT_EQ(text_of(*m), "aligned?");
  }
}

TEST(TypedMessage, ReplyFromAnOkStatusIsAnInternalError) {
  Reply<typed::Note> r{Status()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::internal);
  Reply<typed::Note> ok{note("fine")};
  EXPECT_TRUE(ok.ok());
  auto bytes = std::move(ok).take();
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(text_of(*Message<typed::Note>::verify(*bytes)), "fine");
}

}  // namespace
