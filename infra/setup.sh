#!/usr/bin/env bash
# `make setup`: everything Flywheel needs on a fresh machine, idempotent and cached.
#   1. checks Java 17+ and Python 3.11          4. the Python environment from uv.lock (uv cache)
#   2. uv (from PyPI) if missing                 5. Kafka broker + Flink connector jars (Maven Central)
#   3. redis-server (Debian) if missing          6. the Open Bandit sample (obp sdist on PyPI)
# A second run only checks stamps and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }
start=$(date +%s)

# 1. Toolchains we do not install ourselves.
command -v java >/dev/null || die "Java 17+ is required (apt-get install openjdk-17-jdk-headless)."
java_major=$(java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]}')
[ "${java_major:-0}" -ge 17 ] || die "Java 17+ is required, found ${java_major}."
command -v mvn >/dev/null || die "Maven is required to fetch JVM jars (apt-get install maven)."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || die "Python 3.11 is required ($PYTHON not on PATH; set PYTHON=...)."

# 2. uv, pinned.
UV_VERSION=0.13.8
if ! command -v uv >/dev/null || [ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]; then
  say "installing uv $UV_VERSION from PyPI"
  "$PYTHON" -m pip install -q "uv==$UV_VERSION"
fi

# 3. Debian packages.
if ! command -v redis-server >/dev/null; then
  say "installing redis-server (Debian)"
  if [ "$(id -u)" -ne 0 ]; then die "redis-server is missing and we are not root: apt-get install redis-server"; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# 4. Python environment, exactly as locked (torch's CUDA wheels stay in uv's cache between runs).
#    SETUP_GROUPS adds optional dependency groups (`make bench`: spark); a plain setup removes them again.
#    Compiled to bytecode once: where PYTHONDONTWRITEBYTECODE is set, every process (DAG runs, `feast
#    apply`, the Flink client) would otherwise compile what it imports from source, seconds each time.
say "python environment from uv.lock${SETUP_GROUPS:+ (+ ${SETUP_GROUPS})}"
groups=()
for g in ${SETUP_GROUPS:-}; do groups+=(--group "$g"); done
uv sync --frozen --python "$PYTHON" --quiet --compile-bytecode "${groups[@]}"

# 5. JVM artifacts; re-fetched only when the pom changes.
stamp=build/jvm/.pom.sha256
want=$(sha256sum infra/jvm/pom.xml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "fetching Kafka and Flink connector jars from Maven Central"
  rm -rf build/jvm
  mvn -q -B -f infra/jvm/pom.xml package
  echo "$want" > "$stamp"
fi

# 6. Flywheel's own Flink code (flink_jobs/jvm: SQL functions, operators, the Feast Redis sink), compiled
#    against the Flink the wheel ships and the Redis client; rebuilt when a source changes or the jars were
#    re-fetched.
jar=build/jvm/flink/flywheel-functions.jar
want=$(cat flink_jobs/jvm/io/flywheel/flink/*.java flink_jobs/jvm/io/flywheel/flink/*.lua "$stamp" | sha256sum | cut -d' ' -f1)
if [ ! -f "$jar" ] || [ "$(cat build/jvm/.functions.sha256 2>/dev/null)" != "$want" ]; then
  say "compiling flink_jobs/jvm"
  command -v javac >/dev/null || die "javac (a JDK 17) is required to build flink_jobs/jvm (apt-get install openjdk-17-jdk-headless)."
  flink_lib=$(.venv/bin/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
  rm -rf build/jvm/functions && mkdir -p build/jvm/functions/io/flywheel/flink
  javac -nowarn -source 17 -target 17 -cp "$flink_lib/*:build/jvm/flink/*" -d build/jvm/functions flink_jobs/jvm/io/flywheel/flink/*.java
  cp flink_jobs/jvm/io/flywheel/flink/*.lua build/jvm/functions/io/flywheel/flink/
  rm -f "$jar" && jar cf "$jar" -C build/jvm/functions .
  echo "$want" > build/jvm/.functions.sha256
fi

# 7. Real data.
.venv/bin/flywheel data fetch >/dev/null
say "ready in $(( $(date +%s) - start ))s (environment $(du -sh .venv | cut -f1), jars $(du -sh build/jvm | cut -f1))"
