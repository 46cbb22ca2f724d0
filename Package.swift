// swift-tools-version:6.0
// sdd: a Stable Diffusion text-to-image daemon for modest hardware.
// Dependencies point one way (see DESIGN.md): sdd → Daemon → Pipeline → TiledKernels → MMapWeights → CKernels;
// sdctl → SDDAPI only, so the client builds and starts fast.
import PackageDescription

// `-Ounchecked` (no bounds or overflow traps) belongs to the compute kernels alone, which their tests check against
// plain references. Everything that reads files, configs or requests (MMapWeights, Pipeline, Daemon) keeps Swift's
// checks in the shipped release binary, so a missed check on a hostile file traps instead of corrupting memory.
let uncheckedKernels: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]
let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
]

let package = Package(
    name: "sdd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "sdd", targets: ["sdd"]),
        .executable(name: "sdctl", targets: ["sdctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        // MMapWeights reads its block types from CKernels' type table (TypeTraits.c), shared with the kernels.
        .target(name: "MMapWeights", dependencies: ["CKernels"]),
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "TiledKernels", dependencies: ["CBLAS", "CKernels", "MMapWeights"], swiftSettings: uncheckedKernels),
        .target(name: "Pipeline", dependencies: ["MMapWeights", "TiledKernels", "CKernels", "CPNG"]),
        .target(name: "SDDAPI"),
        .target(name: "Daemon", dependencies: [
            "Pipeline", "TiledKernels", "SDDAPI", "CSystemd",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ] + nio),
        .executableTarget(name: "sdd", dependencies: [
            "Pipeline", "Daemon",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "sdctl", dependencies: [
            "SDDAPI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ] + nio),
        // Readers only tests need (PNG, .npy), kept out of the shipped modules.
        .target(name: "TestSupport", dependencies: ["Pipeline", "CPNG"], path: "Tests/TestSupport"),
        .testTarget(name: "MMapWeightsTests", dependencies: ["MMapWeights"]),
        .testTarget(name: "TiledKernelsTests", dependencies: ["TiledKernels"]),
        .testTarget(name: "PipelineTests", dependencies: ["Pipeline", "TestSupport"]),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "SDDAPI", "TestSupport"] + nio),
        .testTarget(name: "SDDTests", dependencies: ["sdd", "sdctl", "Pipeline", "MMapWeights", "TestSupport"]),
    ]
)
