// Process-wide counters of the udp transport: what it dropped or refused and why. For tests and
// monitoring; every field only ever grows. Thread-safe (relaxed atomics).
#pragma once

#include <atomic>
#include <cstdint>

namespace flatpipe::detail {

struct UdpCounters {
  std::atomic<std::uint64_t> malformed{0};       // datagrams that are no valid V2 frame body: dropped
  std::atomic<std::uint64_t> stray{0};           // valid frames from an unknown peer that cannot open a connection
  std::atomic<std::uint64_t> peers_refused{0};   // new peers over the listener's max_peers: dropped
  std::atomic<std::uint64_t> peers_expired{0};   // listener peers closed by the idle timeout
  std::atomic<std::uint64_t> inbox_overflow{0};  // frames dropped while the reader was paused or not started
  std::atomic<std::uint64_t> oversized{0};       // frames handed to send() bigger than a datagram: not sent
  std::atomic<std::uint64_t> send_errors{0};     // sendmsg failures other than "try again": datagram lost
};

UdpCounters& udp_counters() noexcept;

}  // namespace flatpipe::detail
