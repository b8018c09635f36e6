// fp_bench_inproc [--samples N] [--warmup N]
//
// flatpipe over inproc://: client and server in one process on ONE Runtime (one I/O thread; the
// handler runs on it). Prints the unary latency figures in the format of fp_bench_client
// (`flatpipe.inproc.<kind>.<metric>.<size> value unit`):
//   unary           the coroutine client on the I/O thread (co_await ... use_awaitable): the
//                   request is delivered inline to the server's sink, the reply posted back
//   unary_blocking  a blocking client on the main thread (a thread switch each way)
// The service is fp_bench_server's Unary method (bench.fbs Blob in, fresh Blob out, verified).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>

#include "bench_common.hpp"
#include "flatpipe/flatpipe.hpp"

namespace {

using bench::Clock;
using flatpipe::Buffer;
using flatpipe::Client;
using flatpipe::Result;
using flatpipe::Status;

const std::string kSystem = "flatpipe";
const std::string kTransport = "inproc";

Buffer make_blob(std::uint64_t seq, const std::uint8_t* data, std::size_t size) {
  flatbuffers::FlatBufferBuilder fb(bench::builder_size(size));
  bench::build_blob(fb, seq, data, size);
  return Buffer::adopt(fb);
}

asio::awaitable<std::string> unary_coroutine(Client client, std::size_t size, int warmup, int samples,
                                             std::vector<std::int64_t>* ns) {
  ns->reserve(static_cast<std::size_t>(samples));
  for (int i = 0; i < warmup + samples; ++i) {
    const auto t0 = Clock::now();
    const auto seq = static_cast<std::uint64_t>(i);
    auto reply = co_await client.async_call(bench::kUnary, make_blob(seq, bench::pattern(), size), {},
                                            asio::use_awaitable);
    if (!reply) co_return reply.status().to_string();
    if (!bench::check_blob(reply->data(), reply->size(), seq, size)) co_return "bad reply";
    if (i >= warmup) ns->push_back((Clock::now() - t0).count());
  }
  co_return std::string();
}

std::string unary_blocking(const Client& client, std::size_t size, int warmup, int samples,
                           std::vector<std::int64_t>* ns) {
  ns->reserve(static_cast<std::size_t>(samples));
  for (int i = 0; i < warmup + samples; ++i) {
    const auto t0 = Clock::now();
    const auto seq = static_cast<std::uint64_t>(i);
    auto reply = client.call(bench::kUnary, make_blob(seq, bench::pattern(), size));
    if (!reply) return reply.status().to_string();
    if (!bench::check_blob(reply->data(), reply->size(), seq, size)) return "bad reply";
    if (i >= warmup) ns->push_back((Clock::now() - t0).count());
  }
  return {};
}

void report(const std::string& kind, std::size_t size, std::vector<std::int64_t>& ns) {
  const std::string label = bench::size_label(size);
  bench::emit(kSystem, kTransport, kind, "p50", label, bench::percentile_us(ns, 0.50), "us");
  bench::emit(kSystem, kTransport, kind, "p99", label, bench::percentile_us(ns, 0.99), "us");
}

}  // namespace

int main(int argc, char** argv) {
  int samples = 20000;
  int warmup = 2000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--samples") == 0) {
      samples = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--warmup") == 0) {
      warmup = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: %s [--samples N] [--warmup N]\n", argv[0]);
      return 2;
    }
  }
  if (samples <= 0 || warmup < 0) {
    std::fprintf(stderr, "%s: --samples must be > 0 and --warmup >= 0\n", argv[0]);
    return 2;
  }

  flatpipe::Runtime runtime;
  flatpipe::Server server(runtime);
  Status st = server.add_unary(bench::kUnary, "flatpipe_bench.Bench.Unary",
                               [](flatpipe::CallContext&, const Buffer& req) -> Result<Buffer> {
                                 bench::BlobView v;
                                 if (!bench::verify_blob(req.data(), req.size(), v)) {
                                   return Status(flatpipe::StatusCode::invalid_argument, "bad Blob");
                                 }
                                 return make_blob(v.seq, v.data, v.size);
                               });
  if (!st.ok()) {
    bench::emit_error(st.to_string());
    return 1;
  }
  const std::string name = "inproc://fp-bench-" + std::to_string(::getpid());
  auto bound = server.listen(name);
  if (!bound) {
    bench::emit_error(bound.status().to_string());
    return 1;
  }
  auto client = Client::connect(runtime, *bound);
  if (!client) {
    bench::emit_error(client.status().to_string());
    return 1;
  }

  for (std::size_t size : {std::size_t{64}, std::size_t{1024}, std::size_t{4096}}) {
    std::vector<std::int64_t> ns;
    const std::string err =
        asio::co_spawn(runtime.io(), unary_coroutine(*client, size, warmup, samples, &ns), asio::use_future).get();
    if (!err.empty()) {
      bench::emit_error("unary " + bench::size_label(size) + ": " + err);
      return 1;
    }
    report("unary", size, ns);
  }
  for (std::size_t size : {std::size_t{64}, std::size_t{1024}}) {
    std::vector<std::int64_t> ns;
    const std::string err = unary_blocking(*client, size, warmup, samples, &ns);
    if (!err.empty()) {
      bench::emit_error("unary_blocking " + bench::size_label(size) + ": " + err);
      return 1;
    }
    report("unary_blocking", size, ns);
  }
  client->close();
  server.shutdown(std::chrono::milliseconds(0));
  return 0;
}
