// What every benchmark program shares, so that every system does exactly the same work:
// the scenarios and their sizes, how a message is built (a fresh FlatBufferBuilder per message)
// and checked (the FlatBuffers Verifier plus the expected seq and size), timing, percentiles,
// the result line format `name value unit`, and the process figures from /proc/self/status.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "bench_generated.h"

namespace bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- scenarios -----------------------------------------------------------------------------

inline constexpr std::size_t kLatencySizes[] = {64, 4096};
inline constexpr std::size_t kInflightSize = 64;
inline constexpr unsigned kInflights[] = {1, 64};
inline constexpr std::size_t kServerStreamSizes[] = {1024, 1u << 20};
inline constexpr std::size_t kClientStreamSize = 1024;
inline constexpr std::size_t kBidiSize = 1024;

// Method ids of the Bench service on flatpipe (the gRPC side uses the generated service).
inline constexpr std::uint32_t kUnary = 1;
inline constexpr std::uint32_t kServerStream = 2;
inline constexpr std::uint32_t kClientStream = 3;
inline constexpr std::uint32_t kBidi = 4;

// How long each figure runs. Every client program takes the same flags.
struct Params {
  int latency_samples = 20000;  // timed round trips per latency figure (after the warm-up)
  int latency_warmup = 2000;
  double seconds = 1.0;         // per throughput figure (after the warm-up)
  double warmup_seconds = 0.2;
  std::string only;             // run only the scenarios whose kind contains this
  std::size_t size = 0;         // run only the figures of this message size (0: all)
};

// Parses --samples N --seconds S --warmup S --only KIND --size BYTES; returns false on an unknown
// flag.
inline bool parse_param(Params& p, int& i, int argc, char** argv) {
  const std::string_view arg = argv[i];
  if (i + 1 >= argc) return false;
  if (arg == "--samples") {
    p.latency_samples = std::atoi(argv[++i]);
    p.latency_warmup = std::max(10, p.latency_samples / 10);
  } else if (arg == "--seconds") {
    p.seconds = std::atof(argv[++i]);
  } else if (arg == "--warmup") {
    p.warmup_seconds = std::atof(argv[++i]);
  } else if (arg == "--only") {
    p.only = argv[++i];
  } else if (arg == "--size") {
    p.size = std::strtoul(argv[++i], nullptr, 10);
  } else {
    return false;
  }
  return true;
}

// The command line of a bench client: --connect URI plus the Params. Prints usage and returns
// false when it is wrong.
inline bool parse_client_args(const char* program, int argc, char** argv, std::string& uri, Params& p) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--connect" && i + 1 < argc) {
      uri = argv[++i];
    } else if (!parse_param(p, i, argc, argv)) {
      std::fprintf(stderr, "usage: %s --connect URI [--samples N] [--seconds S] [--warmup S] [--only KIND]\n",
                   program);
      return false;
    }
  }
  if (uri.empty()) {
    std::fprintf(stderr, "%s: --connect URI is required\n", program);
    return false;
  }
  return true;
}

// --only KIND names one kind exactly ("unary" is not "unary_blocking"; "unary_inflight" runs both
// of its in-flight counts).
inline bool wanted(const Params& p, std::string_view kind) {
  return p.only.empty() || kind == p.only;
}
inline bool wanted_size(const Params& p, std::size_t size) { return p.size == 0 || p.size == size; }

// "64B", "1KiB", "4KiB", "1MiB".
inline std::string size_label(std::size_t n) {
  if (n >= (1u << 20) && n % (1u << 20) == 0) return std::to_string(n >> 20) + "MiB";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + "KiB";
  return std::to_string(n) + "B";
}

// The URI's scheme, which names the transport in the figures: tcp, unix, shm.
inline std::string transport_of(std::string_view uri) {
  const auto colon = uri.find(':');
  return std::string(uri.substr(0, colon));
}

// ---- messages ------------------------------------------------------------------------------

// The bytes every Blob carries (largest size used, filled once).
inline const std::uint8_t* pattern() {
  static const std::vector<std::uint8_t> bytes = [] {
    std::vector<std::uint8_t> v((1u << 20) + 64);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<std::uint8_t>(i * 131 + 7);
    return v;
  }();
  return bytes.data();
}

// The initial size of the FlatBufferBuilder made for each message: room for the data and the
// table around it, so no system pays for a reallocation.
inline std::size_t builder_size(std::size_t data_size) { return data_size + 128; }

// Builds a Blob into a fresh builder (FlatBufferBuilder, or gRPC's MessageBuilder).
template <class Builder>
inline void build_blob(Builder& fb, std::uint64_t seq, const std::uint8_t* data, std::size_t size) {
  auto vec = fb.CreateVector(data, size);
  fb.Finish(flatpipe_bench::CreateBlob(fb, seq, vec));
}

template <class Builder>
inline void build_stream_request(Builder& fb, std::uint64_t count, std::uint64_t size, std::uint32_t millis) {
  fb.Finish(flatpipe_bench::CreateStreamRequest(fb, count, size, millis));
}

struct BlobView {
  std::uint64_t seq = 0;
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
};

// The Verifier over the whole message, then the fields. Checks the first and last data byte too
// (so the bytes are really there), never the whole payload.
inline bool verify_blob(const std::uint8_t* bytes, std::size_t n, BlobView& out) {
  flatbuffers::Verifier verifier(bytes, n);
  if (!flatpipe_bench::VerifyBlobBuffer(verifier)) return false;
  const auto* blob = flatpipe_bench::GetBlob(bytes);
  out.seq = blob->seq();
  const auto* data = blob->data();
  out.data = data ? data->data() : nullptr;
  out.size = data ? data->size() : 0;
  return true;
}

// A received Blob that must have `seq` and `size` and carry pattern() bytes.
inline bool check_blob(const std::uint8_t* bytes, std::size_t n, std::uint64_t seq, std::size_t size) {
  BlobView v;
  if (!verify_blob(bytes, n, v) || v.seq != seq || v.size != size) return false;
  return size == 0 || (v.data[0] == pattern()[0] && v.data[size - 1] == pattern()[size - 1]);
}

// The same without an expected seq (streams whose seq the reader counts itself).
inline bool check_blob_size(const std::uint8_t* bytes, std::size_t n, std::size_t size, std::uint64_t* seq = nullptr) {
  BlobView v;
  if (!verify_blob(bytes, n, v) || v.size != size) return false;
  if (seq) *seq = v.seq;
  return size == 0 || (v.data[0] == pattern()[0] && v.data[size - 1] == pattern()[size - 1]);
}

inline bool verify_stream_request(const std::uint8_t* bytes, std::size_t n,
                                  const flatpipe_bench::StreamRequest*& out) {
  flatbuffers::Verifier verifier(bytes, n);
  if (!verifier.VerifyBuffer<flatpipe_bench::StreamRequest>(nullptr)) return false;
  out = flatbuffers::GetRoot<flatpipe_bench::StreamRequest>(bytes);
  return out->size() <= (1u << 20);
}

// ---- results -------------------------------------------------------------------------------

// Percentile of nanosecond samples (sorted in place), in microseconds.
inline double percentile_us(std::vector<std::int64_t>& ns, double q) {
  if (ns.empty()) return 0;
  std::sort(ns.begin(), ns.end());
  const auto idx = static_cast<std::size_t>(std::min<double>(static_cast<double>(ns.size() - 1),
                                                             std::floor(q * static_cast<double>(ns.size()))));
  return static_cast<double>(ns[idx]) / 1000.0;
}

inline std::string format_value(double v) {
  char buf[64];
  const double a = std::fabs(v);
  if (a >= 1000 || v == std::floor(v)) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else if (a >= 100) {
    std::snprintf(buf, sizeof buf, "%.1f", v);
  } else if (a >= 1) {
    std::snprintf(buf, sizeof buf, "%.2f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.3f", v);
  }
  return buf;
}

// One result line: `<system>.<transport>.<kind>.<metric>.<size> value unit`.
inline void emit(const std::string& system, const std::string& transport, const std::string& kind,
                 const std::string& metric, const std::string& size, double value, const char* unit) {
  std::printf("%s.%s.%s.%s.%s %s %s\n", system.c_str(), transport.c_str(), kind.c_str(), metric.c_str(),
              size.c_str(), format_value(value).c_str(), unit);
  std::fflush(stdout);
}

// A failure the driver shows as it is: `error <text>`.
inline void emit_error(const std::string& what) {
  std::printf("error %s\n", what.c_str());
  std::fflush(stdout);
}

// A field of /proc/self/status ("VmHWM" in kB, "Threads"); -1 when missing.
inline long proc_status(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t klen = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, klen, key) == 0 && line.size() > klen && line[klen] == ':') {
      return std::strtol(line.c_str() + klen + 1, nullptr, 10);
    }
  }
  return -1;
}

// Tracks the largest thread count seen (sampled after each figure) for the process's report.
struct ThreadWatermark {
  long max = 0;
  void sample() { max = std::max(max, proc_status("Threads")); }
};

// The process's own figures at the end: peak RSS (VmHWM) and threads.
inline void emit_process(const std::string& system, const std::string& transport, const char* role,
                         const ThreadWatermark& threads) {
  const long hwm_kib = proc_status("VmHWM");
  emit(system, transport, role, "peak_rss", "all", static_cast<double>(hwm_kib) / 1024.0, "MiB");
  emit(system, transport, role, "threads", "all",
       static_cast<double>(std::max(threads.max, proc_status("Threads"))), "threads");
}

}  // namespace bench
