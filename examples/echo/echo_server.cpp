// echo_server --listen URI [--listen URI ...] [--handler-threads N]
//
// Serves the echo service (echo_service.hpp) on every endpoint given, to flatpipe clients and to
// netpipe programs alike, until SIGINT or SIGTERM; then shuts down gracefully.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <asio/use_awaitable.hpp>

#include "echo_service.hpp"
#include "flatpipe/flatpipe.hpp"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: echo_server --listen URI [--listen URI ...] [--handler-threads N]\n"
               "  URI: tcp://HOST:PORT (port 0 picks a free one) or unix:///path/to.sock\n");
}

flatpipe::Status add_echo_methods(flatpipe::Server& server) {
  using flatpipe::Buffer;
  using flatpipe::CallContext;
  using flatpipe::CallKind;
  using flatpipe::Result;
  using flatpipe::ServerCall;
  using flatpipe::Status;
  using flatpipe::StatusCode;

  Status st = server.add_unary(echo::kEcho, "echo.Echo.Echo",
                               [](CallContext&, const Buffer& req) -> Result<Buffer> { return req; });
  if (!st.ok()) return st;
  st = server.add_unary(echo::kReverse, "echo.Echo.Reverse", [](CallContext&, const Buffer& req) -> Result<Buffer> {
    std::string bytes(req.view().rbegin(), req.view().rend());
    return Buffer::adopt(std::move(bytes));
  });
  if (!st.ok()) return st;
  st = server.add_unary(echo::kFail, "echo.Echo.Fail", [](CallContext&, const Buffer&) -> Result<Buffer> {
    return Status(StatusCode::internal, "boom");
  });
  if (!st.ok()) return st;
  // Server streaming: each byte of the request as its own message. Waits for credit as it goes.
  st = server.add_coroutine(echo::kSplit, "echo.Echo.Split", CallKind::server_stream,
                            [](ServerCall call) -> asio::awaitable<void> {
                              const Buffer req = call.request();
                              for (std::size_t i = 0; i < req.size(); ++i) {
                                Status w = co_await call.async_write(req.slice(i, 1), asio::use_awaitable);
                                if (!w.ok()) co_return;  // cancelled or disconnected
                              }
                              call.finish(Status());
                            });
  if (!st.ok()) return st;
  // Client streaming: the concatenation of every message received.
  st = server.add_coroutine(echo::kConcat, "echo.Echo.Concat", CallKind::client_stream,
                            [](ServerCall call) -> asio::awaitable<void> {
                              std::string all;
                              for (;;) {
                                flatpipe::ReadResult r = co_await call.async_read(asio::use_awaitable);
                                if (!r.ok()) co_return;  // the call is already over
                                if (!*r) break;
                                all += (*r)->view();
                              }
                              call.finish(Buffer::adopt(std::move(all)));
                            });
  if (!st.ok()) return st;
  // Bidi: every message echoed back; ends when the caller ends its side.
  return server.add_coroutine(echo::kEchoStream, "echo.Echo.EchoStream", CallKind::bidi,
                              [](ServerCall call) -> asio::awaitable<void> {
                                for (;;) {
                                  flatpipe::ReadResult r = co_await call.async_read(asio::use_awaitable);
                                  if (!r.ok()) co_return;
                                  if (!*r) break;
                                  Status w = co_await call.async_write(**r, asio::use_awaitable);
                                  if (!w.ok()) co_return;
                                }
                                call.finish(Status());
                              });
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> listen;
  unsigned handler_threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen.emplace_back(argv[++i]);
    } else if (arg == "--handler-threads" && i + 1 < argc) {
      handler_threads = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "-h" || arg == "--help") {
      usage();
      return 0;
    } else {
      std::fprintf(stderr, "echo_server: unexpected argument '%s'\n", arg.c_str());
      usage();
      return 2;
    }
  }
  if (listen.empty()) {
    usage();
    return 2;
  }

  // Block the stop signals before any thread starts, then wait for them on this thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  flatpipe::RuntimeOptions ro;
  ro.handler_threads = handler_threads;
  flatpipe::Runtime runtime(ro);
  flatpipe::Server server(runtime);
  if (auto st = add_echo_methods(server); !st.ok()) {
    std::fprintf(stderr, "echo_server: %s\n", st.to_string().c_str());
    return 1;
  }
  for (const auto& uri : listen) {
    auto bound = server.listen(uri);
    if (!bound) {
      std::fprintf(stderr, "echo_server: %s\n", bound.status().to_string().c_str());
      return 1;
    }
    std::printf("listening on %s\n", bound->c_str());
  }
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("signal %d: shutting down\n", sig);
  server.shutdown(std::chrono::seconds(2));
  return 0;
}
