// robot_demo [--endpoint URI] [--seconds N]
//
// The robot server and the client in one process (one Runtime), talking over URI (default
// tcp://127.0.0.1:0, a free loopback port): the same code as robot_server + robot_client.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "robot_client.hpp"
#include "robot_service.hpp"

int main(int argc, char** argv) {
  std::string endpoint = "tcp://127.0.0.1:0";
  double seconds = 3.0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--endpoint" && i + 1 < argc) {
      endpoint = argv[++i];
    } else if (arg == "--seconds" && i + 1 < argc) {
      seconds = std::strtod(argv[++i], nullptr);
    } else {
      std::fprintf(stderr, "usage: robot_demo [--endpoint URI] [--seconds N]\n");
      return arg == "-h" || arg == "--help" ? 0 : 2;
    }
  }
  if (!(seconds > 0)) {
    std::fprintf(stderr, "robot_demo: --seconds must be > 0\n");
    return 2;
  }

  flatpipe::Runtime runtime;
  flatpipe::Server server(runtime);
  if (auto st = robot::Robot::add_to(server, std::make_shared<robot_example::RobotService>()); !st.ok()) {
    std::fprintf(stderr, "robot_demo: %s\n", st.to_string().c_str());
    return 1;
  }
  auto bound = server.listen(endpoint);
  if (!bound) {
    std::fprintf(stderr, "robot_demo: listen %s: %s\n", endpoint.c_str(), bound.status().to_string().c_str());
    return 1;
  }
  std::printf("robot_demo: robot listening on %s\n", bound->c_str());
  const int rc = robot_example::run_robot_client(runtime, *bound, seconds, stdout);
  server.shutdown(std::chrono::seconds(1));
  std::printf("robot_demo: %s\n", rc == 0 ? "every stream flowed" : "some stream failed");
  return rc;
}
