// tcp://host:port — TCP with TCP_NODELAY. Port 0 binds an ephemeral port (see
// Listener::local_endpoint()).
#include <asio/connect.hpp>
#include <asio/ip/tcp.hpp>

#include "flatpipe/transport/transport.hpp"
#include "transport/bind_endpoint.hpp"
#include "transport/socket_listener.hpp"
#include "transport/stream_connection.hpp"

namespace flatpipe {
namespace {

using asio::ip::tcp;

std::string format(const tcp::endpoint& ep) {
  const auto addr = ep.address();
  std::string host = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
  return "tcp://" + host + ":" + std::to_string(ep.port());
}

std::shared_ptr<FrameConnection> wrap(tcp::socket socket, const ConnectionLimits& limits) {
  std::error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  auto remote = socket.remote_endpoint(ec);
  std::string peer = ec ? std::string("tcp://?") : format(remote);
  return std::make_shared<detail::StreamConnection<tcp::socket>>(std::move(socket), limits, std::move(peer));
}

class TcpTransport final : public Transport {
 public:
  std::string_view scheme() const override { return "tcp"; }

  Result<std::shared_ptr<Listener>> listen(const Endpoint& endpoint, const TransportContext& ctx,
                                           AcceptHandler on_accept) override {
    auto resolved = detail::bind_endpoint<tcp>(ctx.io, endpoint);
    if (!resolved) return resolved.status();
    const tcp::endpoint bind_ep = *resolved;
    std::error_code ec;
    tcp::acceptor acceptor(ctx.io);
    acceptor.open(bind_ep.protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor.bind(bind_ep, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      const auto code = ec == asio::error::address_in_use ? StatusCode::already_exists : StatusCode::unavailable;
      return Status(code, "cannot listen on " + endpoint.to_string() + ": " + ec.message());
    }
    const std::string local = format(acceptor.local_endpoint(ec));
    auto listener = std::make_shared<detail::SocketListener<tcp::acceptor, tcp::socket>>(
        std::move(acceptor), local, ctx.limits, std::move(on_accept), &wrap, std::string());
    listener->start();
    return std::shared_ptr<Listener>(std::move(listener));
  }

  void async_connect(const Endpoint& endpoint, const TransportContext& ctx, ConnectHandler done) override {
    auto hp = split_host_port(endpoint.address);
    if (!hp) {
      asio::post(ctx.io, [done = std::move(done), st = hp.status()]() mutable { done(st); });
      return;
    }
    auto socket = std::make_shared<tcp::socket>(ctx.io);
    const ConnectionLimits limits = ctx.limits;
    const std::string where = endpoint.to_string();
    std::error_code not_numeric;
    const auto address = asio::ip::make_address(hp->first, not_numeric);
    if (!not_numeric) {
      // A numeric address needs no resolver (asio's resolver runs a thread of its own).
      socket->async_connect(tcp::endpoint(address, hp->second),
                            [socket, limits, where, done = std::move(done)](const std::error_code& ec) mutable {
                              if (ec) {
                                done(Status(StatusCode::unavailable, "cannot connect to " + where + ": " + ec.message()));
                                return;
                              }
                              done(wrap(std::move(*socket), limits));
                            });
      return;
    }
    auto resolver = std::make_shared<tcp::resolver>(ctx.io);
    resolver->async_resolve(
        hp->first, std::to_string(hp->second), tcp::resolver::numeric_service,
        [resolver, socket, limits, where, done = std::move(done)](
            const std::error_code& ec, tcp::resolver::results_type results) mutable {
          if (ec) {
            done(Status(StatusCode::unavailable, "cannot resolve " + where + ": " + ec.message()));
            return;
          }
          asio::async_connect(*socket, results,
                              [socket, limits, where, done = std::move(done)](const std::error_code& ec2,
                                                                              const tcp::endpoint&) mutable {
                                if (ec2) {
                                  done(Status(StatusCode::unavailable,
                                              "cannot connect to " + where + ": " + ec2.message()));
                                  return;
                                }
                                done(wrap(std::move(*socket), limits));
                              });
        });
  }
};

}  // namespace

std::shared_ptr<Transport> make_tcp_transport() { return std::make_shared<TcpTransport>(); }

}  // namespace flatpipe
