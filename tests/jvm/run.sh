#!/usr/bin/env bash
# The Java operator tests (tests/jvm/): compiled against the Flink the apache-flink wheel ships, Flywheel's
# operators (build/jvm/functions, from `make setup`) and Flink's test harnesses, run by JUnit's console
# launcher. Exit status non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
flink_lib=$(.venv/bin/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
test_jars=build/jvm/test
[ -d build/jvm/functions ] && [ -d "$test_jars" ] || { echo "tests/jvm: run \`make setup\` first (jars missing)" >&2; exit 1; }
out=build/jvm/test-classes
rm -rf "$out" && mkdir -p "$out"
cp="$flink_lib/*:build/jvm/functions:build/jvm/flink/*:$test_jars/*"
javac -nowarn -source 17 -target 17 -cp "$cp" -d "$out" tests/jvm/io/flywheel/flink/*.java
# The JVM expands the classpath's wildcards (JUnit's --class-path option would not).
exec java -cp "$out:$cp" org.junit.platform.console.ConsoleLauncher execute \
  --scan-class-path "$out" --disable-banner --disable-ansi-colors --details=tree --details-theme=ascii
