// The memory planner's UNet numbers are promises the code keeps: for every block of the list, the tensor bytes
// it declares for a shape and memory mode are at least what it holds when it runs, and not far above it.

import Foundation
@testable import Pipeline
import TiledKernels
import XCTest

final class UNetPlannedBytesTests: XCTestCase {
    /// Shapes and modes the walk must cover: odd sizes (downsampling rounds up, upsampling resizes to the skip),
    /// whole batch and item by item at every level or only the top ones, F32 and F16 skips, and a map whose
    /// tokens exceed one feed-forward tile.
    static let cases: [(height: Int, width: Int, batch: Int, memory: UNetMemoryMode)] = [
        (8, 8, 2, .fastest),
        (8, 8, 2, UNetMemoryMode(itemByItem: true, halfPrecisionSkips: true, itemByItemMinimumPixels: 0)),
        (13, 10, 2, UNetMemoryMode(itemByItem: true, halfPrecisionSkips: false, itemByItemMinimumPixels: 60)),
        (13, 10, 1, UNetMemoryMode(itemByItem: false, halfPrecisionSkips: true)),
        (24, 24, 2, .fastest),
        (24, 24, 2, UNetMemoryMode(itemByItem: true, halfPrecisionSkips: true, itemByItemMinimumPixels: 100)),
    ]

    /// Planned over measured may not exceed this (the "within 10%"). The model counts every tensor the
    /// forward pass can hold at a block's peak under the lifetimes of the debug build the tests run in (a `let`
    /// lives to the end of its scope, an argument until its call returns, a copy where a kernel's in-place write
    /// finds its storage shared): most blocks match to the byte. What it over-counts is a lane loop bounded by
    /// its first or last lane and a phase whose `let` the code frees early (measured at most 1.097 here).
    static let slack = 1.1

    private func check(directory: URL, component: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let configURL = directory.appendingPathComponent(component).appendingPathComponent("config.json")
        let config = try JSONDecoder().decode(UNetConfig.self, from: Data(contentsOf: configURL))
        let unet = try UNet(config: config, weights: try ComponentWeights(directory: directory, component: component))
        let contextDim = try config.crossAttentionDim.expanded(levels: 1, field: "", file: "")[0]
        var random = TorchRandom(seed: 11)
        var worst = 0.0
        for c in Self.cases {
            let sample = random.randn([c.batch, config.inChannels, c.height, c.width])
            let context = random.randn([c.batch, 77, contextDim])
            let planned = UNet.plannedBytes(unet.blocks.map(\.layout), batch: c.batch, latentHeight: c.height,
                                            latentWidth: c.width, contextTokens: 77, memory: c.memory)
            var measured = [Int](repeating: 0, count: unet.blocks.count)
            let baseline = TensorMemory.tensorBytes
            _ = unet.forward(sample, timestep: 500, context: context, memory: c.memory,
                             beforeBlock: { _ in TensorMemory.resetPeakTensorBytes() },
                             afterBlock: { measured[$0] = TensorMemory.peakTensorBytes - baseline })
            for (i, block) in unet.blocks.enumerated() {
                let what = "\(component) block \(i) \(block.layout.kind) at \(c.height)×\(c.width)×\(c.batch) \(c.memory)"
                XCTAssertGreaterThanOrEqual(planned.perBlock[i], measured[i], "under-planned: \(what)", file: file, line: line)
                XCTAssertLessThanOrEqual(Double(planned.perBlock[i]), Double(measured[i]) * Self.slack,
                                         "over-planned by more than \(Self.slack)×: \(what) (\(planned.perBlock[i]) vs \(measured[i]))",
                                         file: file, line: line)
                worst = max(worst, Double(planned.perBlock[i]) / Double(max(measured[i], 1)))
                if ProcessInfo.processInfo.environment["SDD_PRINT_BLOCKS"] != nil { print(what, planned.perBlock[i], measured[i]) }
            }
            XCTAssertEqual(planned.peak, planned.perBlock.max(), file: file, line: line)
        }
        print("\(component): planned / measured tensor bytes per block at most \(worst)")
    }

    func testTinySDBlocksHoldNoMoreThanTheyDeclare() throws {
        try check(directory: ModelFixtures.tinyModel, component: "unet")
    }

    func testLinearProjectionUNetBlocksHoldNoMoreThanTheyDeclare() throws {
        try check(directory: ModelFixtures.root, component: "tiny-unet-linear")
    }

    func testSD2BlocksHoldNoMoreThanTheyDeclare() throws {
        try check(directory: ModelFixtures.root.appendingPathComponent("tiny-sd2-base"), component: "unet")
    }

    func testThePlanTakesTheUNetFromItsBlockListWhateverTheVAE() throws {
        let kl = try StableDiffusionPipeline(model: StableDiffusionModel(url: ModelFixtures.tinyModel))
        let taesd = try StableDiffusionPipeline(model: StableDiffusionModel(url: ModelFixtures.tinyModel)
            .replacingVAE(with: ModelFixtures.root.appendingPathComponent("tiny-taesd")))
        let layout = try UNet.layout(kl.model.unet)
        for budget in [nil, 1 << 30] as [Int?] {
            let a = try MemoryPlanner.plan(budget: budget, pipeline: kl, width: 128, height: 96)
            let b = try MemoryPlanner.plan(budget: budget, pipeline: taesd, width: 128, height: 96)
            XCTAssertEqual(a.unetActivations, b.unetActivations)
            XCTAssertEqual(a.unetWeights, b.unetWeights)
            XCTAssertEqual(a.scratch, b.scratch)
            XCTAssertEqual(a.unetMemory, b.unetMemory)
            let walk = UNet.plannedBytes(layout, batch: 2, latentHeight: 12, latentWidth: 16, contextTokens: 77,
                                         memory: a.unetMemory)
            XCTAssertGreaterThanOrEqual(a.unetActivations, walk.peak, "the block walk's peak is in the plan")
            XCTAssertEqual(a.scratch, walk.scratch)
        }
    }

    func testABudgetTheWholeBatchMissesByAByteRunsItemByItem() throws {
        let pipeline = try StableDiffusionPipeline(model: StableDiffusionModel(url: ModelFixtures.tinyModel))
        let weights = try pipeline.weightFigures()
        func part(_ budget: Int?) throws -> MemoryPlanner.UNetPart {
            try MemoryPlanner.planUNet(model: pipeline.model, weights: weights, latentHeight: 32, latentWidth: 32,
                                       count: 1, guided: true, budget: budget)
        }
        let open = try part(nil)
        XCTAssertEqual(try part(open.peak).memory, .fastest)
        let short = try part(open.peak - 1)
        XCTAssertEqual(short.memory, .compact)
        XCTAssertLessThan(short.peak, open.peak)
        XCTAssertEqual(short.limits, .standard, "the standard scratch bounds while the compact UNet fits")
        // A byte less takes smaller scratch bounds, and the smallest a byte short is refused (UNetScratchTests).
    }
}
