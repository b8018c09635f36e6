# Convenience entry points around CMake. `make test` is what CI runs (.ci/run).
#
#   make deps       install missing Debian packages (cheap when everything is present)
#   make build      configure (once) and build into build/
#   make test       deps + build + ctest
#   make demo       deps + build + scripts/demo.sh (echo example over tcp and unix)
#   make asan/tsan  sanitizer builds in build-asan/ and build-tsan/, then ctest
#   make bench      deps + optional bench packages (gRPC, gnuplot), Release build in build-bench/,
#                   then bench/run_bench.py: every figure, ratio and target (~5 min on 2 cores);
#                   BENCH_ARGS=--json for JSON; chart in docs/bench.png
#   make install    install build/ into $(PREFIX) (default /usr/local)
#
# Overridable: BUILD_TYPE (RelWithDebInfo), BUILD_DIR (build), PREFIX, JOBS, CMAKE_ARGS,
# BENCH_DIR (build-bench), BENCH_ARGS.

BUILD_TYPE ?= RelWithDebInfo
BUILD_DIR  ?= build
ASAN_DIR   ?= build-asan
TSAN_DIR   ?= build-tsan
BENCH_DIR  ?= build-bench
BENCH_ARGS ?=
PREFIX     ?= /usr/local
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE      ?= cmake
CTEST      ?= ctest
CMAKE_ARGS ?=
CTEST_FLAGS = --output-on-failure --no-tests=error -j2 --timeout 300

# Sanitizer runtime settings: stop at the first report so ctest sees the failure.
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1:check_initialization_order=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

# Prerequisites run one after the other, in the order written (deps before build);
# cmake --build parallelises the compilation itself.
.NOTPARALLEL:
MAKEFLAGS += --no-print-directory

.PHONY: all deps configure build test demo asan tsan bench install clean

all: build

deps:
	@bash scripts/install-deps.sh

# Configure only when the build directory is not configured yet (or BUILD_TYPE changed);
# afterwards `cmake --build` re-runs CMake by itself whenever a CMakeLists.txt changes.
configure:
	@if [ ! -f "$(BUILD_DIR)/CMakeCache.txt" ] || \
	    ! grep -qx 'CMAKE_BUILD_TYPE:STRING=$(BUILD_TYPE)' "$(BUILD_DIR)/CMakeCache.txt"; then \
	  echo "$(CMAKE) -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)"; \
	  $(CMAKE) -S . -B "$(BUILD_DIR)" -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS); \
	fi

build: configure
	$(CMAKE) --build "$(BUILD_DIR)" -j$(JOBS)

test: deps build
	$(CTEST) --test-dir "$(BUILD_DIR)" $(CTEST_FLAGS)

demo: deps build
	FLATPIPE_BUILD_DIR="$(BUILD_DIR)" bash scripts/demo.sh

asan: deps
	$(CMAKE) -S . -B "$(ASAN_DIR)" -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DFLATPIPE_SANITIZE_ADDRESS=ON $(CMAKE_ARGS)
	$(CMAKE) --build "$(ASAN_DIR)" -j$(JOBS)
	$(ASAN_ENV) $(CTEST) --test-dir "$(ASAN_DIR)" $(CTEST_FLAGS)

tsan: deps
	$(CMAKE) -S . -B "$(TSAN_DIR)" -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DFLATPIPE_SANITIZE_THREAD=ON $(CMAKE_ARGS)
	$(CMAKE) --build "$(TSAN_DIR)" -j$(JOBS)
	$(TSAN_ENV) $(CTEST) --test-dir "$(TSAN_DIR)" $(CTEST_FLAGS)

# Release build of the benchmarks only. The optional packages (gRPC, gnuplot) never fail the
# target; short targets never fail it either.
bench: deps
	@bash scripts/install-deps.sh --bench
	$(CMAKE) -S . -B "$(BENCH_DIR)" -DCMAKE_BUILD_TYPE=Release -DFLATPIPE_BUILD_BENCH=ON \
	  -DFLATPIPE_BUILD_TESTS=OFF -DFLATPIPE_BUILD_EXAMPLES=OFF $(CMAKE_ARGS)
	$(CMAKE) --build "$(BENCH_DIR)" -j$(JOBS)
	python3 bench/run_bench.py --build-dir "$(BENCH_DIR)" $(BENCH_ARGS)

install: build
	$(CMAKE) --install "$(BUILD_DIR)" --prefix "$(PREFIX)"

clean:
	rm -rf "$(BUILD_DIR)" "$(ASAN_DIR)" "$(TSAN_DIR)" "$(BENCH_DIR)"
