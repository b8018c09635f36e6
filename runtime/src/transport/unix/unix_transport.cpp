// unix:///path/to.sock — Unix domain stream sockets; unix://@name uses Linux's abstract
// namespace (no file). A stale socket file (nobody accepting) is replaced on listen; a live one
// is ALREADY_EXISTS. The listener removes its file when it closes.
#include <sys/stat.h>
#include <unistd.h>

#include <asio/local/stream_protocol.hpp>

#include "flatpipe/transport/transport.hpp"
#include "transport/socket_listener.hpp"
#include "transport/stream_connection.hpp"

namespace flatpipe {
namespace {

using asio::local::stream_protocol;

Result<stream_protocol::endpoint> to_endpoint(const Endpoint& endpoint) {
  std::string path = endpoint.address;
  const bool abstract = !path.empty() && path.front() == '@';
  if (abstract) path.front() = '\0';
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status(StatusCode::invalid_argument,
                  "unix socket path '" + endpoint.address + "' is longer than " +
                      std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  }
  if (!abstract && path.front() != '/') {
    return Status(StatusCode::invalid_argument,
                  "unix endpoint needs an absolute path (unix:///path) or @name, got '" + endpoint.address + "'");
  }
  return stream_protocol::endpoint(path);
}

std::shared_ptr<FrameConnection> wrap(stream_protocol::socket socket, const ConnectionLimits& limits) {
  return std::make_shared<detail::StreamConnection<stream_protocol::socket>>(std::move(socket), limits,
                                                                            "unix://peer");
}

class UnixTransport final : public Transport {
 public:
  std::string_view scheme() const override { return "unix"; }

  Result<std::shared_ptr<Listener>> listen(const Endpoint& endpoint, const TransportContext& ctx,
                                           AcceptHandler on_accept) override {
    auto ep = to_endpoint(endpoint);
    if (!ep) return ep.status();
    const bool abstract = endpoint.address.front() == '@';
    if (!abstract) {
      struct stat st {};
      if (::lstat(endpoint.address.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
          return Status(StatusCode::already_exists, endpoint.address + " exists and is not a socket");
        }
        // A socket file: live if something accepts on it, stale otherwise.
        stream_protocol::socket probe(ctx.io);
        std::error_code ec;
        probe.connect(*ep, ec);
        if (!ec) return Status(StatusCode::already_exists, "a server is already listening on " + endpoint.address);
        ::unlink(endpoint.address.c_str());
      }
    }
    std::error_code ec;
    stream_protocol::acceptor acceptor(ctx.io);
    acceptor.open(stream_protocol(), ec);
    if (!ec) acceptor.bind(*ep, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      const auto code = ec == asio::error::address_in_use ? StatusCode::already_exists : StatusCode::unavailable;
      return Status(code, "cannot listen on " + endpoint.to_string() + ": " + ec.message());
    }
    auto listener = std::make_shared<detail::SocketListener<stream_protocol::acceptor, stream_protocol::socket>>(
        std::move(acceptor), "unix://" + endpoint.address, ctx.limits, std::move(on_accept), &wrap,
        abstract ? std::string() : endpoint.address);
    listener->start();
    return std::shared_ptr<Listener>(std::move(listener));
  }

  void async_connect(const Endpoint& endpoint, const TransportContext& ctx, ConnectHandler done) override {
    auto ep = to_endpoint(endpoint);
    if (!ep) {
      asio::post(ctx.io, [done = std::move(done), st = ep.status()]() mutable { done(st); });
      return;
    }
    auto socket = std::make_shared<stream_protocol::socket>(ctx.io);
    const ConnectionLimits limits = ctx.limits;
    socket->async_connect(*ep, [socket, limits, where = endpoint.to_string(),
                                done = std::move(done)](const std::error_code& ec) mutable {
      if (ec) {
        done(Status(StatusCode::unavailable, "cannot connect to " + where + ": " + ec.message()));
        return;
      }
      done(wrap(std::move(*socket), limits));
    });
  }
};

}  // namespace

std::shared_ptr<Transport> make_unix_transport() { return std::make_shared<UnixTransport>(); }

}  // namespace flatpipe
