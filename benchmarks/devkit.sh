#!/usr/bin/env bash
# Builds .devkit/ (git-ignored): what a lent GPU machine lacks to run mergesweep's GPU tests and
# benchmarks (benchmarks/device_run.sh). That machine has Python 3.12 with torch, transformers,
# numpy, pandas, pyarrow, scikit-learn, pytest..., but no optuna, Ray or datasets, and no network.
#
#   bash benchmarks/devkit.sh            # run here, from the repo root, after `make install`
#
# Then one device call carries it: run(command="bash benchmarks/device_run.sh",
# carry=[".devkit"], timeout_s=540). The kit stays under the tool's 64 MiB: Ray's wheel (79 MB)
# travels as an xz tarball without its Java jars, RLlib, Serve and LLM parts (~31 MB).
# KIT_PYTHON=3.11 builds the kit for a Python 3.11 stand-in of that machine (to check it here).
set -euo pipefail
PY=${KIT_PYTHON:-3.12}
KIT=${KIT_DIR:-.devkit}  # KIT_DIR: build it elsewhere (a rehearsal tree)
PIP=".venv/bin/python -m pip"
test -x .venv/bin/python || { echo "devkit.sh: run 'make install' first" >&2; exit 2; }
# The versions the test suite runs with here, for every package the GPU machine lacks.
MISSING="optuna alembic mako colorlog sqlalchemy cmaes datasets dill multiprocess
  jsonschema jsonschema-specifications referencing rpds-py"
rm -rf "$KIT/whl" "$KIT/ray" && mkdir -p "$KIT/whl" "$KIT/ray"
pins=()
for name in $MISSING; do
  version=$($PIP show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  test -n "$version" || { echo "devkit.sh: $name is not installed in .venv" >&2; exit 2; }
  pins+=("$name==$version")
done
ray_version=$($PIP show ray | sed -n 's/^Version: //p')
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${p}_x86_64")
done
$PIP download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  "${platforms[@]}" -d "$KIT/whl" "${pins[@]}" "ray==$ray_version"
# Ray: unpacked without the parts a local, Python-only Ray never loads, then xz-compressed.
ray_wheel=$(ls "$KIT"/whl/ray-*.whl)
unzip -q "$ray_wheel" -d "$KIT/ray/unpacked" # keeps raylet's and gcs_server's executable bits
rm -rf "$KIT"/ray/unpacked/ray/{jars,rllib,serve,llm} "$ray_wheel"
tar -C "$KIT/ray/unpacked" -cf - . | xz -T0 -6 >"$KIT/ray.tar.xz"
rm -rf "$KIT/ray"
# The digits zoo (the quick start's and the GPU tests'), from the cache or built now.
zoo=$(.venv/bin/python -c 'from mergesweep.zoo import ensure_zoo; print(ensure_zoo("digits"))')
rm -rf "$KIT/cache" && mkdir -p "$KIT/cache/zoo" && cp -r "$zoo" "$KIT/cache/zoo/"
echo "$KIT: $(du -sm "$KIT" | cut -f1) MiB for Python $PY ($(ls "$KIT/whl" | wc -l) wheels, Ray $ray_version, zoo $(basename "$zoo"))"
