#!/usr/bin/env bash
# Vendors OpenSeadragon (the slide viewer of the web app) from the npm registry into the
# app's static files: the minified build, its button images and its licence (BSD-3-Clause).
# The result is committed; run again (`make vendor-openseadragon`) to change the version.
set -euo pipefail

VERSION="${OPENSEADRAGON_VERSION:-6.1.1}"
# `npm view openseadragon@6.1.1 dist.integrity`; npm pack checks the tarball against it.
INTEGRITY="sha512-g4iKe2q8B642SaBT3+x4ZF3/8b1TxPPydyjmtrOLgDrlYWMKd9ZXM+1Cb/xa9DVySkvs/7l6HR1nHKfD5F3Tsw=="
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="$ROOT/serving/webapp/static/openseadragon"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "openseadragon@$VERSION" >/dev/null
tarball="openseadragon-$VERSION.tgz"
actual="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [[ "$VERSION" == 6.1.1 && "$actual" != "$INTEGRITY" ]]; then
  echo "openseadragon-$VERSION.tgz: integrity $actual, expected $INTEGRITY" >&2
  exit 1
fi
tar xzf "$tarball"
staging="$TARGET.tmp"
rm -rf "$staging"
mkdir -p "$staging"
cp package/build/openseadragon/openseadragon.min.js "$staging/"
cp -r package/build/openseadragon/images "$staging/images"
cp package/LICENSE.txt "$staging/LICENSE.txt"
echo "$VERSION" > "$staging/VERSION"
rm -rf "$TARGET"
mv "$staging" "$TARGET"
echo "OpenSeadragon $VERSION -> $TARGET"
