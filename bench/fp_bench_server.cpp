// fp_bench_server --listen URI [--no-idle-spin]
//
// The Bench service (bench.fbs, fp_bench_service.hpp) on flatpipe, with the default Runtime (one
// I/O thread; handlers run on it; fp_bench::take_runtime_args for --no-idle-spin). Prints
// `listening <bound uri>`, serves until its standard input closes, then prints its own figures
// (`flatpipe.<transport>.server.peak_rss.all`, `...threads.all`) and shuts down.
#include <cstdio>
#include <string>

#include "bench_common.hpp"
#include "flatpipe/flatpipe.hpp"
#include "fp_bench_service.hpp"

int main(int argc, char** argv) {
  std::string system;
  const flatpipe::RuntimeOptions options = fp_bench::take_runtime_args(argc, argv, system);
  std::string listen;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else {
      std::fprintf(stderr, "usage: fp_bench_server --listen URI [--no-idle-spin]\n");
      return 2;
    }
  }
  if (listen.empty()) {
    std::fprintf(stderr, "usage: fp_bench_server --listen URI [--no-idle-spin]\n");
    return 2;
  }

  flatpipe::Runtime runtime(options);
  flatpipe::Server server(runtime);
  if (flatpipe::Status st = fp_bench::add_methods(server); !st.ok()) {
    std::fprintf(stderr, "fp_bench_server: %s\n", st.to_string().c_str());
    return 1;
  }
  auto bound = server.listen(listen);
  if (!bound) {
    std::fprintf(stderr, "fp_bench_server: %s\n", bound.status().to_string().c_str());
    return 1;
  }
  std::printf("listening %s\n", bound->c_str());
  std::fflush(stdout);

  // Serve until the driver closes our standard input.
  char buf[256];
  while (std::fread(buf, 1, sizeof buf, stdin) > 0) {
  }

  bench::ThreadWatermark threads;
  threads.sample();
  bench::emit_process(system, bench::transport_of(*bound), "server", threads);
  server.shutdown(std::chrono::milliseconds(500));
  return 0;
}
