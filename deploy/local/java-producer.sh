#!/usr/bin/env bash
# Builds and runs the Java example producer (docs/examples/java/LoopwiseProducer.java):
#
#   java-producer.sh BOOTSTRAP TOPIC KEY_FIELD [FILE]
#
# JSON lines from FILE or stdin are sent to TOPIC keyed by their KEY_FIELD (docs/producers.md).
# The class is compiled against the Kafka jars that `make services-up` fetched into
# $CACHE_DIR/kafka-<version>/libs (version from kafka-pom.xml), into
# $CACHE_DIR/java-producer/<source sha256>-kafka-<version>/, outside git: a changed source or
# Kafka version builds a new directory, an unchanged one is reused without a word.
# Env: LOOPWISE_CACHE_DIR (see lib.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/local/lib.sh
source "$here/lib.sh"
# shellcheck source=deploy/local/kafka.sh
source "$here/kafka.sh"

SVC=java-producer
SRC="$LW_ROOT/docs/examples/java/LoopwiseProducer.java"
# What the example needs: the client and its compression libraries, Jackson for the key field,
# and slf4j bound to log4j so the client's warnings reach stderr.
JARS=(kafka-clients lz4-java snappy-java zstd-jni slf4j-api jackson-core jackson-databind
  jackson-annotations log4j-api log4j-core log4j-slf4j2-impl)

if (($# < 3 || $# > 4)); then
  echo "usage: $0 BOOTSTRAP TOPIC KEY_FIELD [FILE]" >&2
  exit 2
fi

command -v java >/dev/null || die "$SVC" "java is not installed; install a JDK (apt-get install openjdk-17-jdk-headless) and retry"
[[ -f $SRC ]] || die "$SVC" "$SRC is missing"

ver=$(kafka_version)
[[ -n $ver ]] || die "$SVC" "no <kafka.version> in $LW_LOCAL/kafka-pom.xml"
libs="$CACHE_DIR/kafka-$ver/libs"
[[ -f $CACHE_DIR/kafka-$ver/.complete && -d $libs ]] ||
  die "$SVC" "the Kafka $ver jars are not in $libs; run \`make services-up\` (it fetches them) and retry"

# One jar per name, whatever its version (names are followed by -<digit>).
cp=
for name in "${JARS[@]}"; do
  jar=$(find "$libs" -maxdepth 1 -name "$name-[0-9]*.jar" | sort | tail -n 1)
  [[ -n $jar ]] || die "$SVC" "$name-*.jar is missing from $libs; run \`make services-up\` to fetch the Kafka jars again"
  cp+="${cp:+:}$jar"
done

sum=$(sha256sum "$SRC" | cut -d' ' -f1)
build_root="$CACHE_DIR/java-producer"
out="$build_root/${sum:0:16}-kafka-$ver"

if [[ ! -f $out/LoopwiseProducer.class ]]; then
  command -v javac >/dev/null || die "$SVC" "javac is not installed; install a JDK (apt-get install openjdk-17-jdk-headless) and retry"
  mkdir -p "$build_root"
  # Build in a private directory and rename it into place, so a concurrent run never sees a
  # half-written one.
  tmp=$(mktemp -d "$build_root/.build.XXXXXX")
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  printf '%s: compiling %s against Kafka %s into %s\n' "$SVC" "${SRC#"$LW_ROOT"/}" "$ver" "$out" >&2
  if ! javac -Xlint:all -d "$tmp" -cp "$cp" "$SRC" >"$tmp/javac.log" 2>&1; then
    cat "$tmp/javac.log" >&2
    die "$SVC" "javac failed on $SRC"
  fi
  cat "$tmp/javac.log" >&2 # warnings, if any
  # The client logs through slf4j; warnings and errors go to stderr, nothing else.
  cat >"$tmp/log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
  rm -f "$tmp/javac.log"
  [[ -f $out/LoopwiseProducer.class ]] || rm -rf "$out" # the remains of an interrupted build
  if ! mv -T "$tmp" "$out" 2>/dev/null; then
    [[ -f $out/LoopwiseProducer.class ]] || die "$SVC" "could not move the build into $out"
    rm -rf "$tmp" # another run built the same source first
  fi
  trap - EXIT
  # Builds of earlier sources are no longer needed.
  find "$build_root" -mindepth 1 -maxdepth 1 -type d ! -path "$out" ! -name '.build.*' \
    -exec rm -rf {} +
fi

exec java -Dlog4j2.configurationFile="$out/log4j2.properties" -cp "$out:$cp" LoopwiseProducer "$@"
