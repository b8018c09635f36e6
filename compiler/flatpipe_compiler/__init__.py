"""flatpipe's schema compiler: FlatBuffers rpc_services -> typed C++20 stubs and skeletons.

The schema is parsed by libflatbuffers (the flatpipe_schema front end, C++); this package turns
the JSON model that front end prints into the small typed model of model.py and renders the
Jinja2 templates of templates/ with it.
"""

# Must equal the runtime's version (CMake project version): the generated code static_asserts
# that FLATPIPE_VERSION (flatpipe/config_version.hpp) is this one. A ctest test checks the two.
VERSION = "0.1.0"
