#!/usr/bin/env bash
# Fails when a dependency is declared but not used:
#  - per crate: cargo-machete (built once by hack/build-cargo-machete.sh)
#    searches each member's sources for every dependency it declares;
#  - per workspace: every [workspace.dependencies] entry is used by a member
#    (cargo-machete does not look there).
# A dependency used only in a way a search cannot see (a feature switch, a
# macro's hidden path) goes in that crate's
# [package.metadata.cargo-machete] ignored = [...], with a comment saying why.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

machete="$(hack/build-cargo-machete.sh)"
status=0
# --with-metadata: asks cargo for each dependency's library name (renames,
# crates whose lib is not named after the package).
"$machete" --with-metadata || status=1

python3 - <<'PY' || status=1
import sys, tomllib
root = tomllib.load(open("Cargo.toml", "rb"))["workspace"]
declared = set(root.get("dependencies", {}))
used = set()
for member in root["members"]:
    manifest = tomllib.load(open(f"{member}/Cargo.toml", "rb"))
    tables = [manifest.get(k, {}) for k in ("dependencies", "dev-dependencies", "build-dependencies")]
    tables += [t.get(k, {}) for t in manifest.get("target", {}).values()
               for k in ("dependencies", "dev-dependencies", "build-dependencies")]
    for table in tables:
        for name, spec in table.items():
            if isinstance(spec, dict) and spec.get("workspace"):
                used.add(name)
unused = sorted(declared - used)
if unused:
    print("[workspace.dependencies] that no member uses: " + ", ".join(unused), file=sys.stderr)
    sys.exit(1)
print(f"[workspace.dependencies]: all {len(declared)} used by a member")
PY
exit "$status"
