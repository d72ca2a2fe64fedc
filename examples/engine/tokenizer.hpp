#pragma once
// Byte-level BPE tokenizer (GGUF tokenizer.ggml.model = "gpt2") built from the
// vocabulary, merges and token types stored in a GGUF file.
//
// Bytes without a vocabulary entry: byte-level BPE normally has a token for
// each of the 256 bytes, but a vocabulary trained without the full byte
// alphabet lacks some (SmolLM2 lacks 21: 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d,
// 0xc0, 0xc1, 0xf1, 0xf2, 0xf5..0xff, and no token contains them), so those
// bytes cannot be encoded at all. Such a byte becomes the vocabulary's
// unknown token when that token is of type UNKNOWN, and is dropped otherwise
// (as llama.cpp does) -- never a control token such as <|endoftext|>, which
// tokenizer.ggml.unknown_token_id defaults to. unknown_bytes() counts every
// one; missing_bytes() lists them. Pre-tokenizers
// "smollm" (each \p{N} code point alone, then the GPT-2 pattern) and "gpt2"
// (the GPT-2 pattern alone) are written by hand over Unicode tables; the GPT-2
// pattern is
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gguf.hpp"
#include "unicode_tables.hpp"

namespace headrecon_engine {

namespace unicode {

template <std::size_t N>
bool in_ranges(const CodepointRange (&r)[N], std::uint32_t cp) {
  std::size_t lo = 0, hi = N;
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (cp < r[mid].first)
      hi = mid;
    else if (cp > r[mid].last)
      lo = mid + 1;
    else
      return true;
  }
  return false;
}
inline bool is_letter(std::uint32_t cp) { return in_ranges(letter_ranges, cp); }
inline bool is_number(std::uint32_t cp) { return in_ranges(number_ranges, cp); }
/// The Unicode White_Space property (what \s matches in Unicode regex engines).
inline bool is_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

/// Marks a byte that does not start a valid UTF-8 sequence (decoded alone).
inline constexpr std::uint32_t invalid_cp = 0xFFFFFFFFu;

/// Decodes the code point at s[i]; sets len to its byte length (1 for an
/// invalid byte, reported as invalid_cp).
inline std::uint32_t decode_utf8(std::string_view s, std::size_t i, std::size_t& len) {
  const auto b0 = std::uint8_t(s[i]);
  len = 1;
  if (b0 < 0x80) return b0;
  int n = 0;
  std::uint32_t cp = 0, min = 0;
  if ((b0 & 0xE0) == 0xC0) n = 1, cp = b0 & 0x1Fu, min = 0x80;
  else if ((b0 & 0xF0) == 0xE0) n = 2, cp = b0 & 0x0Fu, min = 0x800;
  else if ((b0 & 0xF8) == 0xF0) n = 3, cp = b0 & 0x07u, min = 0x10000;
  else return invalid_cp;
  if (i + std::size_t(n) >= s.size()) return invalid_cp;  // truncated sequence
  for (int k = 1; k <= n; ++k) {
    const auto b = std::uint8_t(s[i + std::size_t(k)]);
    if ((b & 0xC0) != 0x80) return invalid_cp;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return invalid_cp;
  len = std::size_t(n) + 1;
  return cp;
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace unicode

/// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : std::int32_t {
  undefined = 0, normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6,
};

/// Splits text into pre-tokens (byte ranges of the input) the way the GGUF
/// pre-tokenizer `pre` does; supported: "smollm" (and the llama.cpp types that
/// share its pattern) and "gpt2".
class PreTokenizer {
 public:
  explicit PreTokenizer(const std::string& pre = "smollm") {
    static const char* digit_split[] = {"smollm", "starcoder", "refact", "command-r", "codeshell",
                                        "exaone", "minerva"};
    for (const char* p : digit_split)
      if (pre == p) {
        split_digits_ = true;
        return;
      }
    if (pre == "gpt2" || pre == "mpt" || pre == "olmo" || pre == "jais") return;
    fail("unsupported pre-tokenizer '", pre,
         "' (supported: smollm, starcoder, refact, command-r, codeshell, exaone, minerva, gpt2, "
         "mpt, olmo, jais)");
  }

  /// The pre-tokens of `text`, as views into it; their concatenation is `text`.
  std::vector<std::string_view> split(std::string_view text) const {
    struct Cp {
      std::uint32_t cp;
      std::uint32_t offset, len;
    };
    std::vector<Cp> cps;
    cps.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
      std::size_t len = 1;
      const std::uint32_t cp = unicode::decode_utf8(text, i, len);
      cps.push_back({cp, std::uint32_t(i), std::uint32_t(len)});
      i += len;
    }
    std::vector<std::string_view> out;
    auto emit = [&](std::size_t a, std::size_t b) {  // code points [a, b)
      if (a < b) out.push_back(text.substr(cps[a].offset, cps[b - 1].offset + cps[b - 1].len - cps[a].offset));
    };
    if (!split_digits_) {
      gpt2_split(cps, 0, cps.size(), emit);
      return out;
    }
    std::size_t start = 0;
    for (std::size_t i = 0; i < cps.size(); ++i)
      if (cps[i].cp != unicode::invalid_cp && unicode::is_number(cps[i].cp)) {
        gpt2_split(cps, start, i, emit);
        emit(i, i + 1);
        start = i + 1;
      }
    gpt2_split(cps, start, cps.size(), emit);
    return out;
  }

 private:
  enum Class { letter, number, space, other };
  template <class Cps>
  static Class cls(const Cps& cps, std::size_t i) {
    const std::uint32_t cp = cps[i].cp;
    if (cp == unicode::invalid_cp) return other;
    if (unicode::is_letter(cp)) return letter;
    if (unicode::is_number(cp)) return number;
    if (unicode::is_space(cp)) return space;
    return other;
  }

  /// The GPT-2 pattern over code points [begin, end), emitting each match.
  template <class Cps, class Emit>
  static void gpt2_split(const Cps& cps, std::size_t begin, std::size_t end, Emit&& emit) {
    auto at = [&](std::size_t i) -> std::uint32_t { return i < end ? cps[i].cp : 0; };
    std::size_t i = begin;
    while (i < end) {
      // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
      if (at(i) == '\'' && i + 1 < end) {
        const std::uint32_t a = at(i + 1), b = i + 2 < end ? at(i + 2) : 0;
        std::size_t n = 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd')
          n = 2;
        else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
          n = 3;
        if (n) {
          emit(i, i + n);
          i += n;
          continue;
        }
      }
      // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
      const std::size_t j = (at(i) == ' ' && i + 1 < end) ? i + 1 : i;
      const Class c = cls(cps, j);
      if (c != space) {
        std::size_t k = j + 1;
        while (k < end && cls(cps, k) == c) ++k;
        emit(i, k);
        i = k;
        continue;
      }
      // '\s+(?!\S)|\s+'
      std::size_t k = i + 1;
      while (k < end && cls(cps, k) == space) ++k;
      if (k < end && k - i > 1) --k;  // leave the last space to prefix the next word
      emit(i, k);
      i = k;
    }
  }

  bool split_digits_ = false;
};

/// A byte-level BPE tokenizer from a GGUF vocabulary.
class Tokenizer {
 public:
  explicit Tokenizer(const GgufFile& f) : path_(f.path()) {
    const std::string& model = f.get_string("tokenizer.ggml.model");
    if (model != "gpt2")
      fail(path_, ": tokenizer.ggml.model = '", model, "': only byte-level BPE ('gpt2') is supported");
    pre_name_ = f.find("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "gpt2";
    pre_ = PreTokenizer(pre_name_);
    tokens_ = f.get_string_array("tokenizer.ggml.tokens");
    if (tokens_.empty()) fail(path_, ": tokenizer.ggml.tokens is empty");
    if (tokens_.size() > std::size_t(INT32_MAX)) fail(path_, ": too many tokens");
    types_.assign(tokens_.size(), TokenType::normal);
    if (f.find("tokenizer.ggml.token_type")) {
      const auto& t = f.get_int_array("tokenizer.ggml.token_type");
      if (t.size() != tokens_.size())
        fail(path_, ": tokenizer.ggml.token_type has ", t.size(), " entries for ", tokens_.size(), " tokens");
      for (std::size_t i = 0; i < t.size(); ++i) types_[i] = TokenType(t[i]);
    }
    for (std::size_t i = 0; i < tokens_.size(); ++i) {
      if (!token_id_.emplace(tokens_[i], std::int32_t(i)).second && types_[i] == TokenType::normal)
        fail(path_, ": token ", i, " '", tokens_[i], "' duplicates an earlier token");
      if (types_[i] == TokenType::control || types_[i] == TokenType::user_defined)
        if (!tokens_[i].empty()) specials_.push_back(std::int32_t(i));
    }
    // Longest special tokens first, so that a longer one wins over its prefix.
    std::sort(specials_.begin(), specials_.end(), [&](std::int32_t a, std::int32_t b) {
      return tokens_[std::size_t(a)].size() > tokens_[std::size_t(b)].size();
    });
    bos_ = std::int32_t(f.get_uint("tokenizer.ggml.bos_token_id", 0));
    eos_ = std::int32_t(f.get_uint("tokenizer.ggml.eos_token_id", 0));
    unk_ = std::int32_t(f.get_uint("tokenizer.ggml.unknown_token_id", 0));
    for (std::int32_t id : {bos_, eos_, unk_})
      if (std::size_t(id) >= tokens_.size()) fail(path_, ": special token id ", id, " is out of range");
    unk_usable_ = types_[std::size_t(unk_)] == TokenType::unknown;
    add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", false);

    // Byte <-> code point mapping of byte-level BPE (GPT-2): printable bytes
    // map to themselves, the others to 256, 257, ... in byte order.
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_cp_[b] = printable ? std::uint32_t(b) : next++;
      byte_str_[b].clear();
      unicode::append_utf8(byte_str_[b], byte_cp_[b]);
      cp_byte_.emplace(byte_cp_[b], std::uint8_t(b));
      auto it = token_id_.find(byte_str_[b]);
      byte_token_[b] = it == token_id_.end() ? -1 : it->second;
    }

    const auto& merges = f.get_string_array("tokenizer.ggml.merges");
    merges_.reserve(merges.size() * 2);
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const std::string& m = merges[r];
      const std::size_t sp = m.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= m.size() || m.find(' ', sp + 1) != std::string::npos)
        fail(path_, ": merge ", r, " '", m, "' is not two tokens separated by one space");
      const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
      auto ia = token_id_.find(a), ib = token_id_.find(b), iab = token_id_.find(a + b);
      if (ia == token_id_.end() || ib == token_id_.end() || iab == token_id_.end())
        fail(path_, ": merge ", r, " '", m, "' names a token missing from the vocabulary");
      merges_.emplace(key(ia->second, ib->second), Merge{std::int32_t(r), iab->second});
    }
  }

  std::size_t vocab_size() const { return tokens_.size(); }
  std::int32_t bos_id() const { return bos_; }
  std::int32_t eos_id() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  const std::string& pre_tokenizer() const { return pre_name_; }
  /// The vocabulary entry of `id` (byte-level form, e.g. "Ġthe").
  const std::string& token(std::int32_t id) const { return tokens_.at(std::size_t(id)); }
  TokenType type(std::int32_t id) const { return types_.at(std::size_t(id)); }
  /// The id of a vocabulary entry, or -1.
  std::int32_t find(const std::string& token) const {
    auto it = token_id_.find(token);
    return it == token_id_.end() ? -1 : it->second;
  }
  /// Pre-tokens of `text`.
  std::vector<std::string_view> pre_tokenize(std::string_view text) const { return pre_.split(text); }

  /// Token ids of `text`. With parse_special, control and user-defined token
  /// texts in `text` (e.g. "<|im_start|>") become their ids; otherwise they
  /// are tokenized as plain text. No BOS is added. Not thread-safe (a cache).
  std::vector<std::int32_t> encode(std::string_view text, bool parse_special = false) const {
    std::vector<std::int32_t> out;
    std::size_t start = 0;
    if (parse_special) {
      for (std::size_t i = 0; i < text.size();) {
        std::int32_t hit = -1;
        for (std::int32_t id : specials_) {
          const std::string& s = tokens_[std::size_t(id)];
          if (text.compare(i, s.size(), s) == 0) {
            hit = id;
            break;
          }
        }
        if (hit < 0) {
          ++i;
          continue;
        }
        encode_plain(text.substr(start, i - start), out);
        out.push_back(hit);
        i += tokens_[std::size_t(hit)].size();
        start = i;
      }
    }
    encode_plain(text.substr(start), out);
    return out;
  }

  /// The bytes `id` stands for (control tokens: their text unless skip_special).
  std::string decode_token(std::int32_t id, bool skip_special = false) const {
    if (id < 0 || std::size_t(id) >= tokens_.size()) fail("token id ", id, " is out of range (vocabulary of ", tokens_.size(), ")");
    const TokenType t = types_[std::size_t(id)];
    const std::string& s = tokens_[std::size_t(id)];
    if (t == TokenType::control || t == TokenType::user_defined || t == TokenType::unknown)
      return skip_special && t != TokenType::user_defined ? std::string() : s;
    std::string out;
    for (std::size_t i = 0; i < s.size();) {
      std::size_t len = 1;
      const std::uint32_t cp = unicode::decode_utf8(s, i, len);
      auto it = cp_byte_.find(cp);
      if (it == cp_byte_.end())
        out.append(s, i, len);  // not a byte-level character: keep as is
      else
        out += char(it->second);
      i += len;
    }
    return out;
  }
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = false) const {
    std::string out;
    for (std::int32_t id : ids) out += decode_token(id, skip_special);
    return out;
  }

  /// Number of input bytes encode() found no vocabulary entry for (each one
  /// became the UNKNOWN-type token or was dropped; see the file comment),
  /// over the tokenizer's lifetime.
  std::size_t unknown_bytes() const { return unknown_bytes_; }
  /// The byte values that have no token in this vocabulary (empty for a
  /// complete byte-level vocabulary).
  std::vector<std::uint8_t> missing_bytes() const {
    std::vector<std::uint8_t> out;
    for (int b = 0; b < 256; ++b)
      if (byte_token_[b] < 0) out.push_back(std::uint8_t(b));
    return out;
  }
  /// True when a byte without a token becomes the unknown token (of type
  /// UNKNOWN) rather than being dropped.
  bool maps_missing_bytes_to_unknown() const { return unk_usable_; }

 private:
  struct Merge {
    std::int32_t rank, result;
  };
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }

  static constexpr std::size_t max_cached_piece = 64;  // bytes
  static constexpr std::size_t max_cached_pieces = 200000;

  /// The tokens of one pre-token and how many of its bytes had no token.
  struct Piece {
    std::vector<std::int32_t> ids;
    std::size_t unknown = 0;
  };

  void encode_plain(std::string_view text, std::vector<std::int32_t>& out) const {
    if (text.empty()) return;
    for (std::string_view piece : pre_.split(text)) {
      if (piece.size() > max_cached_piece) {  // rare and long: not worth the memory
        const Piece p = bpe(piece);
        out.insert(out.end(), p.ids.begin(), p.ids.end());
        unknown_bytes_ += p.unknown;
        continue;
      }
      auto it = cache_.find(std::string(piece));
      if (it == cache_.end()) it = cache_.emplace(std::string(piece), bpe(piece)).first;
      out.insert(out.end(), it->second.ids.begin(), it->second.ids.end());
      unknown_bytes_ += it->second.unknown;  // counted on cache hits too
    }
    if (cache_.size() > max_cached_pieces) cache_.clear();  // bounded: <= ~100 MB
  }

  /// Byte-level BPE of one pre-token: repeatedly merge the adjacent pair of
  /// lowest rank, leftmost first, until no pair has a merge (a heap of
  /// candidate pairs over a linked list of symbols, O(n log n), as in HF
  /// tokenizers and llama.cpp). A byte without a token stays a placeholder
  /// (-1, never merged), then becomes the unknown token or is dropped.
  Piece bpe(std::string_view piece) const {
    Piece out;
    const std::size_t n = piece.size();
    constexpr std::int32_t dead = INT32_MIN;  // a symbol merged into its left neighbour
    std::vector<std::int32_t> id(n);
    std::vector<std::ptrdiff_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      id[i] = byte_token_[std::uint8_t(piece[i])];
      if (id[i] < 0) ++out.unknown;
      prev[i] = std::ptrdiff_t(i) - 1;
      next[i] = i + 1 < n ? std::ptrdiff_t(i + 1) : -1;
    }
    struct Candidate {
      std::int32_t rank;
      std::ptrdiff_t left;
      std::int32_t a, b, result;
    };
    const auto later = [](const Candidate& x, const Candidate& y) {
      return x.rank != y.rank ? x.rank > y.rank : x.left > y.left;
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> heap(later);
    const auto consider = [&](std::ptrdiff_t l) {
      if (l < 0 || next[std::size_t(l)] < 0) return;
      const std::int32_t a = id[std::size_t(l)], b = id[std::size_t(next[std::size_t(l)])];
      const auto it = merges_.find(key(a, b));
      if (it != merges_.end()) heap.push({it->second.rank, l, a, b, it->second.result});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) consider(std::ptrdiff_t(i));
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      const std::size_t l = std::size_t(c.left);
      const std::ptrdiff_t r = next[l];
      if (id[l] != c.a || r < 0 || id[std::size_t(r)] != c.b) continue;  // stale: a side was merged since
      id[l] = c.result;
      id[std::size_t(r)] = dead;
      next[l] = next[std::size_t(r)];
      if (next[l] >= 0) prev[std::size_t(next[l])] = std::ptrdiff_t(l);
      consider(prev[l]);
      consider(std::ptrdiff_t(l));
    }
    for (std::ptrdiff_t i = n ? 0 : -1; i >= 0; i = next[std::size_t(i)]) {
      const std::int32_t t = id[std::size_t(i)];
      if (t >= 0)
        out.ids.push_back(t);
      else if (unk_usable_)
        out.ids.push_back(unk_);
    }
    return out;
  }

  std::string path_;
  std::string pre_name_;
  PreTokenizer pre_;
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  std::unordered_map<std::string, std::int32_t> token_id_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::vector<std::int32_t> specials_;
  std::int32_t bos_ = 0, eos_ = 0, unk_ = 0;
  bool unk_usable_ = false;  // unk_ is of type UNKNOWN: missing bytes map to it
  bool add_bos_ = false;
  std::uint32_t byte_cp_[256] = {};
  std::string byte_str_[256];
  std::int32_t byte_token_[256] = {};
  std::unordered_map<std::uint32_t, std::uint8_t> cp_byte_;
  mutable std::unordered_map<std::string, Piece> cache_;
  mutable std::size_t unknown_bytes_ = 0;
};

}  // namespace headrecon_engine
