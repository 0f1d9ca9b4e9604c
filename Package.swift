// swift-tools-version:5.9
// hgdpo: HG-DPO (Diffusion-DPO + statistic matching) for Stable Diffusion U-Nets with LoRA, data-parallel over MPI.
// C libraries come from Debian: libopenmpi-dev, libopenblas-dev, libpng-dev (launch/install-deps.sh).
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]

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
        .target(name: "Layers", dependencies: ["Tensors"], swiftSettings: optimize),
        .target(name: "UNet", dependencies: ["Tensors", "IO", "Layers"], swiftSettings: optimize),
        .target(name: "Schedulers", dependencies: ["IO"], swiftSettings: optimize),
        .target(name: "Datasets", dependencies: ["Tensors", "IO"], swiftSettings: optimize),
        .target(name: "Training", dependencies: ["Tensors", "IO", "UNet", "Schedulers", "Distributed", "Datasets"], swiftSettings: optimize),
        .target(name: "Distributed", dependencies: ["CMPI"], swiftSettings: optimize),
        .target(name: "Commands", dependencies: ["Tensors", "IO", "Distributed", "UNet", "Schedulers", "Training", "Datasets"],
                swiftSettings: optimize),
        .executableTarget(name: "hgdpo", dependencies: ["Commands"], swiftSettings: optimize),

        // MARK: - Tests (fixtures are committed; `swift test` needs no Python)
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "TensorsTests", dependencies: ["Tensors", "TestSupport"]),
        .testTarget(name: "LayersTests", dependencies: ["Layers", "TestSupport"]),
        .testTarget(name: "UNetTests", dependencies: ["UNet", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DatasetsTests", dependencies: ["Datasets", "TestSupport"]),
        .testTarget(name: "SchedulersTests", dependencies: ["Schedulers", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "TrainingTests", dependencies: ["Training", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "IOTests", dependencies: ["IO", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DistributedTests", dependencies: ["Distributed", "TestSupport", "hgdpo"]),
        .testTarget(name: "CommandsTests", dependencies: ["Commands", "TestSupport", "hgdpo"]),
    ]
)
