// Shared test fixtures: the transport table every value-parameterized suite runs over, a test
// service with one method per behaviour under test, and a harness that starts a server Runtime +
// Server and connects Clients (full mode, or netpipe-compatible mode via "?mode=netpipe").
//
// Adding a transport to every parameterized suite = adding ONE line to transports() below.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <future>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <ostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "flatpipe/flatpipe.hpp"

namespace fptest {

using namespace std::chrono_literals;
using flatpipe::Buffer;
using flatpipe::CallContext;
using flatpipe::CallKind;
using flatpipe::CallOptions;
using flatpipe::Client;
using flatpipe::ClientOptions;
using flatpipe::ClientStream;
using flatpipe::ReadResult;
using flatpipe::Result;
using flatpipe::Runtime;
using flatpipe::RuntimeOptions;
using flatpipe::Server;
using flatpipe::ServerCall;
using flatpipe::ServerOptions;
using flatpipe::SessionOptions;
using flatpipe::Status;
using flatpipe::StatusCode;

// The generous upper bound of every wait in the suites: a behaviour that has not happened by
// then is taken as broken (nothing ever waits unbounded).
inline constexpr std::chrono::milliseconds kWait = 5s;

// ---------------------------------------------------------------------------------------------
// Transports

struct TransportCase {
  std::string name;                         // test-name suffix: letters, digits, '_' only
  std::function<std::string()> listen_uri;  // a fresh endpoint to listen on (port 0 allowed)
  // false for a transport that may lose frames (udp). RpcTest then runs only the tests marked
  // datagram-safe (mark_datagram_safe below) and skips the rest: reliable streams, flow
  // control and disconnect detection cannot be promised there (docs/transports/udp.md).
  bool reliable = true;
};

// Names of the TEST_Ps (without the "/param" suffix) that hold on an unreliable transport too.
inline std::set<std::string>& datagram_safe_tests() {
  static std::set<std::string> names;
  return names;
}
// For a test file's static initializer: `const bool kMarked = mark_datagram_safe({...});`.
inline bool mark_datagram_safe(std::initializer_list<const char*> names) {
  for (const char* n : names) datagram_safe_tests().insert(n);
  return true;
}

// A socket path no other test process (ctest -j) or test in this process uses.
inline std::string unique_unix_uri() {
  static std::atomic<unsigned> counter{0};
  return "unix:///tmp/fp-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".sock";
}

// An shm name no other test process (ctest -j) or test in this process uses.
inline std::string unique_shm_uri() {
  static std::atomic<unsigned> counter{0};
  return "shm://fp-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// An inproc name no other test in this process uses (names are process-global).
inline std::string unique_inproc_uri() {
  static std::atomic<unsigned> counter{0};
  return "inproc://fp-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Every transport the parameterized suites run over. ONE line per transport.
inline const std::vector<TransportCase>& transports() {
  static const std::vector<TransportCase> table = {
      {"tcp", [] { return std::string("tcp://127.0.0.1:0"); }},
      {"unix", [] { return unique_unix_uri(); }},
      {"shm", [] { return unique_shm_uri(); }},
      {"inproc", [] { return unique_inproc_uri(); }},
      {"udp", [] { return std::string("udp://127.0.0.1:0"); }, /*reliable=*/false},
  };
  return table;
}

enum class Mode { full, netpipe };

struct TestParam {
  TransportCase transport;
  Mode mode = Mode::full;
};

inline void PrintTo(const TestParam& p, std::ostream* os) {
  *os << p.transport.name << (p.mode == Mode::full ? "/full" : "/netpipe");
}

// transports() x `modes`, for INSTANTIATE_TEST_SUITE_P(..., ::testing::ValuesIn(params({...})),
// param_name).
inline std::vector<TestParam> params(std::initializer_list<Mode> modes) {
  std::vector<TestParam> out;
  for (const auto& t : transports()) {
    for (Mode m : modes) out.push_back(TestParam{t, m});
  }
  return out;
}
inline std::vector<TestParam> all_params() { return params({Mode::full, Mode::netpipe}); }
inline std::vector<TestParam> full_params() { return params({Mode::full}); }
inline std::vector<TestParam> netpipe_params() { return params({Mode::netpipe}); }

inline std::string param_name(const ::testing::TestParamInfo<TestParam>& info) {
  return info.param.transport.name + (info.param.mode == Mode::full ? "_full" : "_netpipe");
}

// ---------------------------------------------------------------------------------------------
// Bounded waiting

// Polls `pred` until it holds or `timeout` passes; returns its last value.
template <class Pred>
bool eventually(Pred&& pred, std::chrono::milliseconds timeout = kWait) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Waits until `value()` has not changed for `quiet` (at most `timeout`), and returns it.
template <class F>
auto settled(F&& value, std::chrono::milliseconds quiet, std::chrono::milliseconds timeout = kWait) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  auto last = value();
  auto since = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(5ms);
    auto now_value = value();
    if (now_value != last) {
      last = now_value;
      since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - since >= quiet) {
      break;
    }
  }
  return last;
}

// The value of `f`, or nullopt when it is not ready within `timeout`.
template <class T>
std::optional<T> get_within(std::future<T>& f, std::chrono::milliseconds timeout = kWait) {
  if (f.wait_for(timeout) != std::future_status::ready) return std::nullopt;
  return f.get();
}

inline Buffer buf(std::string_view s) { return Buffer::copy(s); }

inline std::string describe(const Status& st) { return st.to_string(); }
template <class T>
std::string describe(const Result<T>& r) {
  return r.ok() ? std::string("OK") : r.status().to_string();
}

// ---------------------------------------------------------------------------------------------
// The test service

namespace method {
inline constexpr std::uint32_t echo = 1;            // unary: "echo:" + request
inline constexpr std::uint32_t fail = 2;            // unary: request[0] = code, rest = message
inline constexpr std::uint32_t park = 3;            // unary: never answered by the handler (parked)
inline constexpr std::uint32_t split = 4;           // server stream: request "N" -> "m0".."m<N-1>"
inline constexpr std::uint32_t stream_fail = 5;     // server stream: "a", "b", then fails like `fail`
inline constexpr std::uint32_t stall = 6;           // server stream: "first", then parked
inline constexpr std::uint32_t infinite = 7;        // server stream: writes until a write fails
inline constexpr std::uint32_t concat = 8;          // client stream: "concat:" + messages joined by '|'
inline constexpr std::uint32_t echo_stream = 9;     // bidi: "echo:" + each message
inline constexpr std::uint32_t flood = 10;          // server stream: request "N[:size]" -> N sequenced messages
inline constexpr std::uint32_t gated_reader = 11;   // client stream: reads only once the gate opens
inline constexpr std::uint32_t metadata = 12;       // unary: the call metadata as "k=v;" ...
inline constexpr std::uint32_t notify_count = 13;   // unary: counts its runs (for notifications)
inline constexpr std::uint32_t blocking_on_io = 14; // bidi: tries blocking write/read where it runs
inline constexpr std::uint32_t pool_stream = 15;    // server stream, plain handler, blocking writes
inline constexpr std::uint32_t pool_bidi = 16;      // bidi, plain handler, blocking read/write
inline constexpr std::uint32_t tagged = 17;         // unary: 8-byte (caller, seq) tag, counted per tag
inline constexpr std::uint32_t hold_io = 18;        // unary: blocks the thread it runs on until released
inline constexpr std::uint32_t flood_latest = 19;   // flood, as a `latest` QoS server stream
inline constexpr std::uint32_t after_finish = 20;   // bidi: finishes at once, then tries to write and read
inline constexpr std::uint32_t unknown = 4242;      // never registered

// Served by the client side (ClientOptions::methods), called by the server.
inline constexpr std::uint32_t client_echo = 101;   // unary: "client:" + request
inline constexpr std::uint32_t client_park = 102;   // unary: parked on the client side
}  // namespace method

// 8-digit, zero-padded sequence number, padded with 'x' up to `size` bytes.
inline std::string sequenced(std::size_t seq, std::size_t size = 0) {
  char digits[24];
  std::snprintf(digits, sizeof digits, "%08zu", seq);
  std::string s(digits);
  if (s.size() < size) s.append(size - s.size(), 'x');
  return s;
}

// What the handlers saw; shared between the handlers and the test body.
struct ServiceState {
  std::mutex mu;
  std::vector<ServerCall> parked;  // calls the handler left open (park, stall)
  std::atomic<int> parked_count{0};
  std::atomic<int> cancel_callbacks{0};  // CallContext::on_cancel runs of parked calls

  // infinite
  std::atomic<int> infinite_written{0};
  std::atomic<bool> infinite_stopped{false};
  std::atomic<bool> infinite_saw_cancel{false};
  std::optional<Status> infinite_final;  // mu

  // flood
  std::atomic<int> flood_written{0};
  std::atomic<bool> flood_done{false};

  // gated_reader
  std::atomic<bool> read_gate{false};
  std::vector<std::string> gated_received;  // mu

  // notify_count
  std::atomic<int> notified{0};
  std::string last_notified;  // mu

  // blocking_on_io
  std::optional<Status> blocking_write;  // mu
  std::optional<Status> blocking_read;   // mu
  std::atomic<bool> blocking_ran_on_io{false};

  // pool_stream / pool_bidi
  std::atomic<int> pool_handlers_on_io{0};
  std::atomic<int> pool_handlers_run{0};

  // tagged (atomics: set by the test thread, read by handlers with no other synchronization
  // that ThreadSanitizer can see, the socket in between)
  std::unique_ptr<std::atomic<std::uint32_t>[]> tag_storage;
  std::atomic<std::atomic<std::uint32_t>*> tag_hits{nullptr};
  std::atomic<std::uint32_t> tag_callers{0};
  std::atomic<std::uint32_t> tag_per_caller{0};
  std::atomic<std::uint64_t> tag_bad{0};

  // after_finish: what a write and a read got after the handler finished its call
  std::optional<Status> late_write;  // mu
  std::optional<Status> late_read;   // mu
  std::atomic<bool> late_done{false};

  // hold_io
  std::atomic<bool> holding_io{false};
  std::atomic<bool> release_io{false};

  // on_connection handles (both ends may open calls)
  std::vector<Client> peers;  // mu
  std::atomic<int> peer_count{0};

  void park(const ServerCall& call) {
    std::lock_guard lk(mu);
    parked.push_back(call);
    ++parked_count;
  }
  std::vector<ServerCall> parked_calls() {
    std::lock_guard lk(mu);
    return parked;
  }
  Client peer(std::size_t i) {
    std::lock_guard lk(mu);
    return peers.at(i);
  }
  void prepare_tags(std::uint32_t callers, std::uint32_t per_caller) {
    tag_storage = std::make_unique<std::atomic<std::uint32_t>[]>(std::size_t{callers} * per_caller);
    for (std::size_t i = 0; i < std::size_t{callers} * per_caller; ++i) tag_storage[i].store(0);
    tag_callers.store(callers);
    tag_per_caller.store(per_caller);
    tag_hits.store(tag_storage.get(), std::memory_order_release);
  }
  std::uint32_t tag_count(std::size_t i) const { return tag_storage[i].load(); }
  // Breaks the ServerCall -> Session -> MethodTable -> handler -> state cycles.
  void clear() {
    std::vector<ServerCall> calls;
    std::vector<Client> peer_handles;
    {
      std::lock_guard lk(mu);
      calls.swap(parked);
      peer_handles.swap(peers);
    }
  }
};

inline void put_u32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xffu));
}
inline std::uint32_t get_u32(std::string_view in, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(in[at + i]);
  return v;
}
inline std::string tag(std::uint32_t caller, std::uint32_t seq) {
  std::string s;
  put_u32(s, caller);
  put_u32(s, seq);
  return s;
}

// Waits (on the coroutine's executor, in small steps) until `flag` is set, at most `limit`.
inline asio::awaitable<void> wait_flag(const std::atomic<bool>& flag, std::chrono::milliseconds limit) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!flag.load() && std::chrono::steady_clock::now() < until) {
    std::error_code ec;
    timer.expires_after(2ms);
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
  }
}

inline Status make_status(std::string_view request) {
  if (request.empty()) return Status(StatusCode::internal, "empty fail request");
  return Status(static_cast<StatusCode>(static_cast<std::uint8_t>(request[0])), std::string(request.substr(1)));
}

inline Status register_test_service(Server& server, const std::shared_ptr<ServiceState>& st) {
  Status s;
  auto ok = [&s](Status r) {
    if (s.ok() && !r.ok()) s = std::move(r);
  };

  ok(server.add_unary(method::echo, "test.Svc.Echo", [](CallContext&, const Buffer& req) -> Result<Buffer> {
    return Buffer::copy("echo:" + req.to_string());
  }));

  ok(server.add_unary(method::fail, "test.Svc.Fail", [](CallContext&, const Buffer& req) -> Result<Buffer> {
    Status why = make_status(req.view());
    if (why.ok()) return Buffer::copy(std::string_view("ok"));
    return why;
  }));

  auto park_handler = [st](ServerCall call) {
    call.context().on_cancel([st] { ++st->cancel_callbacks; });
    st->park(call);
  };
  ok(server.add({method::park, "test.Svc.Park", CallKind::unary, park_handler}));

  ok(server.add_coroutine(method::split, "test.Svc.Split", CallKind::server_stream,
                          [](ServerCall call) -> asio::awaitable<void> {
                            const int n = std::stoi(call.request().to_string());
                            for (int i = 0; i < n; ++i) {
                              Status w = co_await call.async_write(Buffer::copy("m" + std::to_string(i)),
                                                                   asio::use_awaitable);
                              if (!w.ok()) co_return;
                            }
                            call.context().add_trailing_metadata("x-count", std::to_string(n));
                            call.context().add_trailing_metadata("x-bin", std::string("\x00\xff", 2));
                            call.finish(Status());
                          }));

  ok(server.add_coroutine(method::stream_fail, "test.Svc.StreamFail", CallKind::server_stream,
                          [](ServerCall call) -> asio::awaitable<void> {
                            for (const char* m : {"a", "b"}) {
                              Status w = co_await call.async_write(Buffer::copy(std::string_view(m)),
                                                                   asio::use_awaitable);
                              if (!w.ok()) co_return;
                            }
                            call.finish(make_status(call.request().view()));
                          }));

  ok(server.add_coroutine(method::stall, "test.Svc.Stall", CallKind::server_stream,
                          [st](ServerCall call) -> asio::awaitable<void> {
                            call.context().on_cancel([st] { ++st->cancel_callbacks; });
                            (void)co_await call.async_write(Buffer::copy(std::string_view("first")),
                                                            asio::use_awaitable);
                            st->park(call);  // and never finishes
                          }));

  ok(server.add_coroutine(method::infinite, "test.Svc.Infinite", CallKind::server_stream,
                          [st](ServerCall call) -> asio::awaitable<void> {
                            auto ex = co_await asio::this_coro::executor;
                            st->park(call);  // so that the test can look at its context
                            for (int i = 0;; ++i) {
                              Status w = co_await call.async_write(Buffer::copy(sequenced(static_cast<std::size_t>(i))),
                                                                   asio::use_awaitable);
                              if (!w.ok()) {
                                {
                                  std::lock_guard lk(st->mu);
                                  st->infinite_final = w;
                                }
                                st->infinite_saw_cancel = call.context().cancelled();
                                st->infinite_stopped = true;
                                co_return;
                              }
                              ++st->infinite_written;
                              // Let the connection read (a Cancel) between writes.
                              co_await asio::post(ex, asio::use_awaitable);
                            }
                          }));

  ok(server.add_coroutine(method::concat, "test.Svc.Concat", CallKind::client_stream,
                          [](ServerCall call) -> asio::awaitable<void> {
                            std::string all;
                            bool first = true;
                            for (;;) {
                              ReadResult r = co_await call.async_read(asio::use_awaitable);
                              if (!r.ok()) co_return;
                              if (!*r) break;
                              if (!first) all += '|';
                              first = false;
                              all += (*r)->view();
                            }
                            call.finish(Buffer::copy("concat:" + all));
                          }));

  ok(server.add_coroutine(method::echo_stream, "test.Svc.EchoStream", CallKind::bidi,
                          [](ServerCall call) -> asio::awaitable<void> {
                            for (;;) {
                              ReadResult r = co_await call.async_read(asio::use_awaitable);
                              if (!r.ok()) co_return;
                              if (!*r) break;
                              Status w = co_await call.async_write(Buffer::copy("echo:" + (*r)->to_string()),
                                                                   asio::use_awaitable);
                              if (!w.ok()) co_return;
                            }
                            call.finish(Status());
                          }));

  // flood and flood_latest: the same handler; only the method's stream QoS differs.
  auto flood = [st](ServerCall call) -> asio::awaitable<void> {
    const std::string req = call.request().to_string();
    const auto colon = req.find(':');
    const auto n = static_cast<std::size_t>(std::stoul(req.substr(0, colon)));
    const std::size_t size =
        colon == std::string::npos ? 0 : static_cast<std::size_t>(std::stoul(req.substr(colon + 1)));
    for (std::size_t i = 0; i < n; ++i) {
      Status w = co_await call.async_write(Buffer::copy(sequenced(i, size)), asio::use_awaitable);
      if (!w.ok()) co_return;
      ++st->flood_written;
    }
    st->flood_done = true;
    call.finish(Status());
  };
  ok(server.add_coroutine(method::flood, "test.Svc.Flood", CallKind::server_stream, flood));
  ok(server.add_coroutine(method::flood_latest, "test.Svc.FloodLatest", CallKind::server_stream, flood,
                          flatpipe::StreamQos::latest));

  ok(server.add_coroutine(method::gated_reader, "test.Svc.GatedReader", CallKind::client_stream,
                          [st](ServerCall call) -> asio::awaitable<void> {
                            co_await wait_flag(st->read_gate, 10s);
                            std::size_t count = 0;
                            std::string last;
                            for (;;) {
                              ReadResult r = co_await call.async_read(asio::use_awaitable);
                              if (!r.ok()) co_return;
                              if (!*r) break;
                              ++count;
                              last = (*r)->to_string();
                              std::lock_guard lk(st->mu);
                              st->gated_received.push_back(last);
                            }
                            call.finish(Buffer::copy(std::to_string(count) + ":" + last));
                          }));

  ok(server.add_unary(method::metadata, "test.Svc.Metadata", [](CallContext& ctx, const Buffer&) -> Result<Buffer> {
    std::string out;
    for (const auto& [k, v] : ctx.metadata()) out += k + "=" + v + ";";
    return Buffer::copy(out);
  }));

  ok(server.add_unary(method::notify_count, "test.Svc.NotifyCount",
                      [st](CallContext&, const Buffer& req) -> Result<Buffer> {
                        {
                          std::lock_guard lk(st->mu);
                          st->last_notified = req.to_string();
                        }
                        ++st->notified;
                        return Buffer::copy(std::string_view("counted"));
                      }));

  ok(server.add({method::blocking_on_io, "test.Svc.BlockingOnIo", CallKind::bidi, [st](ServerCall call) {
                   st->blocking_ran_on_io = call.session().on_io_thread();
                   Status w = call.write(Buffer::copy(std::string_view("blocking")));
                   ReadResult r = call.read();
                   {
                     std::lock_guard lk(st->mu);
                     st->blocking_write = w;
                     st->blocking_read = r.ok() ? Status() : r.status();
                   }
                   call.finish(Status());
                 }}));

  ok(server.add({method::after_finish, "test.Svc.AfterFinish", CallKind::bidi, [st](ServerCall call) {
                   call.finish(Status());
                   call.async_write(Buffer::copy(std::string_view("late")), [st, call](Status w) {
                     {
                       std::lock_guard lk(st->mu);
                       st->late_write = w;
                     }
                     call.async_read([st](ReadResult r) {
                       {
                         std::lock_guard lk(st->mu);
                         st->late_read = r.ok() ? Status(StatusCode::internal, "TEST: read succeeded") : r.status();
                       }
                       st->late_done = true;
                     });
                   });
                 }}));

  ok(server.add({method::pool_stream, "test.Svc.PoolStream", CallKind::server_stream, [st](ServerCall call) {
                   ++st->pool_handlers_run;
                   if (call.session().on_io_thread()) ++st->pool_handlers_on_io;
                   const int n = std::stoi(call.request().to_string());
                   for (int i = 0; i < n; ++i) {
                     Status w = call.write(Buffer::copy("p" + std::to_string(i)));
                     if (!w.ok()) {
                       call.finish(w);
                       return;
                     }
                   }
                   call.finish(Status());
                 }}));

  ok(server.add({method::pool_bidi, "test.Svc.PoolBidi", CallKind::bidi, [st](ServerCall call) {
                   ++st->pool_handlers_run;
                   if (call.session().on_io_thread()) ++st->pool_handlers_on_io;
                   for (;;) {
                     ReadResult r = call.read();
                     if (!r.ok()) {
                       call.finish(r.status());
                       return;
                     }
                     if (!*r) break;
                     Status w = call.write(Buffer::copy("pool:" + (*r)->to_string()));
                     if (!w.ok()) {
                       call.finish(w);
                       return;
                     }
                   }
                   call.finish(Status());
                 }}));

  ok(server.add_unary(method::tagged, "test.Svc.Tagged", [st](CallContext&, const Buffer& req) -> Result<Buffer> {
    const std::string_view v = req.view();
    std::atomic<std::uint32_t>* hits = st->tag_hits.load(std::memory_order_acquire);
    if (v.size() != 8 || !hits) {
      ++st->tag_bad;
      return Status(StatusCode::invalid_argument, "bad tag");
    }
    const std::uint32_t caller = get_u32(v, 0);
    const std::uint32_t seq = get_u32(v, 4);
    const std::uint32_t per_caller = st->tag_per_caller.load();
    if (caller >= st->tag_callers.load() || seq >= per_caller) {
      ++st->tag_bad;
      return Status(StatusCode::invalid_argument, "tag out of range");
    }
    ++hits[std::size_t{caller} * per_caller + seq];
    return Buffer::copy(req.to_string() + "ok");
  }));

  // Deliberately blocks the thread it runs on (the I/O thread without a handler pool), at most 5 s.
  ok(server.add_unary(method::hold_io, "test.Svc.HoldIo", [st](CallContext&, const Buffer&) -> Result<Buffer> {
    st->holding_io = true;
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (!st->release_io.load() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    st->holding_io = false;
    return Buffer::copy(std::string_view("released"));
  }));

  server.on_connection([st](Client peer) {
    std::lock_guard lk(st->mu);
    st->peers.push_back(std::move(peer));
    ++st->peer_count;
  });
  return s;
}

// The methods a Client serves to the server (both ends of a connection may open calls).
struct ClientSideState {
  std::mutex mu;
  std::vector<ServerCall> parked;
  std::atomic<int> parked_count{0};
  std::atomic<int> echoed{0};
  void clear() {
    std::vector<ServerCall> calls;
    std::lock_guard lk(mu);
    calls.swap(parked);
  }
};

inline std::shared_ptr<flatpipe::MethodTable> client_side_methods(const std::shared_ptr<ClientSideState>& cs) {
  auto table = std::make_shared<flatpipe::MethodTable>();
  (void)table->add_unary(method::client_echo, "test.ClientSvc.Echo",
                         [cs](CallContext&, const Buffer& req) -> Result<Buffer> {
                           ++cs->echoed;
                           return Buffer::copy("client:" + req.to_string());
                         });
  (void)table->add({method::client_park, "test.ClientSvc.Park", CallKind::unary, [cs](ServerCall call) {
                      std::lock_guard lk(cs->mu);
                      cs->parked.push_back(call);
                      ++cs->parked_count;
                    }});
  return table;
}

// ---------------------------------------------------------------------------------------------
// The harness

struct HarnessOptions {
  RuntimeOptions server_runtime;
  SessionOptions server_session;
};

// A server Runtime + Server serving the test service on one endpoint of the parameter's
// transport, and a separate client Runtime (so that the server side can be frozen or destroyed
// independently). Clients connect in the parameter's mode.
class Harness {
 public:
  Harness(const TestParam& param, HarnessOptions options)
      : param_(param),
        state_(std::make_shared<ServiceState>()),
        server_rt_(std::make_unique<Runtime>(options.server_runtime)),
        client_rt_(std::make_unique<Runtime>()) {
    ServerOptions so;
    so.session = options.server_session;
    server_ = std::make_unique<Server>(*server_rt_, so);
    Status st = register_test_service(*server_, state_);
    if (!st.ok()) {
      error_ = "registering the test service: " + st.to_string();
      return;
    }
    const std::string uri = param.transport.listen_uri();
    auto bound = server_->listen(uri);
    if (!bound) {
      error_ = "listen(" + uri + "): " + bound.status().to_string();
      return;
    }
    bound_ = *bound;
  }

  ~Harness() {
    if (server_) server_->shutdown(0ms);
    server_.reset();
    state_->clear();
    client_rt_.reset();
    server_rt_.reset();
  }

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  bool full() const { return param_.mode == Mode::full; }

  // The URI clients dial: the bound endpoint, plus "?mode=netpipe" in compatible mode.
  std::string dial_uri() const { return full() ? bound_ : bound_ + "?mode=netpipe"; }
  const std::string& bound() const { return bound_; }

  Result<Client> connect(ClientOptions options = {}) { return Client::connect(*client_rt_, dial_uri(), std::move(options)); }

  Server& server() { return *server_; }
  bool has_server() const { return server_ != nullptr; }
  void destroy_server() { server_.reset(); }
  Runtime& server_runtime() { return *server_rt_; }
  Runtime& client_runtime() { return *client_rt_; }
  ServiceState& state() { return *state_; }

 private:
  TestParam param_;
  std::shared_ptr<ServiceState> state_;
  std::unique_ptr<Runtime> server_rt_;
  std::unique_ptr<Runtime> client_rt_;
  std::unique_ptr<Server> server_;
  std::string bound_;
  std::string error_;
};

// Why the running test must be skipped on `p`'s transport: it may lose frames and the test is
// not marked datagram-safe. nullopt: run it. Every parameterized fixture's SetUp() asks this.
inline std::optional<std::string> reliable_only_skip(const TestParam& p) {
  if (p.transport.reliable) return std::nullopt;
  std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  name = name.substr(0, name.find('/'));
  if (datagram_safe_tests().count(name)) return std::nullopt;
  return p.transport.name + " may lose frames; this test needs a reliable transport";
}

// Base fixture: start() brings up the harness (tests that need other options pass them).
class RpcTest : public ::testing::TestWithParam<TestParam> {
 protected:
  void SetUp() override {
    if (auto why = reliable_only_skip(GetParam())) GTEST_SKIP() << *why;
  }
  void start(HarnessOptions options = {}) {
    h_ = std::make_unique<Harness>(GetParam(), std::move(options));
    ASSERT_TRUE(h_->ok()) << h_->error();
  }
  void TearDown() override { h_.reset(); }

  Harness& h() { return *h_; }
  ServiceState& state() { return h_->state(); }
  bool full() const { return GetParam().mode == Mode::full; }

  std::unique_ptr<Harness> h_;
};

// Runs `fn` (a coroutine returning awaitable<T>) on `io` with co_spawn and waits, bounded.
template <class T, class F>
std::optional<T> run_coroutine(asio::io_context& io, F&& fn, std::chrono::milliseconds timeout = kWait) {
  std::future<T> f = asio::co_spawn(io, std::forward<F>(fn), asio::use_future);
  return get_within(f, timeout);
}

}  // namespace fptest
