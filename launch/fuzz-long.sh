#!/usr/bin/env bash
# fuzz-long.sh — the long fuzz run (Tests/FuzzTests): HGDPO_FUZZ_COUNT inputs (default 100000) per target, one target after the other,
# each line of results appended to HGDPO_FUZZ_REPORT (default fuzz-report.jsonl). RELIABILITY.md records the last run.
#
# Usage: swift build --build-tests && launch/fuzz-long.sh [TARGET...]      (default: every target)
# Targets: safetensors lora png triplets.jsonl latent-cache-index config-json config-yaml model_index.json unet-config
#          vae-config text-encoder-config scheduler-config tokenizer-vocab.json tokenizer-merges.txt
#          tokenizer-tokenizer_config.json tokenizer-special_tokens_map.json
# HGDPO_FUZZ_XCTEST: the test bundle to run (default: .build/debug/hgdpoPackageTests.xctest; a debug build keeps
# Swift's overflow and bounds checks, which is what turns a parser bug into a caught crash).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="${HGDPO_FUZZ_XCTEST:-$root/.build/debug/hgdpoPackageTests.xctest}"
export HGDPO_FUZZ_COUNT="${HGDPO_FUZZ_COUNT:-100000}" HGDPO_FUZZ_REPORT="${HGDPO_FUZZ_REPORT:-$PWD/fuzz-report.jsonl}"
targets=("$@")
((${#targets[@]})) || targets=(safetensors lora png triplets.jsonl latent-cache-index config-json config-yaml model_index.json
  unet-config vae-config text-encoder-config scheduler-config tokenizer-vocab.json tokenizer-merges.txt
  tokenizer-tokenizer_config.json tokenizer-special_tokens_map.json)
method() {
  case "$1" in
    safetensors) echo testSafetensorsReader ;; lora) echo testLoRAFilesInEveryFormat ;; png) echo testPNGReader ;;
    triplets.jsonl) echo testTripletsJSONL ;; latent-cache-index) echo testLatentCacheIndex ;;
    config-*) echo testTrainConfigFiles ;; tokenizer-*) echo testTokenizerFiles ;; *) echo testModelIndexAndModelConfigs ;;
  esac
}
failed=0
for t in "${targets[@]}"; do
  echo "== fuzz $t: $HGDPO_FUZZ_COUNT inputs"
  if ! HGDPO_FUZZ_TARGET="$t" "$bundle" "FuzzTests.FuzzTests/$(method "$t")" 2>&1 | grep -E "^fuzz $t: [0-9]+ inputs|error|Fatal|Crash"; then
    echo "FAIL fuzz $t: no result line (a crash? the last input is left in the test's temp folder)"
    failed=1
  fi
done
exit "$failed"
