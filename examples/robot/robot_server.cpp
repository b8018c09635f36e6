// robot_server --listen URI [--listen URI ...]
//
// Serves the simulated robot (robot_service.hpp) on every endpoint given until SIGINT or
// SIGTERM, then shuts down gracefully.
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "robot_flatpipe.hpp"
#include "robot_service.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> listen;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen.emplace_back(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: robot_server --listen URI [--listen URI ...]\n"
                   "  URI: tcp://HOST:PORT (port 0 picks one), unix:///path, shm://name, ...\n");
      return arg == "-h" || arg == "--help" ? 0 : 2;
    }
  }
  if (listen.empty()) {
    std::fprintf(stderr, "robot_server: give at least one --listen URI\n");
    return 2;
  }

  // Block the stop signals before any thread starts, then wait for them on this thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  flatpipe::Runtime runtime;
  flatpipe::Server server(runtime);
  if (auto st = robot::Robot::add_to(server, std::make_shared<robot_example::RobotService>()); !st.ok()) {
    std::fprintf(stderr, "robot_server: %s\n", st.to_string().c_str());
    return 1;
  }
  for (const auto& uri : listen) {
    auto bound = server.listen(uri);
    if (!bound) {
      std::fprintf(stderr, "robot_server: listen %s: %s\n", uri.c_str(), bound.status().to_string().c_str());
      return 1;
    }
    std::printf("robot_server: listening on %s\n", bound->c_str());
  }
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::printf("robot_server: signal %d, shutting down\n", sig);
  server.shutdown(std::chrono::seconds(2));
  return 0;
}
