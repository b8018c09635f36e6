#include "flatpipe/transport/endpoint.hpp"

#include <charconv>

namespace flatpipe {

Result<Endpoint> Endpoint::parse(std::string_view uri) {
  const auto sep = uri.find("://");
  if (sep == std::string_view::npos || sep == 0) {
    return Status(StatusCode::invalid_argument,
                  "endpoint '" + std::string(uri) + "' is not of the form scheme://address");
  }
  Endpoint ep;
  ep.scheme = std::string(uri.substr(0, sep));
  for (char& c : ep.scheme) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  std::string_view rest = uri.substr(sep + 3);
  const auto q = rest.find('?');
  ep.address = std::string(rest.substr(0, q));
  if (ep.address.empty()) {
    return Status(StatusCode::invalid_argument, "endpoint '" + std::string(uri) + "' has no address");
  }
  if (q != std::string_view::npos) {
    std::string_view query = rest.substr(q + 1);
    while (!query.empty()) {
      const auto amp = query.find('&');
      std::string_view kv = query.substr(0, amp);
      if (!kv.empty()) {
        const auto eq = kv.find('=');
        ep.params.emplace_back(std::string(kv.substr(0, eq)),
                               eq == std::string_view::npos ? std::string() : std::string(kv.substr(eq + 1)));
      }
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
  }
  return ep;
}

std::string Endpoint::param(std::string_view key, std::string_view fallback) const {
  for (const auto& [k, v] : params) {
    if (k == key) return v;
  }
  return std::string(fallback);
}

bool Endpoint::has_param(std::string_view key) const {
  for (const auto& kv : params) {
    if (kv.first == key) return true;
  }
  return false;
}

std::string Endpoint::to_string() const {
  std::string out = scheme + "://" + address;
  char sep = '?';
  for (const auto& [k, v] : params) {
    out += sep;
    out += k;
    if (!v.empty()) out += "=" + v;
    sep = '&';
  }
  return out;
}

namespace {

Status bad_address(std::string_view address, std::string_view what) {
  std::string text;
  text.reserve(address.size() + what.size() + 3);
  text.append(1, '\'').append(address).append("' ").append(what);
  return Status(StatusCode::invalid_argument, std::move(text));
}

}  // namespace

Result<std::pair<std::string, unsigned short>> split_host_port(std::string_view address) {
  std::string_view host;
  std::string_view port;
  if (!address.empty() && address.front() == '[') {
    const auto close = address.find(']');
    if (close == std::string_view::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return bad_address(address, "is not [ipv6]:port");
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const auto colon = address.rfind(':');
    if (colon == std::string_view::npos) {
      return bad_address(address, "has no :port");
    }
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  unsigned value = 0;
  const auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (host.empty() || port.empty() || ec != std::errc() || ptr != port.data() + port.size() || value > 65535) {
    return bad_address(address, "has no valid host:port");
  }
  return std::pair<std::string, unsigned short>{std::string(host), static_cast<unsigned short>(value)};
}

}  // namespace flatpipe
