#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, for Django 6 (.venv-django6, mk/django.mk),
# or fail saying how to get one. Looked for in this order, each candidate run to check it:
#   1. $DJANGO_PYTHON, if set (then nothing else is tried)
#   2. python3.14, python3.13, python3.12 on PATH (a pyenv shim counts only if it runs)
#   3. the interpreters pyenv keeps (`pyenv root`/versions/*), newest first
#   4. `uv python find '>=3.12'`, if uv is installed
set -euo pipefail

MIN_MINOR=12

# The interpreter's own path if it is Python 3.MIN_MINOR or later; nothing (and failure) else.
check() {
  "$1" - "$MIN_MINOR" 2>/dev/null <<'PY'
import sys
if sys.version_info[0] == 3 and sys.version_info[1] >= int(sys.argv[1]):
    print(sys.executable)
else:
    sys.exit(1)
PY
}

if [[ -n "${DJANGO_PYTHON:-}" ]]; then
  check "$DJANGO_PYTHON" && exit 0
  echo "DJANGO_PYTHON=$DJANGO_PYTHON is not a Python >= 3.$MIN_MINOR interpreter" >&2
  exit 1
fi

for name in python3.14 python3.13 python3.12; do
  if command -v "$name" >/dev/null 2>&1 && check "$name"; then
    exit 0
  fi
done

if command -v pyenv >/dev/null 2>&1; then
  root="$(pyenv root 2>/dev/null || true)"
  if [[ -n "$root" && -d "$root/versions" ]]; then
    # newest first: 3.13.0 before 3.12.1 (version sort), whatever the directory order
    while IFS= read -r dir; do
      [[ -x "$dir/bin/python3" ]] && check "$dir/bin/python3" && exit 0
    done < <(find "$root/versions" -mindepth 1 -maxdepth 1 -name '3.*' | sort -rV)
  fi
fi

if command -v uv >/dev/null 2>&1; then
  found="$(uv python find '>=3.12' 2>/dev/null || true)"
  if [[ -n "$found" ]] && check "$found"; then
    exit 0
  fi
fi

cat >&2 <<MSG
No Python >= 3.$MIN_MINOR found (Django 6 needs one). Looked for python3.14, python3.13 and
python3.12 on PATH, pyenv's versions and uv's. Install one (\`pyenv install 3.12\`,
\`uv python install 3.12\`, or your system's python3.12 package), or name it:
DJANGO_PYTHON=/path/to/python3.12.
MSG
exit 1
