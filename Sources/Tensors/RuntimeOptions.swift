// The settings hgdpo takes from its environment, read once at start-up (Sources/hgdpo/main.swift) into one value and
// installed before any kernel runs: nothing below reads an environment variable. Tests and library users get the
// defaults unless they install other options.
import Foundation

public struct RuntimeOptions: Sendable, Equatable {
    /// Threads per process for `parallelFor` and the bf16 GEMMs: HGDPO_THREADS, else OMP_NUM_THREADS (the launchers
    /// export both), else the active processors.
    public var threads: Int
    /// HGDPO_ATTENTION=blas|avx512|avx512bf16: force one attention kernel (benchmarks); nil chooses by head size and precision.
    public var attentionKernel: String?
    /// HGDPO_CONV=blas: im2col + the GEMMs (OpenBLAS, or the bf16 GEMM for bf16 weights) for every convolution
    /// (benchmarks, tests of both paths); false uses the implicit-GEMM kernels (fp32 and bf16) where they fit.
    public var convolutionsOnBLAS: Bool
    /// HGDPO_BF16_PATH=generic|avx2|avx512|emulated: the bf16 GEMM path (tests of a path on another CPU); nil: the best.
    public var bf16Path: BF16.Path?
    /// HGDPO_FAULT_*: the trainer's fault-injection specs (tests only; see Training/FaultInjection.swift).
    public var faults: [String: String]
    /// HGDPO_LOCK_HEARTBEAT / HGDPO_LOCK_STALE_AFTER: the run-folder lock's timings in seconds (tests; IO/RunFolderLock).
    public var lockHeartbeat: Double?, lockStaleAfter: Double?
    /// SLURM_JOB_ID, recorded by the run-folder lock to name the holder.
    public var slurmJobID: String?

    /// The defaults: every processor, kernels chosen by the CPU, no faults.
    public static let defaults = RuntimeOptions(threads: processorCount(), attentionKernel: nil, convolutionsOnBLAS: false,
                                                bf16Path: nil, faults: [:])

    public init(threads: Int, attentionKernel: String?, convolutionsOnBLAS: Bool, bf16Path: BF16.Path?, faults: [String: String]) {
        self.threads = max(1, threads); self.attentionKernel = attentionKernel
        self.convolutionsOnBLAS = convolutionsOnBLAS; self.bf16Path = bf16Path; self.faults = faults
    }

    /// The options an environment (e.g. `ProcessInfo.processInfo.environment`) sets; unknown or malformed values
    /// fall back to the defaults, as before.
    public init(environment env: [String: String]) {
        func positive(_ name: String) -> Int? { env[name].flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil } }
        let paths: [String: BF16.Path] = ["generic": .generic, "avx2": .avx2, "avx512": .avx512, "emulated": .emulated]
        self.init(threads: positive("HGDPO_THREADS") ?? positive("OMP_NUM_THREADS") ?? processorCount(),
                  attentionKernel: env["HGDPO_ATTENTION"], convolutionsOnBLAS: env["HGDPO_CONV"] == "blas",
                  bf16Path: env["HGDPO_BF16_PATH"].flatMap { paths[$0] },
                  faults: env.filter { $0.key.hasPrefix("HGDPO_FAULT_") })
        lockHeartbeat = env["HGDPO_LOCK_HEARTBEAT"].flatMap(Double.init)
        lockStaleAfter = env["HGDPO_LOCK_STALE_AFTER"].flatMap(Double.init)
        slurmJobID = env["SLURM_JOB_ID"]
    }

    /// The options in force (set once by `install`, before kernels run).
    nonisolated(unsafe) public private(set) static var current = RuntimeOptions.defaults

    /// Makes `options` the process's settings: threads of the one pool (loops and GEMMs) and of the bf16 GEMMs, bf16 path.
    public static func install(_ options: RuntimeOptions) {
        current = options
        Parallel.threads = options.threads
        BF16.setThreads(options.threads)
        if let path = options.bf16Path { BF16.setPath(path) }
    }
}

private func processorCount() -> Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }
