// Endpoint URIs: scheme://address[?key=value&...]
//
//   tcp://127.0.0.1:7447   tcp://[::1]:7447   tcp://robot.local:7447   tcp://0.0.0.0:0 (any port)
//   unix:///run/robot.sock (a path)           unix://@robot (Linux abstract namespace)
//   shm://robot   inproc://robot   udp://host:port   (transports of their own folders)
//
// Query keys understood by the runtime: mode=netpipe (speak only what a netpipe peer
// understands; docs/protocol.md, "Modes"). Transports may read their own keys.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flatpipe/status.hpp"

namespace flatpipe {

struct Endpoint {
  std::string scheme;   // "tcp", "unix", ...
  std::string address;  // everything between "://" and "?"
  std::vector<std::pair<std::string, std::string>> params;

  // Splits a URI. Errors: INVALID_ARGUMENT naming what is wrong.
  static Result<Endpoint> parse(std::string_view uri);

  // The value of a query key, or `fallback`.
  std::string param(std::string_view key, std::string_view fallback = {}) const;
  bool has_param(std::string_view key) const;
  std::string to_string() const;
};

// "host:port", "[v6]:port" → host and port. Errors: INVALID_ARGUMENT.
Result<std::pair<std::string, unsigned short>> split_host_port(std::string_view address);

}  // namespace flatpipe
