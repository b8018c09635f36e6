# Standalone asio (Debian: libasio-dev) as the INTERFACE imported target flatpipe::asio.
#
# Used by flatpipe's own build and by the installed flatpipeConfig.cmake, so both create the
# target the same way. Does not fail by itself: sets FLATPIPE_ASIO_FOUND and leaves the
# decision (FATAL_ERROR in the build, flatpipe_FOUND=FALSE in the package config) to the caller,
# with the reason in FLATPIPE_ASIO_NOT_FOUND_MESSAGE.
#
# FLATPIPE_ASIO_IO_URING (set by the caller: the FLATPIPE_IO_URING option, or the value the
# installed package was built with): asio's io_uring backend in place of epoll. The definitions
# are part of flatpipe::asio's interface, so every translation unit that includes asio through
# flatpipe agrees on the backend (asio is header-only: mixing them would break the ODR).

if(TARGET flatpipe::asio)
  set(FLATPIPE_ASIO_FOUND TRUE)
  return()
endif()

find_path(FLATPIPE_ASIO_INCLUDE_DIR
  NAMES asio.hpp
  DOC "Directory containing the standalone asio header asio.hpp (Debian: libasio-dev)")
mark_as_advanced(FLATPIPE_ASIO_INCLUDE_DIR)

if(NOT FLATPIPE_ASIO_INCLUDE_DIR)
  set(FLATPIPE_ASIO_FOUND FALSE)
  set(FLATPIPE_ASIO_NOT_FOUND_MESSAGE
    "standalone asio (asio.hpp) not found: install libasio-dev (scripts/install-deps.sh) or set FLATPIPE_ASIO_INCLUDE_DIR")
  return()
endif()

set(_flatpipe_asio_definitions "ASIO_STANDALONE;ASIO_NO_DEPRECATED;ASIO_DISABLE_STD_ALIGNED_ALLOC")
set(_flatpipe_asio_includes "${FLATPIPE_ASIO_INCLUDE_DIR}")
set(_flatpipe_asio_libraries "Threads::Threads")
if(FLATPIPE_ASIO_IO_URING)
  find_path(FLATPIPE_LIBURING_INCLUDE_DIR NAMES liburing.h DOC "liburing's header (Debian: liburing-dev)")
  find_library(FLATPIPE_LIBURING_LIBRARY NAMES uring DOC "liburing (Debian: liburing-dev)")
  mark_as_advanced(FLATPIPE_LIBURING_INCLUDE_DIR FLATPIPE_LIBURING_LIBRARY)
  if(NOT FLATPIPE_LIBURING_INCLUDE_DIR OR NOT FLATPIPE_LIBURING_LIBRARY)
    set(FLATPIPE_ASIO_FOUND FALSE)
    set(FLATPIPE_ASIO_NOT_FOUND_MESSAGE
      "FLATPIPE_IO_URING needs liburing (liburing.h, liburing.so): install liburing-dev (scripts/install-deps.sh)")
    return()
  endif()
  list(APPEND _flatpipe_asio_includes "${FLATPIPE_LIBURING_INCLUDE_DIR}")
  list(APPEND _flatpipe_asio_definitions "ASIO_HAS_IO_URING" "ASIO_DISABLE_EPOLL")
  list(APPEND _flatpipe_asio_libraries "${FLATPIPE_LIBURING_LIBRARY}")
endif()

if(NOT TARGET Threads::Threads)
  find_package(Threads REQUIRED)
endif()

# GLOBAL so that a project that add_subdirectory()s flatpipe can link flatpipe::flatpipe from
# any directory. Imported include directories are treated as SYSTEM, so asio's own warnings
# never count against our -Werror.
add_library(flatpipe::asio INTERFACE IMPORTED GLOBAL)
set_target_properties(flatpipe::asio PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_flatpipe_asio_includes}"
  # ASIO_DISABLE_STD_ALIGNED_ALLOC: asio decides between aligned_alloc and operator new by
  # whether a libstdc++ header came before its own; translation units that differ would
  # allocate with one and free with the other (ASan: alloc-dealloc-mismatch).
  INTERFACE_COMPILE_DEFINITIONS "${_flatpipe_asio_definitions}"
  INTERFACE_LINK_LIBRARIES "${_flatpipe_asio_libraries}")
set(FLATPIPE_ASIO_FOUND TRUE)
