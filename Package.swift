// swift-tools-version:6.0
// sdd: a Stable Diffusion text-to-image daemon for modest hardware.
// Dependencies point one way (see DESIGN.md): sdd → Daemon → Pipeline → TiledKernels → MMapWeights;
// sdctl → SDDAPI only, so the client builds and starts fast.
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]
let package = Package(
    name: "sdd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "sdd", targets: ["sdd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .target(name: "MMapWeights", swiftSettings: optimize),
        .target(name: "TiledKernels", dependencies: ["CBLAS", "MMapWeights"], swiftSettings: optimize),
        .target(name: "Pipeline", dependencies: ["MMapWeights", "TiledKernels", "CPNG"], swiftSettings: optimize),
        .executableTarget(name: "sdd", dependencies: [
            "Pipeline",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "MMapWeightsTests", dependencies: ["MMapWeights"]),
        .testTarget(name: "TiledKernelsTests", dependencies: ["TiledKernels"]),
        .testTarget(name: "PipelineTests", dependencies: ["Pipeline"]),
        .testTarget(name: "SDDTests", dependencies: ["sdd", "Pipeline"]),
    ]
)
