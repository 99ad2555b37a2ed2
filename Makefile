# The two commands a user needs: `make demo` and `make test`. Both install what is missing.
.PHONY: setup lint build images demo test bench clean

setup:
	scripts/setup.sh

# Formatting and lints first, so a slip fails in seconds rather than after the build.
lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --release -- -D warnings

build: setup
	cargo build --workspace --release

# The bot and controller images (recfleet-bot:dev, recfleet:dev), from nothing if need be.
images: build
	container/build.sh

demo: build
	target/release/recfleet demo

# `sync` first: the build and the images leave gigabytes of dirty pages, and their writeback
# starved the first tests' Chromium (no DevTools line within 15 s, once). Then the recording
# tools are read into the page cache (scripts/prewarm.sh), so the first test is not the cold one.
test: lint build images
	sync
	scripts/prewarm.sh
	cargo nextest run --workspace --release

bench: build images
	python3 bench/record_bench.py
	python3 bench/controller_bench.py
	python3 bench/upload_bench.py
	python3 bench/docker_bench.py
	python3 bench/takeover_bench.py
	python3 bench/fleet_bench.py
	python3 bench/ecs_bench.py
	python3 bench/faults_bench.py

clean:
	rm -rf target demo-output
