#include "flatpipe/transport/transport.hpp"

namespace flatpipe {

void TransportRegistry::add(std::shared_ptr<Transport> transport) {
  std::string scheme(transport->scheme());
  transports_[scheme] = std::move(transport);
}

Transport* TransportRegistry::find(std::string_view scheme) const {
  auto it = transports_.find(scheme);
  return it == transports_.end() ? nullptr : it->second.get();
}

std::vector<std::string> TransportRegistry::schemes() const {
  std::vector<std::string> out;
  for (const auto& kv : transports_) out.push_back(kv.first);
  return out;
}

TransportRegistry TransportRegistry::with_defaults() {
  TransportRegistry registry;
  registry.add(make_tcp_transport());
  registry.add(make_unix_transport());
  registry.add(make_shm_transport());
  registry.add(make_inproc_transport());
  registry.add(make_udp_transport());
  return registry;
}

}  // namespace flatpipe
