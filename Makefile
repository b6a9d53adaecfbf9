# Common entry points; each is a plain command you can also run by hand (see README.md).
PY ?= python3

.PHONY: install demo test ctest bench clean

install:
	bash scripts/install.sh

demo: install
	xgenmm-fast demo

test: install
	$(PY) -m pytest tests -q

ctest:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release && cmake --build build/cmake -j2 && ctest --test-dir build/cmake --output-on-failure

bench: install
	bash scripts/cpu_bench.sh benchmarks/results

clean:
	rm -rf build *.egg-info xgenmm_fast/*.so runs
