// grpc_bench_client --connect URI [--samples N] [--seconds S] [--warmup S] [--only KIND]
//
// The same scenarios as fp_bench_client against grpc_bench_server, over one channel (one
// HTTP/2 connection), written the way a gRPC C++ user writes them: the synchronous stub for
// round trips and streams (in gRPC it runs the call on the calling thread, its latency fast path),
// the asynchronous stub with one completion queue for calls in flight, a writer thread beside the
// reader for bidi. Messages are fresh FlatBuffers from flatbuffers::grpc::MessageBuilder, checked
// with the Verifier on receipt.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench.grpc.fb.h"
#include "bench_common.hpp"

namespace {

using bench::Clock;
using flatpipe_bench::Blob;
using flatpipe_bench::StreamRequest;
template <class T>
using Msg = flatbuffers::grpc::Message<T>;
using Stub = flatpipe_bench::Bench::Stub;

const std::string kSystem = "grpc";

Msg<Blob> make_blob(std::uint64_t seq, std::size_t size) {
  flatbuffers::grpc::MessageBuilder mb(static_cast<flatbuffers::uoffset_t>(bench::builder_size(size)));
  bench::build_blob(mb, seq, bench::pattern(), size);
  return mb.ReleaseMessage<Blob>();
}

Msg<StreamRequest> make_stream_request(std::uint64_t count, std::size_t size, double seconds) {
  flatbuffers::grpc::MessageBuilder mb(64);
  bench::build_stream_request(mb, count, size, static_cast<std::uint32_t>(seconds * 1000.0));
  return mb.ReleaseMessage<StreamRequest>();
}

Clock::time_point after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string describe(const grpc::Status& st) {
  return std::to_string(static_cast<int>(st.error_code())) + " " + st.error_message();
}

std::string unary_latency(Stub& stub, std::size_t size, int warmup, int samples, std::vector<std::int64_t>* ns) {
  ns->reserve(static_cast<std::size_t>(samples));
  for (int i = 0; i < warmup + samples; ++i) {
    const auto t0 = Clock::now();
    const auto seq = static_cast<std::uint64_t>(i);
    grpc::ClientContext ctx;
    Msg<Blob> reply;
    grpc::Status st = stub.Unary(&ctx, make_blob(seq, size), &reply);
    if (!st.ok()) return describe(st);
    if (!bench::check_blob(reply.data(), reply.size(), seq, size)) return "bad reply";
    if (i >= warmup) ns->push_back((Clock::now() - t0).count());
  }
  return {};
}

// K calls in flight on one channel, driven by one completion queue on this thread.
double unary_inflight(Stub& stub, unsigned k, double seconds, std::string* error) {
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientAsyncResponseReader<Msg<Blob>>> rpc;
    Msg<Blob> reply;
    grpc::Status status;
    std::uint64_t seq = 0;
  };
  grpc::CompletionQueue cq;
  std::vector<Slot> slots(k);
  auto start = [&](Slot& s) {
    s.ctx = std::make_unique<grpc::ClientContext>();
    s.rpc = stub.AsyncUnary(s.ctx.get(), make_blob(s.seq, bench::kInflightSize), &cq);
    s.rpc->Finish(&s.reply, &s.status, &s);
  };
  const auto t0 = Clock::now();
  const auto until = after(seconds);
  for (unsigned i = 0; i < k; ++i) {
    slots[i].seq = std::uint64_t{i} << 40;
    start(slots[i]);
  }
  unsigned active = k;
  std::uint64_t done = 0;
  void* tag = nullptr;
  bool ok = false;
  while (active > 0 && cq.Next(&tag, &ok)) {
    auto& s = *static_cast<Slot*>(tag);
    if (!ok || !s.status.ok()) {
      if (error->empty()) *error = ok ? describe(s.status) : "call failed";
    } else if (!bench::check_blob(s.reply.data(), s.reply.size(), s.seq, bench::kInflightSize)) {
      if (error->empty()) *error = "bad reply";
    } else {
      ++done;
    }
    ++s.seq;
    if (error->empty() && Clock::now() < until) {
      start(s);
    } else {
      --active;
    }
  }
  const double elapsed = bench::seconds_since(t0);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return static_cast<double>(done) / elapsed;
}

struct StreamFigure {
  std::uint64_t messages = 0;
  double seconds = 0;
  std::string error;
};

StreamFigure server_stream(Stub& stub, std::size_t size, double seconds) {
  StreamFigure f;
  const auto t0 = Clock::now();
  grpc::ClientContext ctx;
  auto reader = stub.ServerStream(&ctx, make_stream_request(~std::uint64_t{0}, size, seconds));
  Msg<Blob> m;
  while (reader->Read(&m)) {
    if (!bench::check_blob(m.data(), m.size(), f.messages, size)) {
      f.error = "bad stream message";
      ctx.TryCancel();
      break;
    }
    ++f.messages;
  }
  grpc::Status st = reader->Finish();
  if (f.error.empty() && !st.ok()) f.error = describe(st);
  f.seconds = bench::seconds_since(t0);
  return f;
}

StreamFigure client_stream(Stub& stub, std::size_t size, double seconds) {
  StreamFigure f;
  const auto t0 = Clock::now();
  const auto until = after(seconds);
  grpc::ClientContext ctx;
  Msg<Blob> reply;
  auto writer = stub.ClientStream(&ctx, &reply);
  while (Clock::now() < until) {
    if (!writer->Write(make_blob(f.messages, size))) {
      f.error = "write failed";
      break;
    }
    ++f.messages;
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  if (f.error.empty() && !st.ok()) f.error = describe(st);
  if (f.error.empty() && !bench::check_blob(reply.data(), reply.size(), f.messages, 0)) f.error = "bad reply";
  f.seconds = bench::seconds_since(t0);
  return f;
}

StreamFigure bidi(Stub& stub, std::size_t size, double seconds) {
  StreamFigure f;
  const auto t0 = Clock::now();
  const auto until = after(seconds);
  grpc::ClientContext ctx;
  auto stream = stub.Bidi(&ctx);
  std::uint64_t sent = 0;
  std::thread writer([&] {
    while (Clock::now() < until) {
      if (!stream->Write(make_blob(sent, size))) break;
      ++sent;
    }
    stream->WritesDone();
  });
  Msg<Blob> m;
  while (stream->Read(&m)) {
    if (!bench::check_blob(m.data(), m.size(), f.messages, size)) {
      if (f.error.empty()) f.error = "bad echo";
      ctx.TryCancel();
      break;
    }
    ++f.messages;
  }
  writer.join();
  grpc::Status st = stream->Finish();
  if (f.error.empty() && !st.ok()) f.error = describe(st);
  if (f.error.empty() && f.messages != sent) f.error = "echoes missing";
  f.seconds = bench::seconds_since(t0);
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  std::string uri;
  bench::Params p;
  if (!bench::parse_client_args("grpc_bench_client", argc, argv, uri, p)) return 2;
  const std::string tr = bench::transport_of(uri);
  const std::string target = tr == "tcp" ? uri.substr(6) : uri;

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(5))) {
    bench::emit_error("connect " + uri + ": not connected after 5 s");
    return 1;
  }
  auto stub = flatpipe_bench::Bench::NewStub(channel);
  bench::ThreadWatermark threads;
  threads.sample();
  int failures = 0;
  auto fail = [&](const std::string& what, const std::string& why) {
    bench::emit_error(kSystem + "." + tr + "." + what + ": " + why);
    ++failures;
  };

  if (bench::wanted(p, "unary")) {
    for (std::size_t size : bench::kLatencySizes) {
      if (!bench::wanted_size(p, size)) continue;
      std::vector<std::int64_t> ns;
      std::string err = unary_latency(*stub, size, p.latency_warmup, p.latency_samples, &ns);
      if (!err.empty()) {
        fail("unary", err);
        continue;
      }
      bench::emit(kSystem, tr, "unary", "p50", bench::size_label(size), bench::percentile_us(ns, 0.50), "us");
      bench::emit(kSystem, tr, "unary", "p99", bench::size_label(size), bench::percentile_us(ns, 0.99), "us");
      threads.sample();
    }
  }
  if (bench::wanted(p, "unary_inflight") && bench::wanted_size(p, bench::kInflightSize)) {
    for (unsigned k : bench::kInflights) {
      std::string err;
      const std::string kind = "unary_inflight" + std::to_string(k);
      unary_inflight(*stub, k, p.warmup_seconds, &err);
      const double rate = err.empty() ? unary_inflight(*stub, k, p.seconds, &err) : 0;
      if (!err.empty()) {
        fail(kind, err);
        continue;
      }
      bench::emit(kSystem, tr, kind, "calls", bench::size_label(bench::kInflightSize), rate, "calls/s");
      threads.sample();
    }
  }
  auto stream_figures = [&](const char* kind, std::size_t size, const StreamFigure& f) {
    if (!f.error.empty()) {
      fail(kind, f.error);
      return;
    }
    const double msgs = static_cast<double>(f.messages) / f.seconds;
    bench::emit(kSystem, tr, kind, "msgs", bench::size_label(size), msgs, "msg/s");
    bench::emit(kSystem, tr, kind, "bytes", bench::size_label(size), msgs * static_cast<double>(size) / 1e6, "MB/s");
    threads.sample();
  };
  if (bench::wanted(p, "stream")) {
    for (std::size_t size : bench::kServerStreamSizes) {
      if (!bench::wanted_size(p, size)) continue;
      server_stream(*stub, size, p.warmup_seconds);
      stream_figures("stream", size, server_stream(*stub, size, p.seconds));
    }
  }
  if (bench::wanted(p, "client_stream") && bench::wanted_size(p, bench::kClientStreamSize)) {
    client_stream(*stub, bench::kClientStreamSize, p.warmup_seconds);
    stream_figures("client_stream", bench::kClientStreamSize, client_stream(*stub, bench::kClientStreamSize, p.seconds));
  }
  if (bench::wanted(p, "bidi") && bench::wanted_size(p, bench::kBidiSize)) {
    bidi(*stub, bench::kBidiSize, p.warmup_seconds);
    stream_figures("bidi", bench::kBidiSize, bidi(*stub, bench::kBidiSize, p.seconds));
  }

  bench::emit_process(kSystem, tr, "client", threads);
  return failures == 0 ? 0 : 1;
}
