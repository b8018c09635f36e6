// The transport interface: the only way the core reaches bytes.
//
// A transport turns an endpoint into framed connections. The core (rpc/) sees FrameConnection
// and FrameSink and nothing below them, so tcp, unix, shm, inproc, udp and the secure layer are
// interchangeable: a new transport implements Transport and is added to a TransportRegistry under
// its URI scheme; the core does not change.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <asio/any_io_executor.hpp>
#include <asio/io_context.hpp>
#include <flatbuffers/allocator.h>

#include "flatpipe/status.hpp"
#include "flatpipe/transport/endpoint.hpp"
#include "flatpipe/util/unique_function.hpp"
#include "flatpipe/wire/frame.hpp"

namespace flatpipe {

// What a connection tells the layer above it. All calls come from the connection's executor,
// one at a time (never concurrently with each other for one connection).
class FrameSink {
 public:
  virtual ~FrameSink() = default;
  // One received frame, in arrival order. The payload stays valid for as long as the Buffer is
  // kept; keeping it does not stop the connection from reading on.
  virtual void on_frame(wire::Frame&& frame) = 0;
  // The byte stream cannot be decoded (oversized frame, bad version, length mismatch). Reading
  // has stopped for good; the sink decides how to close (e.g. tell the peer why, then close).
  virtual void on_frame_error(const Status& why) = 0;
  // Queued output fell to the low-water mark after send() had reported above_high_water.
  virtual void on_writable() = 0;
  // The connection is finished: peer closed, I/O error, or close(). Called exactly once, last.
  virtual void on_closed(const Status& why) = 0;
};

// The defaults keep a stream of 1 MiB messages pipelined (two queued behind the socket's own
// buffer) while bounding what one connection holds in memory.
struct ConnectionLimits {
  std::uint32_t max_frame = wire::kDefaultMaxFrame;  // largest frame body accepted on receive
  std::size_t high_water = 2u << 20;  // queued output above this: send() reports back-pressure
  std::size_t low_water = 512u << 10; // on_writable() once queued output falls to this
};

// What a connection can promise, for the core to refuse what it cannot carry instead of
// pretending (docs/transports/*.md). Transport-neutral: the core never asks which transport.
struct ConnectionTraits {
  // Every frame handed to send() reaches the peer, or the connection fails (on_closed).
  // false (udp): a frame may be lost without notice; the core then refuses reliable streams.
  bool reliable = true;
  // Frames arrive in the order they were sent.
  bool ordered = true;
  // Largest frame body (16-byte header + payload) that one send() can carry; the core refuses a
  // bigger message at send time with RESOURCE_EXHAUSTED. SIZE_MAX: only the peer's max_frame limits.
  std::size_t max_message = SIZE_MAX;
};

enum class SendResult : std::uint8_t {
  ok,                // queued or written
  above_high_water,  // queued, but the writer should wait for on_writable()
  closed,            // the connection is closing or closed; the frame was dropped
};

class FrameConnection {
 public:
  virtual ~FrameConnection() = default;

  // Begins reading; frames go to `sink`. Called once. The connection keeps the sink alive until
  // after on_closed().
  virtual void start(std::shared_ptr<FrameSink> sink) = 0;
  // Queues a frame. Never blocks; thread-safe. Frames from one thread go out in call order, each
  // written whole; frames queued together go out in one gathered write.
  virtual SendResult send(wire::OutFrame&& frame) = 0;
  // Stops (true) or resumes (false) reading: back-pressure towards a peer that ignores credit.
  // Thread-safe.
  virtual void set_read_paused(bool paused) = 0;
  // Changes the largest frame body accepted from now on. Thread-safe.
  virtual void set_max_frame(std::uint32_t max_frame) = 0;
  // Never blocks; thread-safe; idempotent. With `flush`, frames already queued are written
  // first. The sink then gets on_closed(why).
  virtual void close(const Status& why, bool flush) = 0;
  // Bytes queued and not yet written.
  virtual std::size_t queued_bytes() const = 0;
  // "tcp://127.0.0.1:53122" and the like, for logs and CallContext::peer().
  virtual std::string peer() const = 0;
  virtual asio::any_io_executor executor() const = 0;
  // Memory for one outgoing message body that this connection can send without copying it (the
  // shm transport: its shared segment), for a MessageBuilder. The caller owns the allocator; a
  // body built with it stays valid while the Buffer holding it lives, even after the connection
  // closed. nullptr (the default): heap memory is as good as any. Thread-safe.
  virtual std::unique_ptr<flatbuffers::Allocator> make_body_allocator() { return nullptr; }
  // What this connection promises; constant for its lifetime. Thread-safe. The default is a
  // reliable, ordered byte stream without a size limit of its own.
  virtual ConnectionTraits traits() const { return {}; }
};

class Listener {
 public:
  virtual ~Listener() = default;
  // The endpoint actually bound (an ephemeral port filled in). Thread-safe.
  virtual std::string local_endpoint() const = 0;
  // Stops accepting. Never blocks; idempotent.
  virtual void close() = 0;
};

struct TransportContext {
  asio::io_context& io;
  ConnectionLimits limits;
};

// Called on the I/O thread for each accepted connection (not yet started).
using AcceptHandler = std::function<void(std::shared_ptr<FrameConnection>)>;
// Called once with the connected (not yet started) connection or why it failed.
using ConnectHandler = UniqueFunction<void(Result<std::shared_ptr<FrameConnection>>)>;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual std::string_view scheme() const = 0;
  // Binds and starts accepting. Errors: INVALID_ARGUMENT (bad address), ALREADY_EXISTS (address
  // in use), UNAVAILABLE (other system errors).
  virtual Result<std::shared_ptr<Listener>> listen(const Endpoint& endpoint, const TransportContext& ctx,
                                                   AcceptHandler on_accept) = 0;
  // Connects without blocking. Errors: INVALID_ARGUMENT, UNAVAILABLE (refused, unreachable).
  virtual void async_connect(const Endpoint& endpoint, const TransportContext& ctx,
                             ConnectHandler done) = 0;
};

// Transports by URI scheme. Built by the Runtime; users may add their own.
class TransportRegistry {
 public:
  // Registers `transport` under its scheme, replacing one already there.
  void add(std::shared_ptr<Transport> transport);
  // nullptr when no transport serves `scheme`.
  Transport* find(std::string_view scheme) const;
  std::vector<std::string> schemes() const;

  // tcp, unix, shm, inproc and udp.
  static TransportRegistry with_defaults();

 private:
  std::map<std::string, std::shared_ptr<Transport>, std::less<>> transports_;
};

// The built-in transports (each in its own folder of runtime/src/transport/).
std::shared_ptr<Transport> make_tcp_transport();
std::shared_ptr<Transport> make_unix_transport();
// shm://name: shared-memory rings between processes of one machine (docs/transports/shm.md).
std::shared_ptr<Transport> make_shm_transport();
// inproc://name: threads of one process, no sockets, message bodies handed over without copying.
// Names are process-global, so Runtimes in one process reach each other (docs/transports/inproc.md).
std::shared_ptr<Transport> make_inproc_transport();
// udp://host:port: one frame per datagram, best effort (docs/transports/udp.md).
std::shared_ptr<Transport> make_udp_transport();

}  // namespace flatpipe
