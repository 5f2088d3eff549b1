# Sourced by scripts/test, scripts/handler-consul and scripts/bench: one way to get the venv.
#
#   source scripts/_venv.sh; ensure_venv "scripts/NAME"   # sets $venv (and $python)
#
# .venv with python3.11 (else python3); PYTHON=python3.12 selects a separate .venv-3.12 (pyenv
# versions are found even when the shim would refuse). The package is installed editable with
# its test extras, again only when pyproject.toml or the package list changes, under a lock
# so two commands started at once never pip-install over each other.

# Resolve a name like python3.12 to a working interpreter.
find_python() {
  local name="$1" candidate
  if command -v "$name" >/dev/null 2>&1 && "$name" -c 'import sys' >/dev/null 2>&1; then
    "$name" -c 'import sys; print(sys.executable)'; return 0
  fi
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/*/bin/"$name"; do
    if [[ -x "$candidate" ]] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

# The one lock every pip install into $venv takes.
venv_lock_path() {
  echo "${TMPDIR:-/tmp}/handler-consul-venv-$(printf %s "$PWD/$venv" | sha256sum | cut -c1-16).lock"
}

ensure_venv() {
  local who="$1" pyver stamp want
  if [[ -n "${PYTHON:-}" ]]; then
    python="$(find_python "$PYTHON")" || { echo "$who: no working $PYTHON" >&2; exit 1; }
    pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    venv=".venv-$pyver"
  else
    python="$(find_python python3.11 || find_python python3)" \
      || { echo "$who: no python3.11 or python3" >&2; exit 1; }
    venv=".venv"
  fi
  exec 8>"$(venv_lock_path)"
  flock 8
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "$who: creating $venv with $python" >&2
    "$python" -m venv "$venv"
    echo '*' > "$venv/.gitignore"
  fi
  stamp="$venv/.handler-consul-installed"
  # A package directory appearing under src/ also needs a reinstall (editable finder mapping).
  want="$( (cat pyproject.toml; find src -maxdepth 2 -name __init__.py | sort) | sha256sum | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "$who: installing handler-consul[test] into $venv" >&2
    rm -f "$stamp"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' >&2
    echo "$want" > "$stamp"
  fi
  flock -u 8
  exec 8>&-
}

# After ensure_venv: an optional extra one command needs on top of [test] (scripts/bench: `bench`,
# matplotlib for the plot). Its own stamp, holding the [test] stamp it was installed against, so
# it follows pyproject.toml changes while scripts/test's stamp and `.[test]` install stay as
# they are. Returns non-zero when pip fails; the caller decides whether that is fatal.
ensure_extra() {
  local who="$1" extra="$2" stamp="$venv/.handler-consul-installed" rc=0
  [[ "$(cat "$stamp-$extra" 2>/dev/null)" == "$(cat "$stamp")" ]] && return 0
  exec 8>"$(venv_lock_path)"
  flock 8
  if [[ "$(cat "$stamp-$extra" 2>/dev/null)" != "$(cat "$stamp")" ]]; then
    echo "$who: installing handler-consul[test,$extra] into $venv" >&2
    rm -f "$stamp-$extra"
    if "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,$extra]" >&2
    then cat "$stamp" > "$stamp-$extra"
    else rc=1
    fi
  fi
  flock -u 8
  exec 8>&-
  return "$rc"
}
