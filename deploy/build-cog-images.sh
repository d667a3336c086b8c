#!/usr/bin/env bash
# The two Cog images (generation: cog.yaml, training: cog-train.yaml), built with the schemas this
# repository generates and tests, on a machine with Docker and Cog's CLI:
#   deploy/build-cog-images.sh                        # cog build -> lora-studio-lora:TAG, lora-studio-lora-training:TAG
#   deploy/build-cog-images.sh push r8.im/<you>       # cog push  -> r8.im/<you>/lora, r8.im/<you>/lora-training
# TAG is $IMAGE_TAG (default 0.1.0). Fetch the base weights first: lora-studio weights fetch sd-1.5
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-build}
prefix=${2:-}
tag=${IMAGE_TAG:-0.1.0}
case "$mode" in
  build) ;;
  push) [ -n "$prefix" ] || { echo "usage: $0 push REGISTRY/OWNER (e.g. r8.im/you)" >&2; exit 2; } ;;
  *) echo "usage: $0 [build | push REGISTRY/OWNER]" >&2; exit 2 ;;
esac

studio=lora-studio
[ -x .venv/bin/lora-studio ] && studio=.venv/bin/lora-studio
"$studio" schema --check  # the committed schemas are what the predictors' signatures give

want=$(sed -n 's/^ *sdk_version: *"\(.*\)"/\1/p' cog.yaml)
have=$(cog --version 2>/dev/null | head -n 1)
case "$have" in
  *"$want"*) ;;
  *) echo "warning: Cog CLI '$have' differs from build.sdk_version $want; the build may pick other CUDA/torch" >&2 ;;
esac
if [ ! -f weights/sd-1.5/model_index.json ]; then  # the images' default base (cog.yaml: environment)
  echo "error: weights/sd-1.5 is missing; the images load it at setup. Run: lora-studio weights fetch sd-1.5" >&2
  exit 1
fi

# Cog writes the schema it builds with to .cog/openapi_schema.json, the generation model's file: keep ours.
saved=$(mktemp)
cp .cog/openapi_schema.json "$saved"
trap 'cp "$saved" .cog/openapi_schema.json; rm -f "$saved"' EXIT

build_one() {  # config, model name, schema
  if [ "$mode" = push ]; then
    cog push -f "$1" --openapi-schema "$3" "$prefix/$2"
  else
    cog build -f "$1" --openapi-schema "$3" -t "lora-studio-$2:$tag"
  fi
}
build_one cog.yaml lora .cog/openapi_schema.json
cp "$saved" .cog/openapi_schema.json
build_one cog-train.yaml lora-training .cog/openapi_schema-cog-train.json
