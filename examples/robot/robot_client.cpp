// robot_client --connect URI [--seconds N]
//
// Calls every method of a robot_server for N seconds (default 3) and prints, per stream,
// messages, rate and latency p50/p99. Exits 0 when every stream ended OK.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "robot_client.hpp"

int main(int argc, char** argv) {
  std::string uri;
  double seconds = 3.0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--connect" && i + 1 < argc) {
      uri = argv[++i];
    } else if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::strtod(argv[++i], nullptr);
    } else {
      std::fprintf(stderr, "usage: robot_client --connect URI [--seconds N]\n");
      return arg == "-h" || arg == "--help" ? 0 : 2;
    }
  }
  if (uri.empty() || !(seconds > 0)) {
    std::fprintf(stderr, "usage: robot_client --connect URI [--seconds N]   (N > 0)\n");
    return 2;
  }
  flatpipe::Runtime runtime;
  return robot_example::run_robot_client(runtime, uri, seconds, stdout);
}
