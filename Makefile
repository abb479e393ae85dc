# autotel: `sudo make run` sets up, builds and runs the agent;
#          `sudo make test` runs every test (unit, lint, integration as root).
CARGO ?= cargo
PYTHON ?= python3
BIN := target/release/autotel

.PHONY: setup build run test unit lint integration fuzz-smoke clean

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --release

run: setup build
	./$(BIN) run $(if $(CONFIG),--config $(CONFIG))

unit:
	$(CARGO) test --workspace --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --release --all-targets -- -D warnings
	# The fuzz crate is outside the workspace: type-check its targets here too.
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins

integration: build
	$(PYTHON) -m pytest tests/integration -v -p no:cacheprovider

# A short bounded run of every fuzz target, seeded with the captured traffic
# in testdata/. cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the
# stable toolchain (the only one here) accept them.
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := http1 http2 postgres mysql redis memcached sql dns tls go_binary openssl_binary
fuzz-smoke:
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t && \
	  seeds=$$( [ -d ../testdata/$$t ] && echo ../testdata/$$t ); \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t $$seeds -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

test: setup build lint unit integration fuzz-smoke

clean:
	$(CARGO) clean
