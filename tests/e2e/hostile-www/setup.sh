# Builds the hostile registry's tree under $WWW for busybox httpd (sourced by
# the hostile-registry pod of tests/e2e/hostile-copies.sh; busybox sh, awk,
# sha256sum). Every answer is a CGI script (*.sh, which may start with its own
# status line) or a static file.
set -e
WWW="${WWW:-/www}"
mkdir -p /tmp # the test image has no /tmp
manifests() { mkdir -p "$WWW/v2/$1/app/manifests"; echo "$WWW/v2/$1/app/manifests"; }
cgi_header='HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\r\n'

# slow/app:N.sh: a manifest that trickles at 1 byte per second, forever
# (spaces: valid JSON so far, never complete).
dir="$(manifests slow)"
for n in 1 2 3 4 5; do
  printf '%s\n' "printf '$cgi_header'" 'while printf " "; do sleep 1; done' >"$dir/$n.sh"
done

# endless/app:1.sh: a manifest body that never ends, as fast as it goes.
dir="$(manifests endless)"
printf '%s\n' "printf '$cgi_header'" 'chunk="$(printf "%01024d" 0)"' \
  'while printf "%s" "$chunk"; do :; done' >"$dir/1.sh"

# wide/app:1: an index with 100,000 entries (about 13 MB).
dir="$(manifests wide)"
awk 'BEGIN {
  printf "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":["
  for (i = 0; i < 100000; i++)
    printf "%s{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:%064d\",\"size\":1}", (i ? "," : ""), i
  printf "]}"
}' >"$dir/1"

# deep/app:1: an index nested 1,000 deep, each level by digest.
dir="$(manifests deep)"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%064d","size":2},"layers":[]}' 0 >/tmp/level
type=application/vnd.oci.image.manifest.v1+json
i=0
while [ "$i" -lt 1000 ]; do
  hex="$(sha256sum /tmp/level | cut -d' ' -f1)"
  size="$(wc -c </tmp/level)"
  cp /tmp/level "$dir/sha256:$hex"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s}]}' "$type" "$hex" "$size" >/tmp/level
  type=application/vnd.oci.image.index.v1+json
  i=$((i + 1))
done
cp /tmp/level "$dir/1"

echo '*.sh:/bin/sh' >$WWW/httpd.conf
touch $WWW/ready
