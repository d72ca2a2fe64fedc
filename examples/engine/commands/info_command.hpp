#pragma once
// `headrecon-engine info`: model properties, tensor types, tokenizer.

#include <chrono>
#include <iostream>
#include <map>
#include <memory>

#include "engine_options.hpp"

namespace headrecon_engine::commands {

inline int run_info(const ModelOptions& mo) {
  const GgufFile f(mo.path());
  std::cout << "file: " << f.path() << " (" << f.file_size() << " bytes)\n"
            << "GGUF version " << f.version() << ", " << f.metadata().size() << " metadata keys, "
            << f.tensors().size() << " tensors, alignment " << f.alignment() << ", data at offset "
            << f.data_offset() << "\n";
  std::map<std::string, std::size_t> types;
  for (const auto& t : f.tensors()) ++types[ggml_type_name(t.type)];
  std::cout << "tensor types:";
  for (const auto& [k, n] : types) std::cout << " " << k << " x" << n;
  std::cout << "\n";
  if (f.find("general.name")) std::cout << "name: " << f.get_string("general.name") << "\n";
  const auto t0 = std::chrono::steady_clock::now();
  const LlamaModel m = mo.load(f);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const LlamaConfig& c = m.config();
  std::cout << "architecture: " << c.arch << "\nlayers: " << c.n_layer << "\nhidden: " << c.n_embd
            << "\nheads: " << c.n_head << "\nkv heads: " << c.n_head_kv << "\nhead_dim: " << c.head_dim
            << "\nffn: " << c.n_ff << "\nvocab: " << c.n_vocab << "\ncontext (train): " << c.n_ctx_train
            << "\nrope: base " << c.rope_base << ", dims " << c.n_rot << ", "
            << (c.rope_neox ? "NEOX (halves)" : "NORM (adjacent pairs)") << "\nrms eps: " << c.rms_eps
            << "\noutput: " << (c.tied_output ? "tied to token_embd" : "output.weight")
            << "\nparameters: " << m.n_params() << "\nweight bytes (read per decoded token): " << m.weight_bytes()
            << "\nweight kernels: " << weight_kernel_targets() << "\nattention kernels: " << attention_target()
            << "\nload: " << load_s << " s\n";
  const Tokenizer tok(f);
  std::cout << "tokenizer: gpt2 (byte-level BPE), pre '" << tok.pre_tokenizer() << "', vocab "
            << tok.vocab_size() << ", bos " << tok.bos_id() << ", eos " << tok.eos_id()
            << ", add_bos " << (tok.add_bos() ? "true" : "false") << "\n";
  return 0;
}

inline void add_info_command(headrecon::cli::Tool& tool) {
  auto mo = std::make_shared<ModelOptions>();
  CLI::App* c = tool.add("info", "model properties, tensor types", [mo] { return run_info(*mo); });
  mo->add_model(c);
}

}  // namespace headrecon_engine::commands
