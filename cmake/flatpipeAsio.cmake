# Standalone asio (Debian: libasio-dev) as the INTERFACE imported target flatpipe::asio.
#
# Used by flatpipe's own build and by the installed flatpipeConfig.cmake, so both create the
# target the same way. Does not fail by itself: sets FLATPIPE_ASIO_FOUND and leaves the
# decision (FATAL_ERROR in the build, flatpipe_FOUND=FALSE in the package config) to the caller.

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
  return()
endif()

if(NOT TARGET Threads::Threads)
  find_package(Threads REQUIRED)
endif()

# GLOBAL so that a project that add_subdirectory()s flatpipe can link flatpipe::flatpipe from
# any directory. Imported include directories are treated as SYSTEM, so asio's own warnings
# never count against our -Werror.
add_library(flatpipe::asio INTERFACE IMPORTED GLOBAL)
set_target_properties(flatpipe::asio PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${FLATPIPE_ASIO_INCLUDE_DIR}"
  # ASIO_DISABLE_STD_ALIGNED_ALLOC: asio decides between aligned_alloc and operator new by
  # whether a libstdc++ header came before its own; translation units that differ would
  # allocate with one and free with the other (ASan: alloc-dealloc-mismatch).
  INTERFACE_COMPILE_DEFINITIONS "ASIO_STANDALONE;ASIO_NO_DEPRECATED;ASIO_DISABLE_STD_ALIGNED_ALLOC"
  INTERFACE_LINK_LIBRARIES "Threads::Threads")
set(FLATPIPE_ASIO_FOUND TRUE)
