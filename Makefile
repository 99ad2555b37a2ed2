# The two commands a user needs: `make demo` and `make test`. Both install what is missing.
.PHONY: setup build images demo test bench clean

setup:
	scripts/setup.sh

build: setup
	cargo build --workspace --release

# The bot and controller images (recfleet-bot:dev, recfleet:dev), from nothing if need be.
images: build
	container/build.sh

demo: build
	target/release/recfleet demo

test: build images
	cargo nextest run --workspace --release

bench: build images
	python3 bench/record_bench.py
	python3 bench/controller_bench.py
	python3 bench/upload_bench.py
	python3 bench/docker_bench.py

clean:
	rm -rf target demo-output
