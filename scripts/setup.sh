#!/usr/bin/env bash
# Prepares the Python that `make run` and `make test` use, once; safe to run again.
#
# By default that is a project virtual environment, .venv/, made with the standard `venv` module
# from the first `python3` on PATH (any Python 3.10+, externally managed or not: nothing is
# installed into the interpreter itself). It is reused while pyproject.toml is unchanged and
# rebuilt when it changes. Where the environment has no torch, the CPU wheel torch==2.13.0 goes in
# (never a multi-GB CUDA build).
#
# SPLITKIT_PYTHON=/path/to/python uses that interpreter instead (a conda env, a CUDA build of
# torch): splitkit is installed into it, and a torch it already has is kept.
#
# Prints the interpreter's path as its last line of stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "[setup] $*" >&2; }
die() { echo "[setup] error: $*" >&2; exit 1; }

# The CPU build: "+cpu" is found in a local wheel folder (pip's find-links) or on PyTorch's own CPU
# index; a plain "torch==2.13.0" from PyPI is, on Linux, a CUDA build of several GB.
TORCH_SPEC=${SPLITKIT_TORCH:-torch==2.13.0+cpu}
TORCH_INDEX=https://download.pytorch.org/whl/cpu
stamp_of() { "$1" -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest(), sys.version.split()[0])'; }

install_into() {  # $1: interpreter
  local py=$1
  if ! "$py" -c "import torch" >/dev/null 2>&1; then
    say "no torch in $py: installing the CPU wheel $TORCH_SPEC"
    # a local wheel first (no network), then PyTorch's CPU index, then the package index's build
    if ! "$py" -m pip install -q "$TORCH_SPEC" >/dev/null 2>&1 \
       && ! "$py" -m pip install -q "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX" --timeout 20 --retries 1 >&2; then
      say "warning: $TORCH_SPEC is neither in a local wheel folder nor reachable at $TORCH_INDEX;"
      say "warning: installing torch==2.13.0 from the package index instead (on Linux a CUDA build of several GB)"
      "$py" -m pip install -q "torch==2.13.0" >&2 || die "could not install torch into $py (set SPLITKIT_TORCH to a requirement that works here)"
    fi
  fi
  say "installing splitkit and its dependencies into $py"
  "$py" -m pip install -q -e ".[test]" >&2 || die "pip could not install splitkit into $py (see above)"
}

if [ -n "${SPLITKIT_PYTHON:-}" ]; then
  py=$SPLITKIT_PYTHON
  command -v "$py" >/dev/null 2>&1 || die "SPLITKIT_PYTHON=$py is not an interpreter on this machine"
  stamp=".setup-done-$(echo "$py" | tr -c 'A-Za-z0-9' '_')"
  want=$(stamp_of "$py")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "import splitkit, torch" >/dev/null 2>&1; then
    install_into "$py"
    echo "$want" > "$stamp"
  fi
  echo "$py"
  exit 0
fi

base=${PYTHON:-python3}
command -v "$base" >/dev/null 2>&1 || die "no '$base' on PATH; install Python 3.10+ or set PYTHON=/path/to/python3"
"$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$base is Python $("$base" -c 'import sys; print(sys.version.split()[0])'); splitkit needs 3.10 or newer (set PYTHON=python3.11, say)"
venv=.venv
py=$venv/bin/python
want=$(stamp_of "$base")
if [ -x "$py" ] && [ "$(cat "$venv/.splitkit-stamp" 2>/dev/null)" = "$want" ] && "$py" -c "import splitkit, torch" >/dev/null 2>&1; then
  echo "$py"
  exit 0
fi
if [ -d "$venv" ]; then
  say "rebuilding $venv (pyproject.toml or the Python changed, or the last set-up did not finish)"
  rm -rf "$venv"
fi
say "creating $venv with $base ($("$base" -c 'import sys; print(sys.version.split()[0])'))"
"$base" -m venv "$venv" >&2 || die "'$base -m venv' failed; on Debian/Ubuntu install the python3-venv package"
"$py" -m pip install -q --upgrade pip >&2 || true
install_into "$py"
echo "$want" > "$venv/.splitkit-stamp"  # written last: a set-up cut short is redone
echo "$py"
