#include "kv/session_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "common/error.h"

namespace pyv4 {

namespace {

constexpr char kMagic[8] = {'P', 'Y', 'V', '4', 'K', 'V', 'S', '\0'};
constexpr size_t kHeaderBytes = 128;
constexpr size_t kAlign = 4096;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// 64-bit FNV-1a over 8-byte words (then the tail bytes): fast, and any flipped
// or truncated byte changes it. Integrity, not security.
uint64_t hash_bytes(const uint8_t* p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const uint64_t prime = 0x100000001b3ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * prime;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * prime;
  return h;
}

struct Writer {
  std::vector<uint8_t> b;
  template <class T>
  void put(T v) {
    const size_t o = b.size();
    b.resize(o + sizeof(T));
    std::memcpy(b.data() + o, &v, sizeof(T));
  }
  void bytes(const void* p, size_t n) {
    const size_t o = b.size();
    b.resize(o + n);
    if (n) std::memcpy(b.data() + o, p, n);
  }
};

struct Reader {
  const uint8_t* p;
  size_t n, o = 0;
  std::string what;
  void need(size_t k) {
    if (k > n - o) throw FormatError(what + ": the session metadata is truncated");
  }
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p + o, sizeof(T));
    o += sizeof(T);
    return v;
  }
  void bytes(void* dst, size_t k) {
    need(k);
    if (k) std::memcpy(dst, p + o, k);
    o += k;
  }
};

std::string err() { return std::strerror(errno); }

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw InputError("cannot write session file " + path + ": " + err());
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void read_at(int fd, void* dst, size_t n, size_t off, const std::string& path) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw FormatError(path + ": the session file is truncated or unreadable");
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<size_t>(r);
  }
}

struct Header {
  uint32_t version = 0;
  uint64_t fingerprint = 0, n_tokens = 0, meta_offset = 0, meta_bytes = 0, meta_hash = 0;
  uint64_t data_offset = 0, data_bytes = 0, file_bytes = 0, snap_every = 0, data_hash = 0;
  uint8_t kv_type = 0;

  std::vector<uint8_t> encode() const {
    std::vector<uint8_t> b(kHeaderBytes, 0);
    auto at = [&](size_t o, const void* v, size_t n) { std::memcpy(b.data() + o, v, n); };
    const uint32_t hb = kHeaderBytes;
    at(0, kMagic, 8);
    at(8, &version, 4);
    at(12, &hb, 4);
    at(16, &fingerprint, 8);
    at(24, &kv_type, 1);
    at(32, &n_tokens, 8);
    at(40, &meta_offset, 8);
    at(48, &meta_bytes, 8);
    at(56, &meta_hash, 8);
    at(64, &data_offset, 8);
    at(72, &data_bytes, 8);
    at(80, &file_bytes, 8);
    at(88, &snap_every, 8);
    at(96, &data_hash, 8);
    const uint64_t h = hash_bytes(b.data(), 120);
    at(120, &h, 8);
    return b;
  }

  static Header decode(const uint8_t* b, size_t avail, const std::string& path) {
    if (avail < kHeaderBytes || std::memcmp(b, kMagic, 8) != 0) {
      throw FormatError(path + ": not a pyv4 session file (bad magic or too short)");
    }
    Header h;
    auto at = [&](size_t o, void* v, size_t n) { std::memcpy(v, b + o, n); };
    at(8, &h.version, 4);
    if (h.version != SessionFile::kVersion) {
      throw FormatError(path + ": unknown session file version " + std::to_string(h.version) +
                        " (this pyv4 reads version " + std::to_string(SessionFile::kVersion) + ")");
    }
    uint64_t stored;
    at(120, &stored, 8);
    if (stored != hash_bytes(b, 120)) throw FormatError(path + ": session file header is corrupt (checksum)");
    at(16, &h.fingerprint, 8);
    at(24, &h.kv_type, 1);
    at(32, &h.n_tokens, 8);
    at(40, &h.meta_offset, 8);
    at(48, &h.meta_bytes, 8);
    at(56, &h.meta_hash, 8);
    at(64, &h.data_offset, 8);
    at(72, &h.data_bytes, 8);
    at(80, &h.file_bytes, 8);
    at(88, &h.snap_every, 8);
    at(96, &h.data_hash, 8);
    if (h.kv_type > static_cast<uint8_t>(KVType::FP8)) {
      throw FormatError(path + ": unknown KV type code " + std::to_string(h.kv_type));
    }
    return h;
  }
};

// Opens and validates header, size and meta hash; returns the meta block.
struct Opened {
  int fd = -1;
  Header h;
  std::vector<uint8_t> meta;
  ~Opened() {
    if (fd >= 0) ::close(fd);
  }
};

void open_session(const std::string& path, Opened& o) {
  o.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (o.fd < 0) {
    if (errno == ENOENT) throw InputError("session file not found: " + path);
    throw InputError("cannot open session file " + path + ": " + err());
  }
  struct stat st;
  if (::fstat(o.fd, &st) != 0) throw InputError("cannot stat " + path + ": " + err());
  const size_t size = static_cast<size_t>(st.st_size);
  uint8_t hb[kHeaderBytes] = {};
  if (size >= kHeaderBytes) read_at(o.fd, hb, kHeaderBytes, 0, path);
  o.h = Header::decode(hb, size, path);
  if (o.h.file_bytes != size) {
    throw FormatError(path + ": session file is " + std::to_string(size) + " bytes, its header says " +
                      std::to_string(o.h.file_bytes) + " (truncated or damaged)");
  }
  if (o.h.meta_offset != kHeaderBytes || o.h.meta_bytes > size - kHeaderBytes ||
      o.h.data_offset < kHeaderBytes + o.h.meta_bytes || o.h.data_offset % kAlign != 0 ||
      o.h.data_offset > size || o.h.data_bytes != size - o.h.data_offset) {
    throw FormatError(path + ": session file layout is inconsistent");
  }
  o.meta.resize(o.h.meta_bytes);
  read_at(o.fd, o.meta.data(), o.meta.size(), o.h.meta_offset, path);
  if (hash_bytes(o.meta.data(), o.meta.size()) != o.h.meta_hash) {
    throw FormatError(path + ": session metadata is corrupt (checksum)");
  }
}

}  // namespace

void SessionFile::save(const KVState& s, uint64_t fingerprint, const std::string& path) {
  const Arena& A = *s.arena_;
  // Data area: every chunk's used prefix, 4 KiB aligned, in stream order.
  struct Piece {
    const uint8_t* p;
    size_t n;
  };
  std::vector<Piece> pieces;
  size_t data_bytes = 0;
  Writer m;
  m.put<uint32_t>(static_cast<uint32_t>(s.n_layer()));
  m.put<uint32_t>(static_cast<uint32_t>(s.cfg_.head_dim));
  m.put<uint32_t>(static_cast<uint32_t>(s.cfg_.rope_dim));
  m.put<uint32_t>(static_cast<uint32_t>(s.cfg_.window));
  m.put<uint32_t>(static_cast<uint32_t>(s.cfg_.index_head_dim));
  m.put<uint64_t>(A.chunk_bytes());
  m.bytes(s.tokens_.data(), s.tokens_.size() * 4);
  for (const LayerState& L : s.layers_) {
    m.put<uint32_t>(static_cast<uint32_t>(L.comp_tail.ratio));
    for (const RowStream* st : {&L.window, &L.comp, &L.index, &L.snaps}) {
      m.put<uint64_t>(static_cast<uint64_t>(st->n));
      m.put<uint64_t>(st->rec);
      m.put<uint64_t>(st->chunks.size());
      for (size_t c = 0; c < st->chunks.size(); ++c) {
        const int64_t rows = std::min<int64_t>(st->per_chunk, st->n - static_cast<int64_t>(c) * st->per_chunk);
        const size_t n = static_cast<size_t>(rows) * st->rec;
        m.put<uint64_t>(data_bytes);
        m.put<uint64_t>(n);
        pieces.push_back({A.data(st->chunks[c]), n});
        data_bytes += align_up(n);
      }
    }
    for (const CompressorState* c : {&L.comp_tail, &L.index_tail}) {
      if (c->proj_width == 0) continue;
      m.put<int64_t>(c->tail_start);
      m.put<uint64_t>(static_cast<uint64_t>(c->tail_len()));
      m.bytes(c->tail_kv.data(), c->tail_kv.size() * 4);
      m.bytes(c->tail_gate.data(), c->tail_gate.size() * 4);
    }
  }

  Header h;
  h.version = kVersion;
  h.fingerprint = fingerprint;
  h.kv_type = static_cast<uint8_t>(s.type_);
  h.n_tokens = static_cast<uint64_t>(s.n_tokens_);
  h.meta_offset = kHeaderBytes;
  h.meta_bytes = m.b.size();
  h.meta_hash = hash_bytes(m.b.data(), m.b.size());
  h.data_offset = align_up(kHeaderBytes + m.b.size());
  h.data_bytes = data_bytes;
  h.file_bytes = h.data_offset + data_bytes;
  h.snap_every = static_cast<uint64_t>(s.snap_every_);
  // Data hash, checked by load(verify=true): over the pieces in table order.
  static const std::vector<uint8_t> zeros(kAlign, 0);
  uint64_t dh = 0xcbf29ce484222325ull;
  for (const Piece& pc : pieces) dh = hash_bytes(pc.p, pc.n, dh);
  h.data_hash = dh;

  // Atomic replace: temp file in the same directory, fsync, rename, fsync dir.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::random_device rd;
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw InputError("cannot create " + tmp + ": " + err());
  try {
    const std::vector<uint8_t> hb = h.encode();
    write_all(fd, hb.data(), hb.size(), tmp);
    write_all(fd, m.b.data(), m.b.size(), tmp);
    write_all(fd, zeros.data(), h.data_offset - kHeaderBytes - m.b.size(), tmp);
    for (const Piece& pc : pieces) {
      write_all(fd, pc.p, pc.n, tmp);
      write_all(fd, zeros.data(), align_up(pc.n) - pc.n, tmp);
    }
    if (::fsync(fd) != 0) throw InputError("cannot fsync " + tmp + ": " + err());
    if (::close(fd) != 0) throw InputError("cannot close " + tmp + ": " + err());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string e = err();
    ::unlink(tmp.c_str());
    throw InputError("cannot rename " + tmp + " to " + path + ": " + e);
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

SessionFileInfo SessionFile::info(const std::string& path) {
  Opened o;
  open_session(path, o);
  SessionFileInfo i;
  i.version = o.h.version;
  i.fingerprint = o.h.fingerprint;
  i.type = static_cast<KVType>(o.h.kv_type);
  i.n_tokens = static_cast<int64_t>(o.h.n_tokens);
  i.file_bytes = o.h.file_bytes;
  Reader r{o.meta.data(), o.meta.size(), 0, path};
  r.need(4 * 5 + 8);
  r.o += 4 * 5 + 8;
  if (o.h.n_tokens > o.meta.size() / 4) throw FormatError(path + ": token count exceeds the metadata");
  i.tokens.resize(o.h.n_tokens);
  r.bytes(i.tokens.data(), i.tokens.size() * 4);
  return i;
}

std::unique_ptr<KVState> SessionFile::load(const ModelConfig& cfg, uint64_t fingerprint,
                                           const std::string& path, bool verify) {
  Opened o;
  open_session(path, o);
  const Header& h = o.h;
  if (h.fingerprint != fingerprint) {
    throw FormatError(path + ": the session was saved with a different model (fingerprint " +
                      std::to_string(h.fingerprint) + ", this model " + std::to_string(fingerprint) + ")");
  }
  const KVType type = static_cast<KVType>(h.kv_type);
  if (h.snap_every == 0 || h.snap_every > (1u << 30)) throw FormatError(path + ": bad snapshot interval");
  const int64_t every = static_cast<int64_t>(h.snap_every);
  Reader r{o.meta.data(), o.meta.size(), 0, path};
  const uint32_t nl = r.get<uint32_t>(), hd = r.get<uint32_t>(), rd = r.get<uint32_t>();
  const uint32_t win = r.get<uint32_t>(), ihd = r.get<uint32_t>();
  const uint64_t chunk = r.get<uint64_t>();
  if (nl != cfg.n_layer || hd != cfg.head_dim || rd != cfg.rope_dim || win != cfg.window ||
      ihd != cfg.index_head_dim || chunk != kv_chunk_bytes(cfg, type, every)) {
    throw FormatError(path + ": session shape does not match the model");
  }
  const int64_t nt = static_cast<int64_t>(h.n_tokens);
  if (nt > cfg.n_ctx) throw FormatError(path + ": session holds more tokens than the model's context");

  auto map = std::make_shared<MappedFile>(path, ::dup(o.fd), static_cast<size_t>(h.file_bytes));
  const uint8_t* data = map->data + h.data_offset;
  uint64_t dh = 0xcbf29ce484222325ull;
  std::unique_ptr<KVState> s(new KVState(cfg, type, std::make_shared<Arena>("", chunk), every));
  s->n_tokens_ = nt;
  s->tokens_.resize(nt);
  r.bytes(s->tokens_.data(), s->tokens_.size() * 4);
  for (int32_t t : s->tokens_) {
    if (t < 0 || t >= cfg.n_vocab) throw FormatError(path + ": token id out of the model's vocabulary");
  }
  Arena& A = *s->arena_;
  for (int64_t il = 0; il < cfg.n_layer; ++il) {
    LayerState& L = s->layers_[il];
    if (r.get<uint32_t>() != static_cast<uint32_t>(L.comp_tail.ratio)) {
      throw FormatError(path + ": layer " + std::to_string(il) + " kind does not match the model");
    }
    const int64_t ratio = L.comp_tail.ratio;
    const int64_t expect[4] = {-1, ratio ? nt / ratio : 0, L.kind == AttnKind::CSA ? nt / ratio : 0,
                               nt / every};
    RowStream* streams[4] = {&L.window, &L.comp, &L.index, &L.snaps};
    for (int k = 0; k < 4; ++k) {
      RowStream& st = *streams[k];
      const uint64_t n = r.get<uint64_t>(), rec = r.get<uint64_t>(), nc = r.get<uint64_t>();
      const bool n_ok = k == 0 ? (static_cast<int64_t>(n) >= std::min(nt, cfg.window) &&
                                  static_cast<int64_t>(n) <= cfg.window)
                               : static_cast<int64_t>(n) == expect[k];
      const uint64_t want_nc = st.per_chunk ? (n + st.per_chunk - 1) / st.per_chunk : 0;
      if (rec != st.rec || !n_ok || nc != want_nc || (st.per_chunk == 0 && n != 0)) {
        throw FormatError(path + ": layer " + std::to_string(il) + " row table does not match the model");
      }
      for (uint64_t c = 0; c < nc; ++c) {
        const uint64_t off = r.get<uint64_t>(), bytes = r.get<uint64_t>();
        const uint64_t rows = std::min<uint64_t>(st.per_chunk, n - c * st.per_chunk);
        if (bytes != rows * rec || off % kAlign != 0 || off > h.data_bytes || bytes > h.data_bytes - off) {
          throw FormatError(path + ": layer " + std::to_string(il) + " chunk table is out of bounds");
        }
        if (verify) dh = hash_bytes(data + off, bytes, dh);
        st.chunks.push_back(A.adopt(map, data + off, bytes));
      }
      st.n = static_cast<int64_t>(n);
    }
    for (CompressorState* c : {&L.comp_tail, &L.index_tail}) {
      if (c->proj_width == 0) continue;
      c->tail_start = r.get<int64_t>();
      const uint64_t len = r.get<uint64_t>();
      if (len > static_cast<uint64_t>(2 * ratio) || c->tail_start < 0 ||
          c->tail_start + static_cast<int64_t>(len) != nt) {
        throw FormatError(path + ": layer " + std::to_string(il) + " compressor state is inconsistent");
      }
      c->tail_kv.resize(len * c->proj_width);
      c->tail_gate.resize(len * c->proj_width);
      r.bytes(c->tail_kv.data(), c->tail_kv.size() * 4);
      r.bytes(c->tail_gate.data(), c->tail_gate.size() * 4);
    }
  }
  if (r.o != r.n) throw FormatError(path + ": trailing bytes in the session metadata");
  if (verify && dh != h.data_hash) throw FormatError(path + ": session data is corrupt (checksum)");
  return s;
}

}  // namespace pyv4
