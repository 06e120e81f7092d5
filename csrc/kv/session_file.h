// Session files: a KVState saved to disk and loaded back memory-mapped.
//
// Layout (little-endian):
//   header (kHeaderBytes): magic "PYV4KVS\0", version, model fingerprint
//     (Engine fingerprint = hash of the GGUF metadata + tensor table), KV type,
//     token count, offsets/sizes/hashes of the meta block and the data area,
//     total file size, and a hash of the header itself;
//   meta block: model shape echo, the token ids, each stream's record count and
//     chunk table (offset, bytes within the data area), the fp32 rolling state —
//     everything small, covered by its hash;
//   data area: the chunks' used bytes, each padded to 4 KiB, so a load maps the
//     file and adopts them in place (no copy, no re-prefill).
// Saves go to a temporary file in the target directory, are fsynced, renamed
// over the target, and the directory is fsynced: a crash leaves either the old
// file or the new one. Every check on load raises FormatError.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_state.h"
#include "model/config.h"

namespace pyv4 {

struct SessionFileInfo {
  uint32_t version = 0;
  uint64_t fingerprint = 0;
  KVType type = KVType::F32;
  int64_t n_tokens = 0;
  uint64_t file_bytes = 0;
  std::vector<int32_t> tokens;
};

class SessionFile {
 public:
  static constexpr uint32_t kVersion = 1;
  static void save(const KVState& s, uint64_t fingerprint, const std::string& path);
  // verify: also hash the data area (rows); off by default so a load stays
  // O(metadata) — the header and metadata are always checked.
  static std::unique_ptr<KVState> load(const ModelConfig& cfg, uint64_t fingerprint,
                                       const std::string& path, bool verify = false);
  // Header + token ids only (validated like load, minus the model checks).
  static SessionFileInfo info(const std::string& path);
};

}  // namespace pyv4
