#include <chrono>
#include <cstdio>
#include <future>
#include <memory>

#include <asio/co_spawn.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "greeter_flatpipe.hpp"

using namespace std::chrono_literals;

// The server: override what you serve (the rest answers UNIMPLEMENTED).
class GreeterImpl : public hello::Greeter::Server {
  flatpipe::Reply<hello::HelloReply> SayHello(const flatpipe::ServerCall&,
                                              flatpipe::Message<hello::HelloRequest> request) override {
    hello::HelloReplyT reply;  // the object API; a FlatBufferBuilder works too
    reply.message = "hello, " + flatbuffers::GetString(request->name());
    return reply;
  }

  // Handlers run on the I/O thread: a streaming handler is a coroutine that co_awaits.
  asio::awaitable<flatpipe::Status> Ticks(flatpipe::ServerWriter<hello::Tick> stream,
                                          flatpipe::Message<hello::TickRequest> request) override {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (std::uint32_t n = 1; n <= request->count(); ++n) {
      timer.expires_after(10ms);
      co_await timer.async_wait(asio::use_awaitable);
      hello::TickT tick;
      tick.n = n;
      if (auto st = co_await stream.async_write(tick, asio::use_awaitable); !st.ok()) co_return st;
    }
    co_return flatpipe::Status();  // OK ends the stream
  }
};

int main() {
  flatpipe::Runtime runtime;  // runs one I/O thread
  flatpipe::Server server(runtime);
  if (auto st = hello::Greeter::add_to(server, std::make_shared<GreeterImpl>()); !st.ok()) return 1;
  auto endpoint = server.listen("tcp://127.0.0.1:0");  // port 0: any free port
  if (!endpoint) return 1;

  // The client: connect, then call with a deadline. Blocking style:
  auto greeter = hello::Greeter::connect(runtime, *endpoint);
  if (!greeter) return 1;
  hello::HelloRequestT request;
  request.name = "blocking world";
  auto reply = greeter->SayHello(request, flatpipe::CallOptions::with_timeout(2s));
  if (!reply) {
    std::printf("failed: %s\n", reply.status().to_string().c_str());
    return 1;
  }
  std::printf("%s\n", (*reply)->message()->c_str());

  // Coroutine style: co_await the call, then read the stream.
  auto done = asio::co_spawn(runtime.io(), [&]() -> asio::awaitable<int> {
    hello::HelloRequestT req;
    req.name = "coroutine world";
    auto r = co_await greeter->async_SayHello(req, flatpipe::CallOptions::with_timeout(2s));
    if (!r) co_return 1;
    std::printf("%s\n", (*r)->message()->c_str());

    hello::TickRequestT ticks_request;
    ticks_request.count = 3;
    auto ticks = greeter->Ticks(ticks_request, flatpipe::CallOptions::with_timeout(2s));
    if (!ticks) co_return 1;
    for (;;) {
      auto tick = co_await ticks->async_read();  // Result<optional<Message<Tick>>>
      if (!tick) co_return 1;                    // the call failed
      if (!*tick) break;                         // the end of the stream
      std::printf("tick %u\n", (**tick)->n());
    }
    auto end = co_await ticks->async_finish();
    std::printf("stream: %s\n", end.to_string().c_str());
    co_return end.ok() ? 0 : 1;
  }, asio::use_future);
  if (done.wait_for(10s) != std::future_status::ready) return 1;
  return done.get();
}
