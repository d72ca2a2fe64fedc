#pragma once
// Deterministic text selection for calibration and evaluation: the text files
// under a directory, sorted by their path relative to it (byte order), split
// by index parity (even: calibration, odd: evaluation), tokenized file by file
// and packed into one token stream with a separator token between documents.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tokenizer.hpp"

namespace headrecon_engine {

/// Which files of a sorted directory listing to use.
enum class Split { all, calib, eval };

inline Split parse_split(const std::string& s) {
  if (s == "all") return Split::all;
  if (s == "calib" || s == "calibration") return Split::calib;
  if (s == "eval" || s == "evaluation") return Split::eval;
  fail("unknown split '", s, "' (expected calib, eval or all)");
}
inline const char* split_name(Split s) { return s == Split::all ? "all" : s == Split::calib ? "calib" : "eval"; }

/// Regular files under `dir` (recursively) whose name ends with `suffix`,
/// sorted by relative path; with a split, only even (calib) or odd (eval)
/// indices of that sorted list.
inline std::vector<std::string> list_text_files(const std::string& dir, const std::string& suffix,
                                                Split split) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(dir, ": not a directory");
  std::vector<std::string> rel;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string name = it->path().filename().string();
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      rel.push_back(fs::relative(it->path(), dir).generic_string());
  }
  if (ec) fail(dir, ": cannot list: ", ec.message());
  std::sort(rel.begin(), rel.end());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < rel.size(); ++i)
    if (split == Split::all || (split == Split::calib) == (i % 2 == 0))
      out.push_back((fs::path(dir) / rel[i]).string());
  return out;
}

inline std::string read_text_file(const std::string& path) {
  std::ifstream is(path, std::ios::binary);
  if (!is) fail(path, ": cannot open");
  std::ostringstream ss;
  ss << is.rdbuf();
  return ss.str();
}

/// A packed token stream and where it came from.
struct TokenStream {
  std::vector<std::int32_t> tokens;
  std::vector<std::string> files;  // files that contributed, in order
};

/// Tokenizes `files` in order until `max_tokens` tokens (0: all), inserting
/// `separator` (a token id, or -1 for none) between documents. Truncates the
/// last document. Throws Error when the files hold fewer tokens than asked.
inline TokenStream build_token_stream(const Tokenizer& tok, const std::vector<std::string>& files,
                                      std::size_t max_tokens, std::int32_t separator) {
  TokenStream s;
  for (const std::string& f : files) {
    if (max_tokens && s.tokens.size() >= max_tokens) break;
    const std::string text = read_text_file(f);
    if (text.empty()) continue;
    if (!s.tokens.empty() && separator >= 0) s.tokens.push_back(separator);
    const std::vector<std::int32_t> ids = tok.encode(text);
    s.tokens.insert(s.tokens.end(), ids.begin(), ids.end());
    s.files.push_back(f);
  }
  if (max_tokens) {
    if (s.tokens.size() < max_tokens)
      fail("the text holds only ", s.tokens.size(), " tokens, ", max_tokens, " were asked for");
    s.tokens.resize(max_tokens);
  }
  return s;
}

/// `n_seqs` sequences of exactly `seq_len` tokens, each the beginning of a
/// different file, the files spread evenly over the list (file i·⌊F/n⌋; a
/// file with fewer tokens is passed over for the next unused one). Spreads a
/// small token budget over many documents. Throws Error when the files run out.
inline TokenStream spread_sequences(const Tokenizer& tok, const std::vector<std::string>& files, std::size_t n_seqs,
                                    std::size_t seq_len) {
  TokenStream s;
  if (n_seqs == 0 || seq_len == 0) return s;
  const std::size_t step = std::max<std::size_t>(1, files.size() / n_seqs);
  std::size_t next = 0;  // first file not yet used
  for (std::size_t k = 0; k < n_seqs; ++k) {
    std::size_t i = std::max(next, k * step);
    for (;; ++i) {
      if (i >= files.size())
        fail("spread_sequences: ", files.size(), " files give only ", k, " sequences of ", seq_len, " tokens, ",
             n_seqs, " were asked for");
      std::string text = read_text_file(files[i]);
      // Tokenize a prefix (about 4 bytes per token; the whole file if that is short).
      const std::size_t cut = 16 * seq_len + 256;
      std::vector<std::int32_t> ids = tok.encode(text.size() > cut ? text.substr(0, cut) : text);
      if (ids.size() < seq_len + 8 && text.size() > cut) ids = tok.encode(text);
      if (ids.size() < seq_len + 8) continue;  // +8: the prefix cut cannot touch the kept tokens
      s.tokens.insert(s.tokens.end(), ids.begin(), ids.begin() + std::ptrdiff_t(seq_len));
      s.files.push_back(files[i]);
      next = i + 1;
      break;
    }
  }
  return s;
}

/// The document separator of a vocabulary: "<|endoftext|>" when present, else EOS.
inline std::int32_t document_separator(const Tokenizer& tok) {
  const std::int32_t id = tok.find("<|endoftext|>");
  return id >= 0 ? id : tok.eos_id();
}

}  // namespace headrecon_engine
