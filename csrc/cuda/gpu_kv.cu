// The GPU's copy of a session's KV rows (contract in cuda/gpu_kv.h). All
// copies and kernels run in the order of the default stream, where the
// forward pass runs; the host's staging areas are pinned (cuda::Staging).
#include "cuda/gpu_kv.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cuda/buffer.h"
#include "cuda/ops.h"
#include "cuda/runtime.h"

namespace pyv4 {
namespace cuda {

namespace {

std::vector<AttnKind> kinds_of(const ModelConfig& c) {
  std::vector<AttnKind> k;
  for (int64_t il = 0; il < c.n_layer; ++il) k.push_back(c.kind(il));
  return k;
}

// A device array of records that grows, keeping its first `held` records.
struct RecordArray {
  DeviceBuffer buf;
  int64_t cap = 0;

  void ensure(int64_t need, int64_t held, size_t rec, int64_t limit) {
    if (need <= cap) return;
    const int64_t rows = grow_rows(cap, need, limit);
    DeviceBuffer next(static_cast<size_t>(rows) * rec);
    if (held > 0)
      PYV4_CUDA_CHECK(cudaMemcpyAsync(next.data(), buf.data(), static_cast<size_t>(held) * rec,
                                      cudaMemcpyDeviceToDevice, nullptr));
    buf = std::move(next);  // cudaFree waits for the copy
    cap = rows;
  }
  uint8_t* at(int64_t i, size_t rec) const { return buf.as<uint8_t>() + static_cast<size_t>(i) * rec; }
};

struct Layer {
  DeviceBuffer ring;  // window records, slot = pos mod window
  RecordArray comp, index;
};

}  // namespace

struct GpuKV::Impl {
  const ModelConfig& c;
  MirrorBook book;
  std::vector<Layer> layers;
  KVType type = KVType::F32;
  size_t main_bytes = 0, index_bytes = 0;
  int64_t nope = 0;
  int64_t pos0 = 0, n = 0;  // the eval in progress
  DeviceBuffer chunk;       // the eval's new records, [layer][n]
  DeviceBuffer table, idx, spill;
  Staging up, rows_up, down;

  Impl(const ModelConfig& cfg, int64_t budget) : c(cfg), book(kinds_of(cfg), budget), layers(cfg.n_layer) {}

  uint8_t* chunk_rec(int64_t il, int64_t t) const {
    return chunk.as<uint8_t>() + static_cast<size_t>(il * n + t) * main_bytes;
  }

  // The session's type decides the record sizes; a new type drops what is held.
  void adopt_type(const KVState& kv) {
    if (main_bytes == kv.main_codec().bytes && index_bytes == kv.index_codec().bytes && type == kv.type()) return;
    type = kv.type();
    main_bytes = kv.main_codec().bytes;
    index_bytes = kv.index_codec().bytes;
    nope = kv.main_codec().nope;
    for (Layer& L : layers) L = Layer{};
  }

  void copy_all(const KVState& kv) {
    book.clear();
    for (int64_t il = 0; il < c.n_layer; ++il) {
      Layer& L = layers[il];
      const int64_t w = kv.layer(il).window.n;  // slots written so far (the ring fills lazily)
      L.ring.reserve(static_cast<size_t>(c.window) * main_bytes);
      if (w > 0) {
        uint8_t* h = up.take(static_cast<size_t>(w) * main_bytes);
        for (int64_t j = 0; j < w; ++j) std::memcpy(h + j * main_bytes, kv.window_rec(il, j), main_bytes);
        up.to_device(L.ring.data(), 0, static_cast<size_t>(w) * main_bytes);
      }
      copy_new(il, kv);
    }
  }

  // The compressed rows / keys of layer il the book says are still to copy.
  void copy_new(int64_t il, const KVState& kv) {
    Layer& L = layers[il];
    const int64_t comp_held = book.comp_held(il), index_held = book.index_held(il);
    const RowRange rc = book.comp_to_copy(il, kv.n_rows(il));
    const RowRange ri = book.index_to_copy(il, kv.n_index(il));
    if (rc.size() + ri.size() == 0) return;
    L.comp.ensure(rc.end, comp_held, main_bytes, book.comp_limit(il));
    L.index.ensure(ri.end, index_held, index_bytes, -1);
    const size_t bc = static_cast<size_t>(rc.size()) * main_bytes, bi = static_cast<size_t>(ri.size()) * index_bytes;
    uint8_t* h = up.take(bc + bi);
    for (int64_t b = rc.first; b < rc.end; ++b)
      std::memcpy(h + (b - rc.first) * main_bytes, kv.comp_rec(il, b), main_bytes);
    for (int64_t b = ri.first; b < ri.end; ++b)
      std::memcpy(h + bc + (b - ri.first) * index_bytes, kv.index_rec(il, b), index_bytes);
    up.to_device(L.comp.at(rc.first, main_bytes), 0, bc);
    up.to_device(L.index.at(ri.first, index_bytes), bc, bi);
  }
};

GpuKV::GpuKV(const ModelConfig& c, int64_t csa_budget) : impl_(std::make_unique<Impl>(c, csa_budget)) {}
GpuKV::~GpuKV() = default;

void GpuKV::begin(const KVState& kv, int64_t n) {
  Impl& m = *impl_;
  m.adopt_type(kv);
  const bool current = m.book.current(kv.stamp());
  m.book.invalidate();
  if (!current) m.copy_all(kv);
  m.pos0 = kv.n_tokens();
  m.n = n;
  m.chunk.reserve(static_cast<size_t>(m.c.n_layer * n) * m.main_bytes);
}

void GpuKV::encode_chunk(int64_t il, float* rows) {
  Impl& m = *impl_;
  kv_encode(m.type, rows, m.n, m.c.head_dim, m.nope, /*index=*/false, m.chunk_rec(il, 0), m.main_bytes);
}

void GpuKV::copy_appended(int64_t il, const KVState& kv) { impl_->copy_new(il, kv); }

GpuKV::Table GpuKV::row_table(int64_t il, const AttnRows& a, const KVState& kv) {
  Impl& m = *impl_;
  const Layer& L = m.layers[il];
  const size_t rec = m.main_bytes;
  int64_t n_host = 0;
  for (const RowRef& r : a.rows) n_host += r.src == RowSource::Host;
  m.spill.reserve(static_cast<size_t>(std::max<int64_t>(n_host, 1)) * rec);
  m.table.reserve(sizeof(uint64_t) * std::max<size_t>(a.rows.size(), 1));
  m.idx.reserve(sizeof(int32_t) * std::max<size_t>(a.idx.size(), 1));
  // One pinned area: [addresses][idx][the host's rows]
  const size_t bt = sizeof(uint64_t) * a.rows.size(), bx = sizeof(int32_t) * a.idx.size();
  const size_t bt_al = (bt + bx + 15) / 16 * 16;
  uint8_t* h = m.rows_up.take(bt_al + static_cast<size_t>(n_host) * rec);
  const uint8_t** addr = reinterpret_cast<const uint8_t**>(h);
  int64_t k = 0;
  for (size_t i = 0; i < a.rows.size(); ++i) {
    const RowRef& r = a.rows[i];
    switch (r.src) {
      case RowSource::Ring: addr[i] = L.ring.as<uint8_t>() + static_cast<size_t>(r.index) * rec; break;
      case RowSource::Chunk: addr[i] = m.chunk_rec(il, r.index); break;
      case RowSource::Device: addr[i] = L.comp.at(r.index, rec); break;
      case RowSource::Host:
        std::memcpy(h + bt_al + k * rec, kv.comp_rec(il, r.index), rec);
        addr[i] = m.spill.as<uint8_t>() + static_cast<size_t>(k++) * rec;
        break;
    }
  }
  if (!a.idx.empty()) std::memcpy(h + bt, a.idx.data(), bx);
  m.rows_up.to_device(m.table.data(), 0, bt);
  m.rows_up.to_device(m.idx.data(), bt, bx);
  m.rows_up.to_device(m.spill.data(), bt_al, static_cast<size_t>(n_host) * rec);
  return {m.table.as<const uint8_t*>(), m.idx.as<int32_t>()};
}

int64_t GpuKV::comp_on_device(int64_t il) const { return impl_->book.comp_held(il); }
const uint8_t* GpuKV::index_keys(int64_t il) const { return impl_->layers[il].index.buf.as<uint8_t>(); }
int64_t GpuKV::index_on_device(int64_t il) const { return impl_->book.index_held(il); }

void GpuKV::store_ring(int64_t il) {
  Impl& m = *impl_;
  for (const RingRun& r : ring_runs(m.pos0, m.n, m.c.window)) {
    PYV4_CUDA_CHECK(cudaMemcpyAsync(m.layers[il].ring.as<uint8_t>() + static_cast<size_t>(r.slot) * m.main_bytes,
                                    m.chunk_rec(il, r.t), static_cast<size_t>(r.len) * m.main_bytes,
                                    cudaMemcpyDeviceToDevice, nullptr));
  }
}

void GpuKV::queue_write_back() {
  Impl& m = *impl_;
  const size_t bytes = static_cast<size_t>(m.c.n_layer * m.n) * m.main_bytes;
  m.down.take(bytes);
  m.down.from_device(0, m.chunk.data(), bytes);
}

void GpuKV::write_back(KVState& kv) {
  Impl& m = *impl_;
  m.down.wait();
  const RowCodec& mc = kv.main_codec();
  const int64_t d = m.c.head_dim;
  std::vector<float> rows(static_cast<size_t>(m.n * d));
  for (int64_t il = 0; il < m.c.n_layer; ++il) {
    const uint8_t* recs = m.down.data() + static_cast<size_t>(il * m.n) * m.main_bytes;
    // The rounded rows are what the records decode to (RowCodec: lossless).
    for (int64_t t = 0; t < m.n; ++t) mc.decode(recs + t * m.main_bytes, &rows[t * d]);
    kv.commit_snapshots(il, m.pos0, m.n, rows.data());
    for (int64_t t = std::max<int64_t>(0, m.n - m.c.window); t < m.n; ++t)
      kv.write_window_record(il, m.pos0 + t, recs + t * m.main_bytes);
  }
}

void GpuKV::finish(const KVState& kv) { impl_->book.mark(kv.stamp()); }
void GpuKV::invalidate() { impl_->book.invalidate(); }

size_t GpuKV::bytes() const {
  const Impl& m = *impl_;
  size_t b = 0;
  for (const Layer& L : m.layers) b += L.ring.size() + L.comp.buf.size() + L.index.buf.size();
  return b;
}

}  // namespace cuda
}  // namespace pyv4
