// fp_bench_client --connect URI [--samples N] [--seconds S] [--warmup S] [--only KIND] [--no-idle-spin]
//
// Runs every scenario against fp_bench_server over one connection and prints one line per
// figure (`flatpipe.<transport>.<kind>.<metric>.<size> value unit`), then its own peak RSS and
// thread count. The default Runtime (one I/O thread; fp_bench::take_runtime_args for --no-idle-spin). With an inproc:// URI the client serves the
// Bench service itself, on the same Runtime, and calls it in process. Latency, in-flight and stream figures use
// the coroutine API (co_await ... asio::use_awaitable), the idiomatic fast path; the blocking
// client's unary latency is reported as its own kind, `unary_blocking`.
#include <cstdio>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "bench_common.hpp"
#include "flatpipe/flatpipe.hpp"
#include "fp_bench_service.hpp"

namespace {

using bench::Clock;
using flatpipe::Buffer;
using flatpipe::CallKind;
using flatpipe::Client;
using flatpipe::ClientStream;
using flatpipe::Result;
using flatpipe::Status;

Buffer make_blob(std::uint64_t seq, std::size_t size) {
  flatbuffers::FlatBufferBuilder fb(bench::builder_size(size));
  bench::build_blob(fb, seq, bench::pattern(), size);
  return Buffer::adopt(fb);
}

Buffer make_stream_request(std::uint64_t count, std::size_t size, double seconds) {
  flatbuffers::FlatBufferBuilder fb(64);
  bench::build_stream_request(fb, count, size, static_cast<std::uint32_t>(seconds * 1000.0));
  return Buffer::adopt(fb);
}

// Runs a coroutine on the Runtime's I/O thread and waits for its result.
template <class T>
T run(flatpipe::Runtime& runtime, asio::awaitable<T> coro) {
  return asio::co_spawn(runtime.io(), std::move(coro), asio::use_future).get();
}

// ---- unary ---------------------------------------------------------------------------------

// `warmup` untimed calls, then `samples` timed ones (build, call, verify).
asio::awaitable<std::string> unary_latency(Client client, std::size_t size, int warmup, int samples,
                                           std::vector<std::int64_t>* ns) {
  ns->reserve(static_cast<std::size_t>(samples));
  for (int i = 0; i < warmup + samples; ++i) {
    const auto t0 = Clock::now();
    const auto seq = static_cast<std::uint64_t>(i);
    auto reply = co_await client.async_call(bench::kUnary, make_blob(seq, size), {}, asio::use_awaitable);
    if (!reply) co_return reply.status().to_string();
    if (!bench::check_blob(reply->data(), reply->size(), seq, size)) co_return "bad reply";
    if (i >= warmup) ns->push_back((Clock::now() - t0).count());
  }
  co_return std::string();
}

std::string unary_latency_blocking(const Client& client, std::size_t size, int warmup, int samples,
                                   std::vector<std::int64_t>* ns) {
  ns->reserve(static_cast<std::size_t>(samples));
  for (int i = 0; i < warmup + samples; ++i) {
    const auto t0 = Clock::now();
    const auto seq = static_cast<std::uint64_t>(i);
    auto reply = client.call(bench::kUnary, make_blob(seq, size));
    if (!reply) return reply.status().to_string();
    if (!bench::check_blob(reply->data(), reply->size(), seq, size)) return "bad reply";
    if (i >= warmup) ns->push_back((Clock::now() - t0).count());
  }
  return {};
}

struct Inflight {
  std::uint64_t done = 0;
  std::string error;
};

// One of the K callers: calls back to back until `until`.
asio::awaitable<void> unary_worker(Client client, Clock::time_point until, std::uint64_t seq, Inflight* st) {
  while (st->error.empty() && Clock::now() < until) {
    auto reply = co_await client.async_call(bench::kUnary, make_blob(seq, bench::kInflightSize), {},
                                            asio::use_awaitable);
    if (!reply) {
      st->error = reply.status().to_string();
      co_return;
    }
    if (!bench::check_blob(reply->data(), reply->size(), seq, bench::kInflightSize)) {
      st->error = "bad reply";
      co_return;
    }
    ++st->done;
    ++seq;
  }
}

// K coroutines calling on one connection for `seconds`; calls per second.
std::optional<double> unary_inflight(flatpipe::Runtime& runtime, const Client& client, unsigned k, double seconds,
                                     std::string* error) {
  Inflight st;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::latch finished(k);
  for (unsigned w = 0; w < k; ++w) {
    asio::co_spawn(runtime.io(), unary_worker(client, until, std::uint64_t{w} << 40, &st),
                   [&finished](const std::exception_ptr&) { finished.count_down(); });
  }
  finished.wait();
  const double elapsed = bench::seconds_since(t0);
  if (!st.error.empty()) {
    *error = st.error;
    return std::nullopt;
  }
  return static_cast<double>(st.done) / elapsed;
}

// ---- streams -------------------------------------------------------------------------------

struct StreamFigure {
  std::uint64_t messages = 0;
  double seconds = 0;
  std::string error;
};

asio::awaitable<StreamFigure> server_stream(Client client, std::size_t size, double seconds) {
  StreamFigure f;
  const auto t0 = Clock::now();
  auto opened = client.open(bench::kServerStream, CallKind::server_stream,
                            make_stream_request(~std::uint64_t{0}, size, seconds));
  if (!opened) {
    f.error = opened.status().to_string();
    co_return f;
  }
  const ClientStream stream = std::move(*opened);
  for (;;) {
    flatpipe::ReadResult r = co_await stream.async_read(asio::use_awaitable);
    if (!r.ok()) {
      f.error = r.status().to_string();
      co_return f;
    }
    if (!*r) break;
    if (!bench::check_blob((*r)->data(), (*r)->size(), f.messages, size)) {
      f.error = "bad stream message";
      co_return f;
    }
    ++f.messages;
  }
  auto end = co_await stream.async_finish(asio::use_awaitable);
  if (!end) f.error = end.status().to_string();
  f.seconds = bench::seconds_since(t0);
  co_return f;
}

asio::awaitable<StreamFigure> client_stream(Client client, std::size_t size, double seconds) {
  StreamFigure f;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto opened = client.open(bench::kClientStream, CallKind::client_stream);
  if (!opened) {
    f.error = opened.status().to_string();
    co_return f;
  }
  const ClientStream stream = std::move(*opened);
  while (Clock::now() < until) {
    Status w = co_await stream.async_write(make_blob(f.messages, size), asio::use_awaitable);
    if (!w.ok()) {
      f.error = w.to_string();
      co_return f;
    }
    ++f.messages;
  }
  stream.write_done();
  auto reply = co_await stream.async_finish(asio::use_awaitable);
  if (!reply) {
    f.error = reply.status().to_string();
  } else if (!bench::check_blob(reply->data(), reply->size(), f.messages, 0)) {
    f.error = "bad client-stream reply";
  }
  f.seconds = bench::seconds_since(t0);
  co_return f;
}

asio::awaitable<void> bidi_writer(const ClientStream& stream, std::size_t size, Clock::time_point until,
                                  StreamFigure* f, std::uint64_t* sent) {
  while (Clock::now() < until) {
    Status w = co_await stream.async_write(make_blob(*sent, size), asio::use_awaitable);
    if (!w.ok()) {
      f->error = w.to_string();
      break;
    }
    ++*sent;
  }
  stream.write_done();
}

asio::awaitable<void> bidi_reader(const ClientStream& stream, std::size_t size, StreamFigure* f) {
  for (;;) {
    flatpipe::ReadResult r = co_await stream.async_read(asio::use_awaitable);
    if (!r.ok()) {
      if (f->error.empty()) f->error = r.status().to_string();
      co_return;
    }
    if (!*r) co_return;
    if (!bench::check_blob((*r)->data(), (*r)->size(), f->messages, size)) {
      f->error = "bad echo";
      co_return;
    }
    ++f->messages;
  }
}

// Writes for `seconds` while reading the echoes; messages = echoes received.
asio::awaitable<StreamFigure> bidi(Client client, std::size_t size, double seconds) {
  using namespace asio::experimental::awaitable_operators;
  StreamFigure f;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto opened = client.open(bench::kBidi, CallKind::bidi);
  if (!opened) {
    f.error = opened.status().to_string();
    co_return f;
  }
  const ClientStream stream = std::move(*opened);
  std::uint64_t sent = 0;
  co_await (bidi_writer(stream, size, until, &f, &sent) && bidi_reader(stream, size, &f));
  if (f.error.empty()) {
    auto end = co_await stream.async_finish(asio::use_awaitable);
    if (!end) f.error = end.status().to_string();
    if (f.messages != sent) f.error = "echoes missing";
  }
  f.seconds = bench::seconds_since(t0);
  co_return f;
}

}  // namespace

int main(int argc, char** argv) {
  std::string system_name;
  const flatpipe::RuntimeOptions options = fp_bench::take_runtime_args(argc, argv, system_name);
  std::string uri;
  bench::Params p;
  if (!bench::parse_client_args("fp_bench_client", argc, argv, uri, p)) return 2;
  const std::string tr = bench::transport_of(uri);

  flatpipe::Runtime runtime(options);
  // inproc:// has no other process to serve it: the Bench service runs here, on the same Runtime
  // (one I/O thread for both ends, as an in-process user would have it).
  std::unique_ptr<flatpipe::Server> local_server;
  if (tr == "inproc") {
    local_server = std::make_unique<flatpipe::Server>(runtime);
    Status st = fp_bench::add_methods(*local_server);
    auto bound = st.ok() ? local_server->listen(uri) : Result<std::string>(st);
    if (!bound) {
      bench::emit_error("serve " + uri + ": " + bound.status().to_string());
      return 1;
    }
  }
  auto connected = Client::connect(runtime, uri);
  if (!connected) {
    bench::emit_error("connect " + uri + ": " + connected.status().to_string());
    return 1;
  }
  const Client client = *connected;
  bench::ThreadWatermark threads;
  threads.sample();
  int failures = 0;
  auto fail = [&](const std::string& what, const std::string& why) {
    bench::emit_error(system_name + "." + tr + "." + what + ": " + why);
    ++failures;
  };

  if (bench::wanted(p, "unary")) {
    for (std::size_t size : bench::kLatencySizes) {
      if (!bench::wanted_size(p, size)) continue;
      std::vector<std::int64_t> ns;
      std::string err = run(runtime, unary_latency(client, size, p.latency_warmup, p.latency_samples, &ns));
      if (!err.empty()) {
        fail("unary", err);
        continue;
      }
      bench::emit(system_name, tr, "unary", "p50", bench::size_label(size), bench::percentile_us(ns, 0.50), "us");
      bench::emit(system_name, tr, "unary", "p99", bench::size_label(size), bench::percentile_us(ns, 0.99), "us");
      threads.sample();
    }
  }
  if (bench::wanted(p, "unary_blocking") && bench::wanted_size(p, bench::kLatencySizes[0])) {
    const std::size_t size = bench::kLatencySizes[0];
    std::vector<std::int64_t> ns;
    std::string err = unary_latency_blocking(client, size, p.latency_warmup, p.latency_samples, &ns);
    if (!err.empty()) {
      fail("unary_blocking", err);
    } else {
      bench::emit(system_name, tr, "unary_blocking", "p50", bench::size_label(size), bench::percentile_us(ns, 0.50), "us");
      bench::emit(system_name, tr, "unary_blocking", "p99", bench::size_label(size), bench::percentile_us(ns, 0.99), "us");
    }
    threads.sample();
  }
  if (bench::wanted(p, "unary_inflight") && bench::wanted_size(p, bench::kInflightSize)) {
    for (unsigned k : bench::kInflights) {
      std::string err;
      const std::string kind = "unary_inflight" + std::to_string(k);
      unary_inflight(runtime, client, k, p.warmup_seconds, &err);
      auto rate = err.empty() ? unary_inflight(runtime, client, k, p.seconds, &err) : std::nullopt;
      if (!rate) {
        fail(kind, err);
        continue;
      }
      bench::emit(system_name, tr, kind, "calls", bench::size_label(bench::kInflightSize), *rate, "calls/s");
      threads.sample();
    }
  }
  auto stream_figures = [&](const char* kind, std::size_t size, const StreamFigure& f) {
    if (!f.error.empty()) {
      fail(kind, f.error);
      return;
    }
    const double msgs = static_cast<double>(f.messages) / f.seconds;
    bench::emit(system_name, tr, kind, "msgs", bench::size_label(size), msgs, "msg/s");
    bench::emit(system_name, tr, kind, "bytes", bench::size_label(size), msgs * static_cast<double>(size) / 1e6, "MB/s");
    threads.sample();
  };
  if (bench::wanted(p, "stream")) {
    for (std::size_t size : bench::kServerStreamSizes) {
      if (!bench::wanted_size(p, size)) continue;
      run(runtime, server_stream(client, size, p.warmup_seconds));
      stream_figures("stream", size, run(runtime, server_stream(client, size, p.seconds)));
    }
  }
  if (bench::wanted(p, "client_stream") && bench::wanted_size(p, bench::kClientStreamSize)) {
    run(runtime, client_stream(client, bench::kClientStreamSize, p.warmup_seconds));
    stream_figures("client_stream", bench::kClientStreamSize,
                   run(runtime, client_stream(client, bench::kClientStreamSize, p.seconds)));
  }
  if (bench::wanted(p, "bidi") && bench::wanted_size(p, bench::kBidiSize)) {
    run(runtime, bidi(client, bench::kBidiSize, p.warmup_seconds));
    stream_figures("bidi", bench::kBidiSize, run(runtime, bidi(client, bench::kBidiSize, p.seconds)));
  }

  bench::emit_process(system_name, tr, "client", threads);
  client.close();
  if (local_server) local_server->shutdown(std::chrono::milliseconds(500));
  return failures == 0 ? 0 : 1;
}
