// flatpipe: typed RPC over FlatBuffers. This header brings in the whole public runtime API.
#pragma once

#include "flatpipe/buffer.hpp"
#include "flatpipe/log.hpp"
#include "flatpipe/message.hpp"
#include "flatpipe/rpc/call.hpp"
#include "flatpipe/rpc/client.hpp"
#include "flatpipe/rpc/server.hpp"
#include "flatpipe/rpc/server_call.hpp"
#include "flatpipe/rpc/session.hpp"
#include "flatpipe/rpc/typed.hpp"
#include "flatpipe/runtime.hpp"
#include "flatpipe/status.hpp"
#include "flatpipe/transport/endpoint.hpp"
#include "flatpipe/transport/transport.hpp"
#include "flatpipe/wire/frame.hpp"
