# flatpipe_generate(<target> SCHEMAS a.fbs [b.fbs ...]
#                   [INCLUDE_DIRS dir ...] [OUTPUT_DIR dir] [FLATC_ARGS arg ...])
#
# Runs flatc (--cpp --gen-object-api --gen-name-strings) and the flatpipe compiler on each schema
# and creates <target>, an INTERFACE library that carries the generated headers' directory and
# links flatpipe::flatpipe. For a.fbs it generates a_generated.h and a_flatpipe.hpp. List every
# schema whose generated code you use, included ones too (flatc's a_generated.h includes
# b_generated.h for `include "b.fbs";`).
#
# Regenerated when a schema, a schema it includes (the compiler writes a depfile; the installed
# front end also lists them at configure time), a template or the generator changes.
#
# Used from flatpipe's own build (add_subdirectory) and from the installed package
# (find_package(flatpipe)); the caller sets, before including this file:
#   FLATPIPE_COMPILER_PYTHONPATH  the directory holding the flatpipe_compiler package
#   FLATPIPE_TEMPLATES_DIR        the templates
# and provides the executable target flatpipe::flatpipe_schema (the front end).

include_guard(GLOBAL)

# Kept as global properties: a project that add_subdirectory()s flatpipe calls flatpipe_generate
# from directories where flatpipe's variables are not visible.
if(NOT FLATPIPE_COMPILER_PYTHONPATH OR NOT FLATPIPE_TEMPLATES_DIR)
  message(FATAL_ERROR "flatpipeGenerate.cmake: set FLATPIPE_COMPILER_PYTHONPATH and FLATPIPE_TEMPLATES_DIR before including it")
endif()
set_property(GLOBAL PROPERTY FLATPIPE_COMPILER_PYTHONPATH "${FLATPIPE_COMPILER_PYTHONPATH}")
set_property(GLOBAL PROPERTY FLATPIPE_TEMPLATES_DIR "${FLATPIPE_TEMPLATES_DIR}")

# A Python 3 that can import jinja2: FLATPIPE_PYTHON if set, else python3 on PATH, else Debian's
# /usr/bin/python3 (python3-jinja2). Cached in FLATPIPE_PYTHON_EXECUTABLE.
function(_flatpipe_find_python)
  if(FLATPIPE_PYTHON_EXECUTABLE)
    return()
  endif()
  set(candidates)
  if(FLATPIPE_PYTHON)
    list(APPEND candidates "${FLATPIPE_PYTHON}")
  endif()
  find_program(_flatpipe_python3_on_path NAMES python3 NO_CACHE)
  if(_flatpipe_python3_on_path)
    list(APPEND candidates "${_flatpipe_python3_on_path}")
  endif()
  list(APPEND candidates /usr/bin/python3)
  foreach(candidate IN LISTS candidates)
    if(EXISTS "${candidate}")
      execute_process(
        COMMAND "${candidate}" -c "import sys, jinja2; sys.exit(0 if sys.version_info >= (3, 8) else 1)"
        RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
      if(rc EQUAL 0)
        set(FLATPIPE_PYTHON_EXECUTABLE "${candidate}" CACHE FILEPATH "Python 3 with Jinja2, for the flatpipe compiler")
        message(STATUS "flatpipe: compiler Python: ${candidate}")
        return()
      endif()
    endif()
  endforeach()
  message(FATAL_ERROR "flatpipe_generate needs Python 3 with Jinja2; none of [${candidates}] can import "
                      "jinja2. Install it (Debian: apt-get install python3-jinja2, or scripts/install-deps.sh) "
                      "or set FLATPIPE_PYTHON to an interpreter that has it.")
endfunction()

function(_flatpipe_find_flatc out)
  if(TARGET flatbuffers::flatc)
    set(${out} "$<TARGET_FILE:flatbuffers::flatc>" PARENT_SCOPE)
    return()
  endif()
  find_program(FLATPIPE_FLATC flatc)
  if(NOT FLATPIPE_FLATC)
    message(FATAL_ERROR "flatpipe_generate needs flatc (Debian: flatbuffers-compiler)")
  endif()
  set(${out} "${FLATPIPE_FLATC}" PARENT_SCOPE)
endfunction()

function(flatpipe_generate target)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "OUTPUT_DIR" "SCHEMAS;INCLUDE_DIRS;FLATC_ARGS")
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "flatpipe_generate(${target}): unexpected arguments: ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT ARG_SCHEMAS)
    message(FATAL_ERROR "flatpipe_generate(${target}): no SCHEMAS given")
  endif()
  if(NOT TARGET flatpipe::flatpipe_schema)
    message(FATAL_ERROR "flatpipe_generate(${target}): the front end target flatpipe::flatpipe_schema is missing")
  endif()
  get_property(FLATPIPE_COMPILER_PYTHONPATH GLOBAL PROPERTY FLATPIPE_COMPILER_PYTHONPATH)
  get_property(FLATPIPE_TEMPLATES_DIR GLOBAL PROPERTY FLATPIPE_TEMPLATES_DIR)
  _flatpipe_find_python()
  _flatpipe_find_flatc(flatc)

  if(NOT ARG_OUTPUT_DIR)
    set(ARG_OUTPUT_DIR "${CMAKE_CURRENT_BINARY_DIR}/flatpipe_generated/${target}")
  endif()
  file(MAKE_DIRECTORY "${ARG_OUTPUT_DIR}")

  set(include_args)
  foreach(dir IN LISTS ARG_INCLUDE_DIRS)
    get_filename_component(dir "${dir}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND include_args -I "${dir}")
  endforeach()

  # The generator and its templates: a change to any of them regenerates.
  file(GLOB generator_files CONFIGURE_DEPENDS
    "${FLATPIPE_COMPILER_PYTHONPATH}/flatpipe_compiler/*.py"
    "${FLATPIPE_TEMPLATES_DIR}/*.j2")

  get_target_property(frontend_imported flatpipe::flatpipe_schema IMPORTED)
  if(frontend_imported)
    set(frontend_dep "$<TARGET_FILE:flatpipe::flatpipe_schema>")
  else()
    get_target_property(frontend_dep flatpipe::flatpipe_schema ALIASED_TARGET)
  endif()

  set(outputs)
  foreach(schema IN LISTS ARG_SCHEMAS)
    get_filename_component(schema "${schema}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT EXISTS "${schema}")
      message(FATAL_ERROR "flatpipe_generate(${target}): schema ${schema} does not exist")
    endif()
    get_filename_component(stem "${schema}" NAME_WE)
    set(flatc_out "${ARG_OUTPUT_DIR}/${stem}_generated.h")
    set(flatpipe_out "${ARG_OUTPUT_DIR}/${stem}_flatpipe.hpp")
    set(depfile "${ARG_OUTPUT_DIR}/${stem}_flatpipe.d")

    # With an installed front end the included schemas are known now; in flatpipe's own build
    # the front end is not built yet, and the depfile written at build time covers them.
    set(included)
    if(frontend_imported)
      get_target_property(frontend_exe flatpipe::flatpipe_schema IMPORTED_LOCATION)
      if(NOT frontend_exe)
        get_target_property(frontend_configs flatpipe::flatpipe_schema IMPORTED_CONFIGURATIONS)
        list(GET frontend_configs 0 frontend_config)
        get_target_property(frontend_exe flatpipe::flatpipe_schema IMPORTED_LOCATION_${frontend_config})
      endif()
      execute_process(
        COMMAND "${frontend_exe}" ${include_args} --deps "${schema}"
        RESULT_VARIABLE rc OUTPUT_VARIABLE deps_out ERROR_VARIABLE deps_err)
      if(NOT rc STREQUAL "0")
        message(FATAL_ERROR "flatpipe_generate(${target}):\n${deps_err}")
      endif()
      string(REPLACE "\n" ";" included "${deps_out}")
      list(FILTER included EXCLUDE REGEX "^$")
      # Re-list them when one of them changes (an include added or removed).
      set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${included})
    endif()

    add_custom_command(
      OUTPUT "${flatc_out}" "${flatpipe_out}"
      COMMAND "${flatc}" --cpp --gen-object-api --gen-name-strings ${ARG_FLATC_ARGS}
              -o "${ARG_OUTPUT_DIR}" ${include_args} "${schema}"
      COMMAND "${CMAKE_COMMAND}" -E env "PYTHONPATH=${FLATPIPE_COMPILER_PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
              "${FLATPIPE_PYTHON_EXECUTABLE}" -m flatpipe_compiler
              --frontend "$<TARGET_FILE:flatpipe::flatpipe_schema>" ${include_args} "${schema}"
              --templates "${FLATPIPE_TEMPLATES_DIR}" --out-dir "${ARG_OUTPUT_DIR}"
              --depfile "${depfile}" --depfile-target "${flatc_out}"
      DEPENDS "${schema}" ${included} ${generator_files} ${frontend_dep}
      DEPFILE "${depfile}"
      COMMENT "flatpipe: generating ${stem}_generated.h and ${stem}_flatpipe.hpp"
      VERBATIM)
    list(APPEND outputs "${flatc_out}" "${flatpipe_out}")
  endforeach()

  add_custom_target(${target}_generate DEPENDS ${outputs})
  add_library(${target} INTERFACE)
  add_dependencies(${target} ${target}_generate)
  target_include_directories(${target} INTERFACE "${ARG_OUTPUT_DIR}")
  target_link_libraries(${target} INTERFACE flatpipe::flatpipe)
  set_property(TARGET ${target} PROPERTY FLATPIPE_GENERATED_DIR "${ARG_OUTPUT_DIR}")
endfunction()
