// swift-tools-version:5.9
// hgdpo: HG-DPO (Diffusion-DPO + statistic matching) for Stable Diffusion U-Nets with LoRA, data-parallel over MPI.
// C libraries come from Debian: libopenmpi-dev, libopenblas-dev, libpng-dev (launch/install-deps.sh).
import PackageDescription

// Release code is compiled for haswell-level x86-64 (AVX2, FMA, BMI2): every CPU this runs on has them (the AVX-512
// machines of DEVELOPERS.md and AVX2 ones), and the element-wise loops vectorise 8 wide instead of 4 (-14% CPU
// time per training step on small@32). The executable's own entry point stays baseline so it can refuse older CPUs.
#if arch(x86_64)
let cpuFlags = ["-target-cpu", "haswell"]
#else
let cpuFlags: [String] = []
#endif
let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"] + cpuFlags, .when(configuration: .release))]
let optimizeBaseline: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]

let package = Package(
    name: "hgdpo",
    products: [
        .executable(name: "hgdpo", targets: ["hgdpo"]),
    ],
    targets: [
        // MARK: - C libraries
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .target(name: "CPNG", path: "Sources/CPNG", linkerSettings: [.linkedLibrary("png16")]),
        // Our own SIMD kernels (bf16 GEMM with AVX512-BF16): chosen at run time by CPU feature, never by build flags.
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3"])]),

        // MARK: - Swift modules, one per concern
        .target(name: "Tensors", dependencies: ["CBLAS", "CKernels"], swiftSettings: optimize),
        .target(name: "IO", dependencies: ["Tensors", "CPNG"], swiftSettings: optimize),
        .target(name: "Layers", dependencies: ["Tensors", "CKernels"], swiftSettings: optimize),
        // The model framework: parameter table, modules keyed by checkpoint names, LoRA, saved activations.
        .target(name: "NN", dependencies: ["Tensors", "IO", "Layers"], swiftSettings: optimize),
        .target(name: "UNet", dependencies: ["Tensors", "IO", "Layers", "NN"], swiftSettings: optimize),
        .target(name: "TextEncoder", dependencies: ["Tensors", "IO", "Layers", "NN"], swiftSettings: optimize),
        .target(name: "Schedulers", dependencies: ["IO"], swiftSettings: optimize),
        .target(name: "VAE", dependencies: ["Tensors", "IO", "Layers", "NN"], swiftSettings: optimize),
        .target(name: "Sampling", dependencies: ["Tensors", "IO", "NN", "UNet", "TextEncoder", "VAE", "Schedulers"], swiftSettings: optimize),
        .target(name: "Datasets", dependencies: ["Tensors", "IO"], swiftSettings: optimize),
        .target(name: "Scoring", dependencies: ["Tensors", "IO", "Layers", "NN", "TextEncoder"], swiftSettings: optimize),
        .target(name: "ToyWorld", dependencies: ["Tensors", "IO", "Scoring"], swiftSettings: optimize),
        .target(name: "DatasetBuilder", dependencies: ["Tensors", "IO", "Sampling", "Scoring", "Datasets"], swiftSettings: optimize),
        .target(name: "Evaluation", dependencies: ["Tensors", "IO", "NN", "UNet", "Sampling", "Scoring"], swiftSettings: optimize),
        .target(name: "Training", dependencies: ["Tensors", "IO", "NN", "UNet", "Schedulers", "Distributed", "Datasets", "Sampling", "TextEncoder", "VAE"], swiftSettings: optimize),
        .target(name: "Distributed", dependencies: ["CMPI"], swiftSettings: optimize),
        .target(name: "LatentEncoding", dependencies: ["Tensors", "IO", "NN", "Datasets", "VAE", "TextEncoder", "Distributed"], swiftSettings: optimize),
        .target(name: "Commands", dependencies: ["Tensors", "IO", "Layers", "NN", "Distributed", "UNet", "Schedulers", "Training", "Datasets",
                                                  "TextEncoder", "VAE", "LatentEncoding", "Sampling", "Scoring", "Evaluation", "ToyWorld",
                                                  "DatasetBuilder"],
                swiftSettings: optimize),
        .executableTarget(name: "hgdpo", dependencies: ["Commands", "CKernels", "Tensors"], swiftSettings: optimizeBaseline),

        // MARK: - Tests (fixtures are committed; `swift test` needs no Python)
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "TestSupport"]),
        .testTarget(name: "LayersTests", dependencies: ["Layers", "TestSupport"]),
        .testTarget(name: "UNetTests", dependencies: ["UNet", "NN", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "TextEncoderTests", dependencies: ["TextEncoder", "TestSupport", "hgdpo"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "TestSupport"]),
        .testTarget(name: "VAETests", dependencies: ["VAE", "NN", "TestSupport", "hgdpo"], resources: [.copy("Fixtures")]),
        .testTarget(name: "SchedulersTests", dependencies: ["Schedulers", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "IOTests", dependencies: ["IO", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DistributedTests", dependencies: ["Distributed", "TestSupport", "hgdpo"]),
        .testTarget(name: "SamplingTests", dependencies: ["Sampling", "Training", "Datasets", "ToyWorld", "TestSupport", "hgdpo"], resources: [.copy("Fixtures")]),
        .testTarget(name: "ToyWorldTests", dependencies: ["ToyWorld", "TestSupport"]),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "Scoring", "Sampling", "Schedulers", "TestSupport", "hgdpo"]),
        .testTarget(name: "CommandsTests", dependencies: ["Commands", "TestSupport", "hgdpo"]),
        .testTarget(name: "ScoringTests", dependencies: ["Scoring", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DatasetBuilderTests", dependencies: ["DatasetBuilder", "Datasets", "TestSupport", "hgdpo"]),
        .testTarget(name: "FuzzTests", dependencies: ["IO", "Datasets", "Schedulers", "Tensors", "TextEncoder", "Training", "UNet", "VAE",
                                                  "TestSupport"]),
        .testTarget(name: "LatentEncodingTests", dependencies: ["LatentEncoding", "NN", "UNet", "TestSupport", "hgdpo"], resources: [.copy("Fixtures")]),
    ]
)
