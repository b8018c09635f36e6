// The address a listener binds, for the transports addressed as host:port (tcp, udp).
#pragma once

#include <string>
#include <system_error>

#include <asio/io_context.hpp>

#include "flatpipe/status.hpp"
#include "flatpipe/transport/endpoint.hpp"

namespace flatpipe::detail {

// The first address `endpoint` ("host:port", port 0 for any) resolves to for a passive socket of
// `Protocol` (asio::ip::tcp or asio::ip::udp). Blocks on name resolution when the host is not
// numeric. Errors: INVALID_ARGUMENT (malformed address, or a host that does not resolve).
template <class Protocol>
Result<typename Protocol::endpoint> bind_endpoint(asio::io_context& io, const Endpoint& endpoint) {
  auto hp = split_host_port(endpoint.address);
  if (!hp) return hp.status();
  std::error_code ec;
  typename Protocol::resolver resolver(io);
  auto results = resolver.resolve(hp->first, std::to_string(hp->second),
                                  Protocol::resolver::passive | Protocol::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return Status(StatusCode::invalid_argument,
                  "cannot resolve '" + hp->first + "': " + (ec ? ec.message() : "no address"));
  }
  return results.begin()->endpoint();
}

}  // namespace flatpipe::detail
