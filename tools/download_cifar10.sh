#!/usr/bin/env bash
# Downloads the official CIFAR-10 binary archive, checks its MD5 and extracts it (needs a network).
#   tools/download_cifar10.sh [DIR]     DIR defaults to data/
# Leaves DIR/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, which load_cifar10 reads
# given either DIR or DIR/cifar-10-batches-bin. A good archive already in DIR is not fetched again.
set -euo pipefail

URL=https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
MD5=c32a1d4ab5d03f1284b67883e8d87530
DIR=${1:-data}
ARCHIVE="$DIR/cifar-10-binary.tar.gz"

mkdir -p "$DIR"
archive_ok() { [ -f "$ARCHIVE" ] && echo "$MD5  $ARCHIVE" | md5sum --check --status; }

if ! archive_ok; then
  echo "downloading $URL (about 163 MB) to $ARCHIVE"
  # Into a .part file first, so an interrupted download never passes for the archive.
  if command -v curl >/dev/null; then
    curl --fail --location --retry 3 --output "$ARCHIVE.part" "$URL"
  elif command -v wget >/dev/null; then
    wget --tries=3 --output-document="$ARCHIVE.part" "$URL"
  else
    echo "error: neither curl nor wget is installed (sudo apt-get install curl)" >&2
    exit 1
  fi
  mv "$ARCHIVE.part" "$ARCHIVE"
  if ! archive_ok; then
    echo "error: $ARCHIVE has MD5 $(md5sum "$ARCHIVE" | cut -d' ' -f1), expected $MD5;" \
         "delete it and run again" >&2
    exit 1
  fi
fi
echo "MD5 ok: $ARCHIVE"

tar -xzf "$ARCHIVE" -C "$DIR"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
  [ -f "$DIR/cifar-10-batches-bin/$f.bin" ] || { echo "error: $f.bin missing after extraction" >&2; exit 1; }
done
echo "CIFAR-10 is in $DIR/cifar-10-batches-bin"
