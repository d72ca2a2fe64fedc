// headrecon-engine: the example engine's command-line tool. Runs a Llama-
// family GGUF model on the CPU, captures Q/K/V activations for headrecon, and
// measures perplexity and speed. See examples/engine/README.md. Each command
// lives in commands/; `headrecon-engine COMMAND --help` lists its options.

#include "command_line.hpp"
#include "headrecon/cpu/dispatch.hpp"
#include "commands/bench_command.hpp"
#include "commands/capture_command.hpp"
#include "commands/demo_command.hpp"
#include "commands/detokenize_command.hpp"
#include "commands/eval_command.hpp"
#include "commands/generate_command.hpp"
#include "commands/info_command.hpp"
#include "commands/logits_command.hpp"
#include "commands/ppl_command.hpp"
#include "commands/probe_command.hpp"
#include "commands/tokenize_command.hpp"
#include "quant_matvec_dispatch.hpp"

namespace {
const char* const description = R"(headrecon-engine: a Llama-family GGUF model on the CPU; captures Q/K/V for headrecon,
measures perplexity through the reference-only KV cache, and speed.
--model defaults to $HEADRECON_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf (HEADRECON_CACHE
defaults to ~/.cache/headrecon); fetch it with examples/engine/fetch_model.sh.
Errors (unknown options, bad values, bad input) exit with status 1; --help with 0.)";
}  // namespace

int main(int argc, char** argv) {
  using namespace headrecon_engine::commands;
  // Attention and the weight products with f32 inputs on the best SIMD target of
  // this CPU (--static-attention, --static-weights: the build's).
  headrecon_engine::engine_attention_kernel() = {headrecon::dispatch::attention, headrecon::dispatch::target_name()};
  headrecon_engine::engine_quant_kernel() = {headrecon_engine::dispatch_quant_matvec,
                                             headrecon_engine::dispatch_quant_target()};
  headrecon::cli::Tool tool("headrecon-engine", description);
  add_info_command(tool);
  add_tokenize_command(tool);
  add_detokenize_command(tool);
  add_logits_command(tool);
  add_ppl_command(tool);
  add_capture_command(tool);
  add_generate_command(tool);
  add_bench_command(tool);
  add_demo_command(tool);
  add_eval_command(tool);
  add_probe_command(tool);
  return tool.main(argc, argv);
}
