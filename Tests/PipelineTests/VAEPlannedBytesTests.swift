// The VAE decoder is one list of blocks: its forward runs every weight group once in list order, and for every
// block the tensor bytes it declares are at least what it holds when it runs, and not far above it.

import Foundation
@testable import Pipeline
import TiledKernels
import XCTest

final class VAEPlannedBytesTests: XCTestCase {
    /// Planned over measured may not exceed this: the block models count, op by op, what the debug build holds
    /// (see `UNetPlannedBytesTests.slack`).
    static let slack = 1.1

    private func decoder(_ folder: URL, residency: WeightResidency = .resident) throws -> VAEDecoder {
        let config = try JSONDecoder().decode(VAEConfig.self, from: Data(contentsOf: folder
            .appendingPathComponent("vae").appendingPathComponent("config.json")))
        return try VAEDecoder(config: config, weights: try ComponentWeights(directory: folder, component: "vae"),
                              residency: residency)
    }

    func testEveryBlockHoldsNoMoreThanItDeclares() throws {
        for folder in [ModelFixtures.tinyModel, ModelFixtures.root.appendingPathComponent("tiny-sd2-base")] {
            let vae = try decoder(folder)
            var random = TorchRandom(seed: 5)
            for (h, w, n) in [(8, 8, 1), (5, 7, 2), (16, 12, 1)] {
                let z = random.randn([n, vae.config.latentChannels, h, w])
                let planned = VAEDecoder.plannedTensorBytes(vae.blocks.map(\.layout), batch: n, latentHeight: h,
                                                            latentWidth: w)
                var measured = [Int](repeating: 0, count: vae.blocks.count)
                let baseline = TensorMemory.tensorBytes
                _ = vae.forward(z, beforeBlock: { _ in TensorMemory.resetPeakTensorBytes() },
                                afterBlock: { measured[$0] = TensorMemory.peakTensorBytes - baseline })
                for (i, block) in vae.blocks.enumerated() {
                    let what = "\(folder.lastPathComponent) VAE block \(i) \(block.layout) at \(h)×\(w)×\(n)"
                    XCTAssertGreaterThanOrEqual(planned.perBlock[i], measured[i], "under-planned: \(what)")
                    XCTAssertLessThanOrEqual(Double(planned.perBlock[i]), Double(measured[i]) * Self.slack,
                                             "over-planned: \(what) (\(planned.perBlock[i]) vs \(measured[i]))")
                }
                XCTAssertEqual(VAEDecoder.peakActivationBytes(config: vae.config, latentHeight: h, latentWidth: w,
                                                              batch: n, kernelScratch: false),
                               planned.peak + n * vae.config.latentChannels * h * w * 4)
            }
        }
    }

    func testTheDecodeRunsEveryWeightGroupOnceInListOrderAndStreamingChangesNothing() throws {
        let streamed = try decoder(ModelFixtures.tinyModel, residency: .strict)
        let resident = try decoder(ModelFixtures.tinyModel)
        var random = TorchRandom(seed: 6)
        let z = random.randn([1, streamed.config.latentChannels, 6, 6])
        var visited: [WeightGroupID] = []
        streamed.streamer.onRun = { visited.append($0) }
        let a = streamed(z)
        streamed.streamer.onRun = nil
        XCTAssertEqual(visited, streamed.streamer.groupIDs)
        XCTAssertEqual(a.data, resident(z).data)
    }
}
