"""What the benchmark scripts in bench/ share. One concern per module:

- timing:          interleaved rounds (every implementation once per round, order rotated),
                   the per-implementation summary (median, quartiles), the SGEMM rate
- load:            other processes on the machine: /proc/stat busy fraction, the CPU other
                   processes used during a timed section, waiting for an idle machine, loadavg
- machine:         machine info (CPU model and flags, torch), importing rnnfast (installed or
                   from the tree's python/), rnnfast.info()
- checks:          output and gradient comparison of two runners, with the tolerances
- runners:         what the timing loop calls: Inputs, Runner, ModuleRunner, Unsupported
- registry:        bench_cpu.py's implementations (rnnfast, torch, the ONNX peers) by name
- onnx_peers:      ONNX Runtime and OpenVINO as inference peers (registered by registry)
- cases:           bench_cpu.py's shapes (Case), grids, reference modules and inputs
- report:          text-table and JSON helpers shared by the scripts
- cpu_report:      bench_cpu.py's table, legend and PNG
- variant_runners: bench_variants.py's rnnfast runner and the baselines users write today

The entry scripts (bench/*.py) put bench/ on sys.path and import `harness.<module>`; nothing
needs installing.
"""
