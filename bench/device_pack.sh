#!/usr/bin/env bash
# What `python -m bench --device cuda` needs beyond a bare GPU machine's own packages (torch, transformers, peft,
# safetensors, huggingface_hub, accelerate, pillow, requests: ../shared/NOTES-libraries.md; no diffusers, no
# pydantic, no registry), as the pinned wheels for that machine's Python, unpacked into .build/device-site.
# bench/__init__.py puts that folder at the end of sys.path: the machine's own packages win where both have one.
#   bench/device_pack.sh [PYTHON_VERSION]     # default 3.12 (the lent H200's)
# Then on the GPU machine, from the repository root, with .build/device-site carried (about 25 MB):
#   python -m bench --device cuda --out "$OUT/results-cuda.json"
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
site=.build/device-site
pins=$(grep -iE '^(diffusers|importlib_metadata|zipp|pydantic|pydantic_core|pydantic-settings|python-dotenv|typing-inspection|annotated-types|typing_extensions)==' requirements.txt)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# shellcheck disable=SC2086  # one argument per pin
pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$wheels" $pins
rm -rf "$site" && mkdir -p "$site"
for wheel in "$wheels"/*.whl; do
  python3 -m zipfile -e "$wheel" "$site"
done
echo "$site: $(find "$site" -maxdepth 1 -name '*.dist-info' | wc -l) packages, $(du -sh "$site" | cut -f1)"
