# The generated header refuses to compile against a runtime of another version: a copy of
# everything_flatpipe.hpp that claims another generator version must fail with the static_assert's
# message, while the unmodified header compiles. cmake -P with -DCXX= -DHEADER= -DWORK= and
# -DINCLUDES="dir;dir;..." (the generated dir, the runtime's include dirs, asio's).
cmake_minimum_required(VERSION 3.20)

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/same" "${WORK}/other")
file(READ "${HEADER}" header)
string(REGEX MATCH "FLATPIPE_VERSION == [0-9]+" check "${header}")
if(NOT check)
  message(FATAL_ERROR "${HEADER} has no FLATPIPE_VERSION check")
endif()
string(REPLACE "${check}" "FLATPIPE_VERSION == 999999" other "${header}")
file(WRITE "${WORK}/same/everything_flatpipe.hpp" "${header}")
file(WRITE "${WORK}/other/everything_flatpipe.hpp" "${other}")
file(WRITE "${WORK}/tu.cpp" "#include \"everything_flatpipe.hpp\"\nint main() { return 0; }\n")

# The copies' directory comes first, before the directory of the original header.
set(flags -std=c++20 -fsyntax-only -DASIO_STANDALONE -DASIO_NO_DEPRECATED)
set(include_flags)
foreach(dir IN LISTS INCLUDES)
  list(APPEND include_flags "-I${dir}")
endforeach()

execute_process(COMMAND "${CXX}" ${flags} "-I${WORK}/same" ${include_flags} "${WORK}/tu.cpp"
  RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the generated header does not compile:\n${err}")
endif()
execute_process(COMMAND "${CXX}" ${flags} "-I${WORK}/other" ${include_flags} "${WORK}/tu.cpp"
  RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "a header generated for another flatpipe version compiled")
endif()
if(NOT err MATCHES "regenerate it with that version's compiler")
  message(FATAL_ERROR "the version mismatch did not fail with the static_assert's message:\n${err}")
endif()
message(STATUS "version check: ok")
