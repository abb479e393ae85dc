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

integration: build
	$(PYTHON) -m pytest tests/integration -v -p no:cacheprovider

test: setup build lint unit integration

clean:
	$(CARGO) clean
