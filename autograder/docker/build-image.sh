#!/usr/bin/env bash
# Build the grading image (`make image`): tensorgrade-grader, after `tensorgrade build`.
#   autograder/docker/build-image.sh [COURSE_ROOT]     (default: this repository)
#
# Works with any Docker engine, also one that reaches no image registry: the base is then made
# here from Debian's packages (debootstrap + docker import). Every Python package is fetched on
# this machine into a wheelhouse first (with pip as it is set up here: its indexes, proxy and
# certificates), so `docker build` itself needs no network at all. The build context is staged in
# a temporary folder with only what the Dockerfile copies: the wheelhouse and the course's
# assignments/, solutions/ and dist/ (no .git, no venv, no results).
#
# Settings (environment):
#   VARIANT=cpu|cuda     torch build: cpu (default) or the CUDA build of the same version
#   TAG=NAME             image name (default tensorgrade-grader, or tensorgrade-grader:cuda)
#   BASE_IMAGE=NAME      a Debian/Ubuntu image with python3 >= 3.11 (default: tensorgrade-base:bookworm,
#                        made here with debootstrap when missing)
#   DEBIAN_MIRROR=URL    the Debian mirror for debootstrap (default: the one apt uses here)
#   TORCH_INDEX=URL|pip  where torch comes from: default PyTorch's cpu or cu128 index; `pip` uses
#                        pip's own configuration on this machine (a local wheel, a mirror)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
COURSE=$(cd "${1:-$REPO}" && pwd)
VARIANT=${VARIANT:-cpu}
BASE_IMAGE=${BASE_IMAGE:-tensorgrade-base:bookworm}
PYTHON=${PYTHON:-python3}
case "$VARIANT" in
    cpu) TAG=${TAG:-tensorgrade-grader} ; default_index=https://download.pytorch.org/whl/cpu ;;
    cuda) TAG=${TAG:-tensorgrade-grader:cuda} ; default_index=https://download.pytorch.org/whl/cu128 ;;
    *) echo "build-image: VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2 ;;
esac
TORCH_INDEX=${TORCH_INDEX:-$default_index}

say() { printf '[build-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "no docker client on PATH"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd, or check your permissions)"
for part in assignments solutions dist; do
    [ -d "$COURSE/$part" ] || die "$COURSE has no $part/ (is it a course root?)"
done
ls "$COURSE"/dist/*/autograder.zip >/dev/null 2>&1 \
    || die "no built course in $COURSE/dist: run 'tensorgrade build' first"

# The torch version is the project's own pin (requirements/dev.txt), nothing looser.
TORCH_VERSION=$(sed -n 's/^torch==\([0-9][0-9.]*\)\s*$/\1/p' "$REPO/requirements/dev.txt")
[ -n "$TORCH_VERSION" ] || die "requirements/dev.txt pins no torch==X.Y.Z"

debian_mirror() {
    # The mirror apt uses here (deb822 sources first, then the one-line format).
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}

make_base() {
    # A minimal Debian bookworm with Python 3.11 and its venv module, imported as an image.
    command -v debootstrap >/dev/null || die "$BASE_IMAGE is missing and debootstrap is not \
installed (apt-get install debootstrap), or give BASE_IMAGE=<an image with python3 >= 3.11>"
    local mirror root
    mirror=${DEBIAN_MIRROR:-$(debian_mirror)}
    [ -n "$mirror" ] || die "no Debian mirror known: set DEBIAN_MIRROR=<url>"
    root=$(mktemp -d "${TMPDIR:-/var/tmp}/tensorgrade-base.XXXXXX")
    say "making $BASE_IMAGE from Debian's packages (debootstrap, 1-3 min)"
    debootstrap --variant=minbase --include=python3,python3-venv,passwd bookworm "$root" "$mirror" \
        >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
    rm -f "$root.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" = tensorgrade-base:bookworm ]; then
        make_base
    else
        say "pulling $BASE_IMAGE"
        docker pull "$BASE_IMAGE" >/dev/null || die "cannot pull $BASE_IMAGE (no registry? leave \
BASE_IMAGE unset to make a Debian base here)"
    fi
fi

CONTEXT=$(mktemp -d "${TMPDIR:-/var/tmp}/tensorgrade-image.XXXXXX")
trap 'rm -rf "$CONTEXT"' EXIT
WHEELHOUSE=$CONTEXT/autograder/docker/wheelhouse
mkdir -p "$WHEELHOUSE"
for part in assignments solutions dist; do
    cp -a "$COURSE/$part" "$CONTEXT/$part"
done
find "$CONTEXT" \( -name __pycache__ -o -name .ipynb_checkpoints -o -name .OTTER_LOG \) -prune \
    -exec rm -rf {} +
rm -rf "$CONTEXT/dist/demo"

# The wheelhouse: tensorgrade as a wheel, torch at the pinned version, and every dependency,
# chosen for the base image's own Python and C library (not this machine's).
read -r py_version glibc < <(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" -c \
    'import platform; print(platform.python_version(), platform.libc_ver()[1])') \
    || die "$BASE_IMAGE has no working python3"
case "$py_version" in 3.1[1-9].*|3.[2-9][0-9].*) ;; *) die "$BASE_IMAGE has Python $py_version, not >= 3.11" ;; esac
arch=$(uname -m)
platforms=(--platform "linux_$arch" --platform "manylinux2014_$arch")
for minor in $(seq 17 "${glibc#2.}"); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
target=(--only-binary=:all: --python-version "$py_version" --implementation cp "${platforms[@]}")
quiet_pip() { "$PYTHON" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

say "filling the wheelhouse for Python $py_version, glibc $glibc (torch $TORCH_VERSION, $VARIANT)"
torch_args=()
[ "$TORCH_INDEX" = pip ] || torch_args=(--index-url "$TORCH_INDEX")
quiet_pip download --quiet --no-deps "${target[@]}" -d "$WHEELHOUSE" "${torch_args[@]}" \
    "torch==$TORCH_VERSION" || die "cannot fetch torch==$TORCH_VERSION"
quiet_pip wheel --quiet --no-deps -w "$WHEELHOUSE" "$REPO" || die "cannot build tensorgrade's wheel"
echo "torch==$TORCH_VERSION" >"$WHEELHOUSE/constraints.txt"
# Every other dependency (torch's own included) from the ordinary index, torch held to the pin.
quiet_pip download --quiet "${target[@]}" -d "$WHEELHOUSE" --find-links "$WHEELHOUSE" \
    -c "$WHEELHOUSE/constraints.txt" "$(ls "$WHEELHOUSE"/tensorgrade-*.whl)" \
    || die "cannot fetch tensorgrade's dependencies"
say "wheelhouse: $(du -sh "$WHEELHOUSE" | cut -f1)"

say "docker build -t $TAG (base $BASE_IMAGE)"
start=$(date +%s)
say "build context: $(du -sh "$CONTEXT" | cut -f1)"
docker build --force-rm --network none -f "$REPO/autograder/docker/Dockerfile" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_VERSION="$TORCH_VERSION" \
    --build-arg VARIANT="$VARIANT" -t "$TAG" "$CONTEXT" >&2
# the install stage's image (untagged, ~2 GB) is no longer needed once the image is made
docker image prune -f --filter label=tensorgrade.stage=install >/dev/null || true
size=$(docker image inspect -f '{{.Size}}' "$TAG")
say "built $TAG in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
