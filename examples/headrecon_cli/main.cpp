// headrecon: the command-line tool (fit, inspect, synth, demo, bench). Each
// command lives in its own header; `headrecon COMMAND --help` lists its options.
#include <iostream>
#include <memory>

#include "bench_command.hpp"
#include "command_line.hpp"
#include "demo_command.hpp"
#include "fit_command.hpp"
#include "inspect_command.hpp"
#include "synth_command.hpp"

int main(int argc, char** argv) {
  using namespace headrecon::cli;
  std::unique_ptr<MpiSession> mpi;  // MPI when started by mpirun (fit_distributed.hpp)
  try {
    mpi = std::make_unique<MpiSession>(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "headrecon: error: " << e.what() << "\n";
    return 1;
  }
  Tool tool("headrecon", "headrecon: fit and inspect attention-head reconstruction plans.\n"
                         "Errors (unknown options, bad values, bad input) exit with status 1; --help with 0.");
  add_fit_command(tool);
  add_inspect_command(tool);
  add_synth_command(tool);
  add_demo_command(tool);
  add_bench_command(tool);
  return tool.main(argc, argv);
}
