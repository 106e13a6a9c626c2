#!/usr/bin/env bash
# Builds the JVM runner (runtimes `dl4j`, `onnxruntime-java`): `make jvm-runner`.
# Skips when the jar is newer than its sources and every jar on its classpath is still in the
# Maven repository; tries the warm cache offline first, then Maven Central (245 MB, once).
# Never fails the caller: without Java/Maven the JVM rows are skipped with their reason.
set -u
cd "$(dirname "$0")"
jar=target/kexport-jvm-runner.jar
cp=target/classpath.txt

if ! command -v mvn >/dev/null || ! command -v java >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "jvm-runner: installing Java 17 and Maven (apt)"
    apt="flock /tmp/kexport-apt.lock env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
    { $apt update -qq && $apt install -y -qq openjdk-17-jdk-headless maven; } >/dev/null \
      || { echo "jvm-runner: could not install Java/Maven: dl4j and onnxruntime-java rows will be skipped"; exit 0; }
  else
    echo "jvm-runner: java/mvn not found (apt-get install openjdk-17-jdk-headless maven): dl4j and onnxruntime-java rows will be skipped"
    exit 0
  fi
fi

fresh() {
  [ -f "$jar" ] && [ -f "$cp" ] || return 1
  [ -n "$(find pom.xml src -newer "$jar" -type f 2>/dev/null)" ] && return 1
  local IFS=:
  for f in $(cat "$cp"); do [ -f "$f" ] || return 1; done
}
if fresh; then exit 0; fi

start=$(date +%s)
if mvn -q -B -o package >/dev/null 2>&1 || mvn -q -B package; then
  echo "jvm-runner: built $jar in $(( $(date +%s) - start ))s"
else
  echo "jvm-runner: mvn package failed: dl4j and onnxruntime-java rows will be skipped"
fi
exit 0
