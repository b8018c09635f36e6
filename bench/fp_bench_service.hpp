// The Bench service (bench.fbs) on flatpipe: what fp_bench_server serves, and what
// fp_bench_client serves to itself for inproc:// (client and server in one process).
#pragma once

#include <string>

#include <asio/use_awaitable.hpp>

#include "bench_common.hpp"
#include "flatpipe/flatpipe.hpp"

namespace fp_bench {

using flatpipe::Buffer;
using flatpipe::CallKind;
using flatpipe::Result;
using flatpipe::ServerCall;
using flatpipe::Status;
using flatpipe::StatusCode;

// `--no-idle-spin`, taken out of argv by both programs: the Runtime sleeps as soon as it has
// nothing to do (RuntimeOptions::idle_spin = 0), and the figures are named `flatpipe_nospin`, to
// show what the default's polling before sleeping buys. Returns the Runtime's options.
inline flatpipe::RuntimeOptions take_runtime_args(int& argc, char** argv, std::string& system) {
  flatpipe::RuntimeOptions options;  // the default: one I/O thread, handlers on it, polling 50 us
  system = "flatpipe";
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--no-idle-spin") {
      options.idle_spin = std::chrono::microseconds(0);
      system = "flatpipe_nospin";
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return options;
}

// A Blob built with the call's builder: in the connection's own send memory (the shm segment,
// so the message is never copied; the heap for tcp and unix), as a real server would.
inline Buffer make_blob(const ServerCall& call, std::uint64_t seq, const std::uint8_t* data, std::size_t size) {
  flatpipe::MessageBuilder fb = call.builder(bench::builder_size(size));
  bench::build_blob(fb, seq, data, size);
  return fb.release();
}

inline Status invalid(const char* what) { return Status(StatusCode::invalid_argument, what); }

inline Status add_methods(flatpipe::Server& server) {
  // Unary: a fresh Blob with the request's seq and data.
  Status st = server.add({bench::kUnary, "flatpipe_bench.Bench.Unary", CallKind::unary, [](ServerCall call) {
                            const Buffer& req = call.request();
                            bench::BlobView v;
                            if (!bench::verify_blob(req.data(), req.size(), v)) {
                              call.finish(invalid("bad Blob"));
                              return;
                            }
                            call.finish(make_blob(call, v.seq, v.data, v.size));
                          }});
  if (!st.ok()) return st;

  // Server stream: `count` fresh Blobs of `size` bytes, for at most `millis` ms.
  st = server.add_coroutine(
      bench::kServerStream, "flatpipe_bench.Bench.ServerStream", CallKind::server_stream,
      [](ServerCall call) -> asio::awaitable<void> {
        const Buffer req = call.request();
        const flatpipe_bench::StreamRequest* sr = nullptr;
        if (!bench::verify_stream_request(req.data(), req.size(), sr)) {
          call.finish(invalid("bad StreamRequest"));
          co_return;
        }
        const std::uint64_t count = sr->count();
        const std::size_t size = sr->size();
        const auto until = bench::Clock::now() + std::chrono::milliseconds(sr->millis());
        for (std::uint64_t i = 0; i < count && bench::Clock::now() < until; ++i) {
          Status w = co_await call.async_write(make_blob(call, i, bench::pattern(), size), asio::use_awaitable);
          if (!w.ok()) co_return;
        }
        call.finish(Status());
      });
  if (!st.ok()) return st;

  // Client stream: replies with a Blob whose seq is the number of messages received.
  st = server.add_coroutine(bench::kClientStream, "flatpipe_bench.Bench.ClientStream", CallKind::client_stream,
                            [](ServerCall call) -> asio::awaitable<void> {
                              std::uint64_t n = 0;
                              for (;;) {
                                flatpipe::ReadResult r = co_await call.async_read(asio::use_awaitable);
                                if (!r.ok()) co_return;
                                if (!*r) break;
                                bench::BlobView v;
                                if (!bench::verify_blob((*r)->data(), (*r)->size(), v)) {
                                  call.finish(invalid("bad Blob"));
                                  co_return;
                                }
                                ++n;
                              }
                              call.finish(make_blob(call, n, nullptr, 0));
                            });
  if (!st.ok()) return st;

  // Bidi: every message echoed as a fresh Blob.
  return server.add_coroutine(bench::kBidi, "flatpipe_bench.Bench.Bidi", CallKind::bidi,
                              [](ServerCall call) -> asio::awaitable<void> {
                                for (;;) {
                                  flatpipe::ReadResult r = co_await call.async_read(asio::use_awaitable);
                                  if (!r.ok()) co_return;
                                  if (!*r) break;
                                  bench::BlobView v;
                                  if (!bench::verify_blob((*r)->data(), (*r)->size(), v)) {
                                    call.finish(invalid("bad Blob"));
                                    co_return;
                                  }
                                  Status w = co_await call.async_write(make_blob(call, v.seq, v.data, v.size),
                                                                       asio::use_awaitable);
                                  if (!w.ok()) co_return;
                                }
                                call.finish(Status());
                              });
}

}  // namespace fp_bench
