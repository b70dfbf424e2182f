// What a value really costs on the heap, for the budgets that bound what the
// server keeps (results, job records). The figures follow glibc's malloc on
// 64-bit Linux (an allocation of n bytes takes a chunk of n + 8 rounded up to
// 16, at least 32) and libstdc++'s containers (a string holds up to 15
// characters inline; a vector allocates its capacity). Elsewhere they are a
// close estimate, which is all a budget needs; tests compare them with the
// allocator's own count (mallinfo2).
#ifndef FEATVIZ_SERVER_ENGINE_HEAP_BYTES_H_
#define FEATVIZ_SERVER_ENGINE_HEAP_BYTES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace featviz::server {

// The chunk malloc takes for a request of `n` bytes (0 for none).
constexpr int64_t HeapChunk(int64_t n) {
  if (n <= 0) return 0;
  const int64_t chunk = (n + 8 + 15) / 16 * 16;
  return chunk < 32 ? 32 : chunk;
}

// The heap a string holds beyond its own object.
inline int64_t HeapBytes(const std::string& s) {
  constexpr size_t kInline = 15;  // libstdc++'s small-string buffer.
  return s.capacity() > kInline
             ? HeapChunk(static_cast<int64_t>(s.capacity()) + 1)
             : 0;
}

// The heap a vector of plain values holds beyond its own object.
template <typename T>
int64_t HeapBytes(const std::vector<T>& v) {
  return HeapChunk(static_cast<int64_t>(v.capacity() * sizeof(T)));
}

// The same for a vector of strings: its array and every string's heap.
inline int64_t HeapBytes(const std::vector<std::string>& v) {
  int64_t total = HeapChunk(static_cast<int64_t>(v.capacity() * sizeof(std::string)));
  for (const std::string& s : v) total += HeapBytes(s);
  return total;
}

// One element of a std::map whose key and value take `value_size` bytes:
// the node's colour and three links, then the pair.
constexpr int64_t MapNodeBytes(int64_t value_size) {
  return HeapChunk(32 + value_size);
}

// One element of a std::unordered_map (string keys, whose hash the node
// caches): the node's link, the pair and the hash, plus about one bucket.
constexpr int64_t HashNodeBytes(int64_t value_size) {
  return HeapChunk(8 + value_size + 8) + 8;
}

}  // namespace featviz::server

#endif  // FEATVIZ_SERVER_ENGINE_HEAP_BYTES_H_
