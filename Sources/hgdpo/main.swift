// The `hgdpo` executable: parses nothing itself, see Sources/Commands.
import Commands
import CKernels
import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

// Release builds are compiled for haswell-level x86-64 (AVX2, FMA, BMI2; every AVX-512 CPU has them): refuse
// older CPUs with a message instead of an illegal-instruction crash in the first vectorised loop.
#if arch(x86_64)
if hg_cpu_has_avx2_fma() == 0 {
    fputs("hgdpo: error: this CPU lacks AVX2/FMA/BMI2, which this build of hgdpo is compiled for\n", stderr)
    exit(2)
}
#endif
// The one place the environment is read: threads, kernel choices, bf16 path (and the trainer's test-only faults).
RuntimeOptions.install(RuntimeOptions(environment: ProcessInfo.processInfo.environment))
Memory.keepFreedMemory()
setvbuf(stdout, nil, _IOLBF, 0)
exit(Commands.main(Array(CommandLine.arguments.dropFirst())))
