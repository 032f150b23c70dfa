# crew - a thin wrapper over CMake. `make help` lists the targets.
#
# make            build the optimised tree in build/release
# make demo       build, then run the crew command on its demo jobs (cli/demo.jobs)
# make demo-pool  build, then run the pool demo (examples/demo.c)
# make test       clang-format check, then the whole suite three times: optimised (gcc),
#                 under ThreadSanitizer (gcc), under ASan+LSan+UBSan (clang)
# make bench      build and run the side-by-side benchmarks (figures, never assertions)
# make install    install into PREFIX (default /usr/local)

PREFIX ?= /usr/local
JOBS ?= $(shell nproc)
# Stress tests run this many times their base length (rounds, jobs, seconds) in make test.
export CREW_STRESS_SCALE ?= 4
CMAKE ?= cmake
SOURCES = $(shell git ls-files '*.c' '*.h' 2>/dev/null || find include src tests bench examples cli -name '*.[ch]')

.PHONY: all build demo demo-pool test test-release test-tsan test-asan format format-check bench install clean help

all: build

build:
	@$(CMAKE) -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=gcc >/dev/null
	@$(CMAKE) --build build/release -j $(JOBS)

# The demo's exit status is the number of failed jobs, as GNU parallel's: one, the job its
# --timeout stops.
demo: build
	@./build/release/cli/crew -k -j4 --bar --timeout 1s --retries 1 --retry-delay 100ms \
		-a cli/demo.jobs; st=$$?; \
	echo "demo: crew exited with status $$st: the number of failed jobs (the one --timeout stopped)"; \
	[ $$st -le 1 ]

demo-pool: build
	./build/release/examples/demo

# One build tree per flavour; every tree runs the whole suite.
test: format-check test-release test-tsan test-asan
	@echo "make test: all three builds passed"

test-release:
	@$(CMAKE) -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=gcc >/dev/null
	@$(CMAKE) --build build/release -j $(JOBS)
	cd build/release && ctest --output-on-failure -j $(JOBS)

test-tsan:
	@$(CMAKE) -S . -B build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc \
		-DCREW_SANITIZE=thread >/dev/null
	@$(CMAKE) --build build/tsan -j $(JOBS)
	cd build/tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
		ctest --output-on-failure -j $(JOBS)

test-asan:
	@$(CMAKE) -S . -B build/asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
		-DCREW_SANITIZE=address >/dev/null
	@$(CMAKE) --build build/asan -j $(JOBS)
	cd build/asan && ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
		UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" ctest --output-on-failure -j $(JOBS)

format:
	clang-format -i $(SOURCES)

format-check:
	@clang-format --dry-run -Werror $(SOURCES)
	@echo "clang-format: clean"

bench:
	@$(CMAKE) -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=gcc \
		-DCREW_BUILD_BENCH=ON -DCREW_BUILD_TESTS=OFF >/dev/null
	@$(CMAKE) --build build/bench -j $(JOBS)
	./bench/run build/bench
	@for s in bench/run-*; do [ -x "$$s" ] && "$$s" build/bench || true; done

install: build
	$(CMAKE) --install build/release --prefix $(PREFIX)

clean:
	rm -rf build

help:
	@sed -n '3,9p' Makefile
