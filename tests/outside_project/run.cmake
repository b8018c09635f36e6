# Configures, builds and runs the outside project (this directory) against flatpipe, the way a
# user would: cmake -P run.cmake with
#   -DMODE=subdirectory -DFLATPIPE_SOURCE_DIR=<flatpipe sources>   (add_subdirectory)
#   -DMODE=installed    -DFLATPIPE_BUILD_DIR=<a built flatpipe>    (cmake --install, find_package)
# and -DWORK=<scratch dir> -DGENERATOR=... -DCXX=... -DPYTHON=<python with jinja2>.
# Registered in ctest with the labels compiler and outside_project.
cmake_minimum_required(VERSION 3.20)

foreach(var MODE WORK GENERATOR CXX PYTHON)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc STREQUAL "0")
    message(FATAL_ERROR "outside project (${MODE}): ${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/src")
# A copy of the project, so that the regeneration check below can edit its schema.
foreach(f CMakeLists.txt greeter.fbs main.cpp)
  file(COPY "${CMAKE_CURRENT_LIST_DIR}/${f}" DESTINATION "${WORK}/src")
endforeach()

set(configure_args
  -S "${WORK}/src" -B "${WORK}/build" -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX}"
  "-DCMAKE_BUILD_TYPE="
  "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Werror"
  "-DFLATPIPE_PYTHON=${PYTHON}")

if(MODE STREQUAL "subdirectory")
  list(APPEND configure_args "-DFLATPIPE_SOURCE_DIR=${FLATPIPE_SOURCE_DIR}")
elseif(MODE STREQUAL "installed")
  run_step("cmake --install" "${CMAKE_COMMAND}" --install "${FLATPIPE_BUILD_DIR}" --prefix "${WORK}/prefix")
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${WORK}/prefix")
else()
  message(FATAL_ERROR "run.cmake: MODE must be subdirectory or installed, not '${MODE}'")
endif()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
run_step("build" "${CMAKE_COMMAND}" --build "${WORK}/build" -j2)
run_step("run" "${CMAKE_COMMAND}" -E env "${WORK}/build/greeter")

set(expected "hello, blocking world\nhello, coroutine world\ntick 1\ntick 2\ntick 3\nstream: OK\n")
if(NOT step_output STREQUAL expected)
  message(FATAL_ERROR "outside project (${MODE}): unexpected output:\n${step_output}\nexpected:\n${expected}")
endif()

# Regeneration: a method added to the schema appears in the generated header on the next build.
file(READ "${WORK}/src/greeter.fbs" schema)
string(REPLACE "rpc_service Greeter {" "rpc_service Greeter {\n  Added(HelloRequest):HelloReply;" schema "${schema}")
file(WRITE "${WORK}/src/greeter.fbs" "${schema}")
run_step("rebuild" "${CMAKE_COMMAND}" --build "${WORK}/build" -j2)
file(READ "${WORK}/build/flatpipe_generated/greeter_rpc/greeter_flatpipe.hpp" header)
if(NOT header MATCHES "hello\\.Greeter\\.Added")
  message(FATAL_ERROR "outside project (${MODE}): editing the schema did not regenerate greeter_flatpipe.hpp")
endif()
# Regeneration through an include: extra.fbs uses a table of extra_types.fbs; touching only the
# included schema re-runs extra.fbs's generation (the depfile names it).
file(WRITE "${WORK}/src/extra_types.fbs" "namespace extra;\ntable Thing { x:int; }\n")
file(WRITE "${WORK}/src/extra.fbs" "include \"extra_types.fbs\";\nnamespace extra;\nrpc_service Things {\n  Get(Thing):Thing;\n}\n")
file(WRITE "${WORK}/src/extra.cpp" "#include \"extra_flatpipe.hpp\"\nint main() { return extra::Things::Ids::Get == 0; }\n")
file(APPEND "${WORK}/src/CMakeLists.txt" "flatpipe_generate(extra_rpc SCHEMAS extra.fbs extra_types.fbs)\nadd_executable(extra_check extra.cpp)\ntarget_link_libraries(extra_check PRIVATE extra_rpc)\n")
run_step("build with an include" "${CMAKE_COMMAND}" --build "${WORK}/build" -j2)
set(generated "${WORK}/build/flatpipe_generated/extra_rpc/extra_generated.h")
file(TIMESTAMP "${generated}" before "%s%f")
execute_process(COMMAND "${CMAKE_COMMAND}" -E sleep 1.1)
file(TOUCH "${WORK}/src/extra_types.fbs")
run_step("rebuild after touching the include" "${CMAKE_COMMAND}" --build "${WORK}/build" -j2)
file(TIMESTAMP "${generated}" after "%s%f")
if(before STREQUAL after)
  message(FATAL_ERROR "outside project (${MODE}): touching extra_types.fbs did not regenerate extra.fbs's code")
endif()

message(STATUS "outside project (${MODE}): ok")
