// Runtime threads: busy polling before sleeping (RuntimeOptions::idle_spin) and the blocking wait
// that polls the same way (SyncSlot).
//   - an I/O thread that polls after work still goes to sleep: idle, it uses next to no CPU;
//   - a long idle_spin does poll: the thread uses CPU after a call, where idle_spin 0 uses none;
//   - calls work with and without polling, over tcp and unix, including a blocking call whose
//     reply comes long after the poll budget (the sleeping path) and one within it, and with two
//     I/O threads;
//   - SyncSlot hands over a value set before the wait, during the poll and after it, once.
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <gtest/gtest.h>

#include "flatpipe/flatpipe.hpp"
#include "flatpipe/rpc/async.hpp"

namespace {

using namespace std::chrono_literals;
using flatpipe::Buffer;
using flatpipe::Client;
using flatpipe::Result;
using flatpipe::Runtime;
using flatpipe::RuntimeOptions;
using flatpipe::Server;
using flatpipe::ServerCall;

// CPU time used so far by the thread that runs `runtime`'s I/O, read from another thread.
class IoThreadClock {
 public:
  explicit IoThreadClock(Runtime& runtime) {
    std::promise<clockid_t> id;
    asio::post(runtime.io(), [&id] {
      clockid_t cid{};
      pthread_getcpuclockid(pthread_self(), &cid);
      id.set_value(cid);
    });
    auto f = id.get_future();
    EXPECT_EQ(f.wait_for(10s), std::future_status::ready);
    clock_ = f.get();
  }
  std::chrono::nanoseconds used() const {
    timespec ts{};
    clock_gettime(clock_, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  }

 private:
  clockid_t clock_{};
};

Buffer bytes(const std::string& s) { return Buffer::copy(std::string_view(s)); }
std::string text(const Buffer& b) { return b.to_string(); }

// A server with method 1 (echo, at once) and method 2 (echo, 30 ms later, from a timer: far
// beyond any poll budget of these tests).
struct Served {
  explicit Served(Runtime& runtime, const std::string& uri) : server(runtime) {
    EXPECT_TRUE(server.add_unary(1, "t.Echo", [](flatpipe::CallContext&, const Buffer& b) -> Result<Buffer> {
                        return b;
                      }).ok());
    flatpipe::MethodInfo late;
    late.id = 2;
    late.name = "t.Late";
    late.kind = flatpipe::CallKind::unary;
    late.handler = [&runtime](ServerCall call) {
      auto timer = std::make_shared<asio::steady_timer>(runtime.io(), 30ms);
      timer->async_wait([timer, call](const std::error_code&) { call.finish(call.request()); });
    };
    EXPECT_TRUE(server.add(std::move(late)).ok());
    auto bound = server.listen(uri);
    EXPECT_TRUE(bound.ok()) << bound.status().to_string();
    if (bound.ok()) endpoint = *bound;
  }
  Server server;
  std::string endpoint;
};

std::string unique_unix_uri(const char* tag) {
  static std::atomic<int> n{0};
  return "unix:///tmp/fp-rt-" + std::to_string(::getpid()) + "-" + tag + "-" + std::to_string(n++) + ".sock";
}

class RuntimeSpin : public ::testing::TestWithParam<std::pair<std::string, std::chrono::microseconds>> {
 protected:
  std::string uri() const {
    return GetParam().first == "tcp" ? std::string("tcp://127.0.0.1:0") : unique_unix_uri("calls");
  }
  RuntimeOptions options() const {
    RuntimeOptions o;
    o.idle_spin = GetParam().second;
    return o;
  }
};

TEST_P(RuntimeSpin, CallsOfEveryWaitWork) {
  Runtime runtime(options());
  EXPECT_EQ(runtime.idle_spin(), GetParam().second);
  Served served(runtime, uri());
  ASSERT_FALSE(served.endpoint.empty());
  auto client = Client::connect(runtime, served.endpoint);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  for (int i = 0; i < 200; ++i) {  // replies within the poll budget, or nearly
    const std::string m = "m" + std::to_string(i);
    auto r = client->call(1, bytes(m));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(text(*r), m);
  }
  for (int i = 0; i < 3; ++i) {  // replies after it: the caller sleeps and is woken
    auto r = client->call(2, bytes("late" + std::to_string(i)));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(text(*r), "late" + std::to_string(i));
  }
  std::promise<std::string> async_reply;  // the callback form, on the I/O thread
  client->async_call(1, bytes("cb"), {}, [&](Result<Buffer> r) { async_reply.set_value(r.ok() ? text(*r) : "error"); });
  auto f = async_reply.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get(), "cb");
}

INSTANTIATE_TEST_SUITE_P(Transports, RuntimeSpin,
                         ::testing::Values(std::make_pair(std::string("tcp"), 0us),
                                           std::make_pair(std::string("tcp"), 50us),
                                           std::make_pair(std::string("unix"), 0us),
                                           std::make_pair(std::string("unix"), 2000us)),
                         [](const auto& p) {
                           return p.param.first + "_spin" + std::to_string(p.param.second.count()) + "us";
                         });

// Two I/O threads poll side by side (one of them waits in the reactor while the other polls the
// queue) and serve concurrent callers; each reply matches its call, and the Runtime stops.
TEST(RuntimeIdleSpin, TwoIoThreadsServeConcurrentCallers) {
  for (auto spin : {0us, 50us}) {
    RuntimeOptions o;
    o.io_threads = 2;
    o.idle_spin = spin;
    Runtime runtime(o);
    EXPECT_EQ(runtime.thread_count(), 2u);
    Served served(runtime, "tcp://127.0.0.1:0");
    auto client = Client::connect(runtime, served.endpoint);
    ASSERT_TRUE(client.ok()) << client.status().to_string();
    std::atomic<int> matched{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t) {
      callers.emplace_back([&, t] {
        for (int i = 0; i < 200; ++i) {
          const std::string m = std::to_string(t) + ":" + std::to_string(i);
          auto r = client->call(1, bytes(m));
          if (r.ok() && text(*r) == m) ++matched;
        }
      });
    }
    for (auto& c : callers) c.join();
    EXPECT_EQ(matched.load(), 800) << "idle_spin " << spin.count() << " us";
  }
}

// The default Runtime polls after each call, and then sleeps: 400 ms without traffic cost its
// I/O thread almost no CPU (a thread that kept polling would use a large share of it).
TEST(RuntimeIdleSpin, IdleIoThreadSleeps) {
  Runtime runtime;
  ASSERT_GT(runtime.idle_spin().count(), 0);
  Served served(runtime, "tcp://127.0.0.1:0");
  auto client = Client::connect(runtime, served.endpoint);
  ASSERT_TRUE(client.ok()) << client.status().to_string();
  IoThreadClock clock(runtime);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(client->call(1, bytes("x")).ok());
  std::this_thread::sleep_for(20ms);  // the last poll ends 50 us after the last call
  const auto before = clock.used();
  std::this_thread::sleep_for(400ms);
  EXPECT_LT(clock.used() - before, 40ms);
}

// With a long budget the I/O thread does poll after work (it uses CPU while nothing arrives);
// with 0 it sleeps at once.
TEST(RuntimeIdleSpin, LongBudgetPollsAndZeroDoesNot) {
#if defined(ASIO_HAS_IO_URING_AS_DEFAULT)
  GTEST_SKIP() << "the io_uring backend does not poll (run_io_thread in runtime.cpp)";
#endif
  auto cpu_after_a_call = [](std::chrono::microseconds spin) {
    RuntimeOptions o;
    o.idle_spin = spin;
    Runtime runtime(o);
    Served served(runtime, unique_unix_uri("poll"));
    auto client = Client::connect(runtime, served.endpoint);
    EXPECT_TRUE(client.ok()) << client.status().to_string();
    IoThreadClock clock(runtime);
    std::this_thread::sleep_for(20ms);
    const auto before = clock.used();
    if (client.ok()) {
      EXPECT_TRUE(client->call(1, bytes("x")).ok());
    }
    std::this_thread::sleep_for(300ms);
    return clock.used() - before;
  };
  EXPECT_GT(cpu_after_a_call(10s), 15ms);  // polls for the whole 300 ms (it yields, so a share of it)
  EXPECT_LT(cpu_after_a_call(0us), 15ms);
}

TEST(SyncSlot, ValueSetBeforeTheWaitIsTaken) {
  flatpipe::detail::SyncSlot<int> slot;
  slot.set(7);
  EXPECT_EQ(slot.wait(50us), 7);
}

TEST(SyncSlot, ValueSetDuringThePollIsTaken) {
  flatpipe::detail::SyncSlot<std::string> slot;
  const auto start = std::chrono::steady_clock::now();
  std::thread setter([&] { slot.set("soon"); });
  EXPECT_EQ(slot.wait(10s), "soon");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);  // as soon as it is set, not after the budget
  setter.join();
}

TEST(SyncSlot, ValueSetAfterThePollWakesTheSleeper) {
  flatpipe::detail::SyncSlot<std::string> slot;
  std::thread setter([&] {
    std::this_thread::sleep_for(30ms);
    slot.set("late");
  });
  EXPECT_EQ(slot.wait(10us), "late");
  setter.join();
}

TEST(SyncSlot, WaitUntilTimesOutWithoutAValue) {
  flatpipe::detail::SyncSlot<int> slot;
  EXPECT_FALSE(slot.wait_until(std::chrono::steady_clock::now() + 5ms).has_value());
  slot.set(3);
  EXPECT_EQ(slot.wait_until(std::chrono::steady_clock::now() + 5ms), std::optional<int>(3));
}

}  // namespace
