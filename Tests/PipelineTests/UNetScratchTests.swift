// The UNet's kernel scratch under a budget: the bounds a plan picks reach the kernels for that call only, the
// scratch the planner counts for them covers what the kernels hold, and smaller bounds change no result beyond
// the order of a product's sums.

import Foundation
import MMapWeights
@testable import Pipeline
@testable import TiledKernels
import XCTest

final class UNetScratchTests: XCTestCase {
    nonisolated(unsafe) private static var dir: URL!
    nonisolated(unsafe) private static var pipeline: StableDiffusionPipeline!

    /// The tiny model as Q8_0 (F32 weights are used in place and take no scratch; typed ones are dequantized
    /// whole or in panels, which is what the bounds govern), with F32 products.
    override class func setUp() {
        super.setUp()
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-scratch-\(UUID().uuidString)")
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let url = dir.appendingPathComponent("tiny-q8_0.gguf")
            try ModelConverter.convert(diffusersFolder: ModelFixtures.tinyModel, to: url,
                                       options: ConversionOptions(type: .q8_0))
            // F32 products: the BF16 kernel takes a product by its shape (`bf16Pays`), so with BF16 products smaller
            // panels could also change which products round their inputs to BF16; F32 isolates the bounds' effect.
            pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: url), products: .f32)
        } catch {
            XCTFail("cannot make the Q8_0 tiny model: \(error)")
        }
    }

    override class func tearDown() {
        try? FileManager.default.removeItem(at: dir)
        super.tearDown()
    }

    /// Bounds that bind on the tiny UNet (its largest weight has 18,432 values; a 3×3 band over a 24×24 map of
    /// 64 channels 331,776): every typed weight above 8,192 values in panels, bands of a few rows.
    static let tight = GemmLimits.uniform(floats: 1 << 13)

    private func inputs(height: Int, width: Int) throws -> (sample: Tensor, context: Tensor) {
        var random = TorchRandom(seed: 5)
        let config = try XCTUnwrap(Self.pipeline).model.unet
        return (random.randn([2, config.inChannels, height, width]), random.randn([2, 77, 32]))
    }

    /// The pool's high-water mark over one evaluation, starting from no idle buffers.
    private func measuredScratch(_ unet: UNet, _ sample: Tensor, _ context: Tensor, limits: GemmLimits,
                                 memory: UNetMemoryMode) -> (Int, Tensor) {
        ScratchArena.releaseIdle()
        ScratchArena.resetHighWater()
        let out = unet(sample, timestep: 400, context: context, memory: memory, limits: limits)
        return (ScratchArena.highWaterBytes, out)
    }

    func testThePlannedScratchCoversWhatTheKernelsHoldUnderEachBound() throws {
        let unet = try XCTUnwrap(Self.pipeline).unet()
        let (sample, context) = try inputs(height: 24, width: 24)
        let layout = unet.blocks.map(\.layout)
        for limits in [Self.tight, .uniform(floats: 1 << 15)] {
            for memory in [UNetMemoryMode.fastest, .compact] {
                let planned = UNet.plannedBytes(layout, batch: 2, latentHeight: 24, latentWidth: 24, contextTokens: 77,
                                                memory: memory, limits: limits).scratch
                let (held, _) = measuredScratch(unet, sample, context, limits: limits, memory: memory)
                print("scratch under \(limits.bandFloats) floats, \(memory): planned \(planned), held at most \(held)")
                XCTAssertGreaterThan(held, 0, "the Q8_0 weights are dequantized into scratch")
                XCTAssertLessThanOrEqual(held, planned, "under-planned scratch (\(memory))")
                // The model counts the largest buffer a core can ask for at every core at once (a band of the widest
                // conv on each, or the largest panel); the kernels reach it only when the cores' units happen to
                // ask together, so it may sit a core's buffer or two above (3 buffers planned on 2 cores).
                XCTAssertLessThanOrEqual(planned, 3 * held, "over-planned scratch (\(memory)): \(planned) vs \(held)")
            }
        }
    }

    func testTheStandardBoundsKeepTheirScratchFigure() throws {
        // The standard plan is what every run without a tight budget uses: 16 MiB of whole weight and an 8 MiB band
        // per core; no single band row of SD 1.5 at 512×512 exceeds the band bound, so nothing is added to it.
        let sd15 = try JSONDecoder().decode(UNetConfig.self, from: Data("{}".utf8))
        let standard = try MemoryPlanner.unetScratchBytes(sd15, latentHeight: 64, latentWidth: 64)
        XCTAssertEqual(standard, (16 << 20) + Parallel.cores * (8 << 20))
        let small = try MemoryPlanner.unetScratchBytes(sd15, latentHeight: 64, latentWidth: 64,
                                                       limits: .uniform(floats: 1 << 18))
        XCTAssertLessThan(small, standard / 3)
    }

    func testTightBoundsGiveTheStandardResultUpToTheOrderOfSums() throws {
        let unet = try XCTUnwrap(Self.pipeline).unet()
        let (sample, context) = try inputs(height: 24, width: 24)
        let (_, standard) = measuredScratch(unet, sample, context, limits: .standard, memory: .fastest)
        let (_, tight) = measuredScratch(unet, sample, context, limits: Self.tight, memory: .fastest)
        let err = relativeMaxError(tight, standard)
        print("tight vs standard bounds: relative max error \(err)")
        // Panels and bands cut a product into GEMMs over fewer rows or columns; each output element is the same
        // dot product of K ≤ 576 terms, which BLAS may block differently: a reordered F32 sum moves by at most
        // K · 2⁻²⁴ ≈ 3.4e-5 of the sum of its terms' magnitudes, and these are of the order of the output.
        XCTAssertLessThanOrEqual(err, 3.4e-5)
    }

    func testTheBoundsReachOnlyTheCallThatBindsThem() {
        XCTAssertEqual(GemmLimits.current, .standard)
        GemmLimits.$current.withValue(Self.tight) { XCTAssertEqual(GemmLimits.current, Self.tight) }
        XCTAssertEqual(GemmLimits.current, .standard, "the bounds end with the call")
        final class Seen: @unchecked Sendable {  // written by the thread before it finishes, read after
            var limits: GemmLimits?
        }
        let seen = Seen()
        let other = Thread { seen.limits = GemmLimits.current }
        GemmLimits.$current.withValue(Self.tight) {
            other.start()
            // Waits for the event (the thread's end), with a generous bound so a broken thread cannot hang the suite.
            let deadline = Date().addingTimeInterval(60)
            while !other.isFinished && Date() < deadline { usleep(1000) }
        }
        XCTAssertEqual(seen.limits, .standard, "another thread keeps the standard bounds")
    }

    func testABudgetCompactAloneMissesTakesSmallerScratchBoundsAndThenIsRefused() throws {
        let pipeline = try XCTUnwrap(Self.pipeline)
        let weights = try pipeline.weightFigures()
        func part(_ budget: Int?) throws -> MemoryPlanner.UNetPart {
            try MemoryPlanner.planUNet(model: pipeline.model, weights: weights, latentHeight: 64, latentWidth: 64,
                                       count: 1, guided: true, budget: budget)
        }
        let open = try part(nil)
        XCTAssertEqual(open.limits, .standard)
        var compact = open
        compact.memory = .compact
        compact.activations = try MemoryPlanner.unetActivationBytes(pipeline.model.unet, latentHeight: 64,
                                                                     latentWidth: 64, batch: 2, memory: .compact)
        let short = try part(compact.peak - 1)
        XCTAssertEqual(short.memory, .compact)
        XCTAssertNotEqual(short.limits, .standard, "a byte short of the compact UNet: smaller scratch bounds")
        XCTAssertLessThan(short.scratch, compact.scratch)
        XCTAssertEqual(short.scratch, try MemoryPlanner.unetScratchBytes(pipeline.model.unet, latentHeight: 64,
                                                                        latentWidth: 64, limits: short.limits),
                       "the plan's scratch is the figure of the bounds it hands the kernels")
        let smallest = try XCTUnwrap(MemoryPlanner.unetScratchLadder.last)
        var last = short
        last.limits = smallest
        last.scratch = try MemoryPlanner.unetScratchBytes(pipeline.model.unet, latentHeight: 64, latentWidth: 64,
                                                          limits: smallest)
        XCTAssertEqual(try part(last.peak).limits, smallest)
        XCTAssertThrowsError(try part(last.peak - 1)) { XCTAssertTrue("\($0)".contains("too small"), "\($0)") }
    }

    func testTheRunContextCarriesThePlansBounds() throws {
        let pipeline = try XCTUnwrap(Self.pipeline)
        let open = try MemoryPlanner.plan(budget: nil, pipeline: pipeline, width: 512, height: 512)
        XCTAssertEqual(RunContext(plan: open).unetGemmLimits, .standard)
        var plan = open
        plan.unetGemmLimits = Self.tight
        XCTAssertEqual(RunContext(plan: plan).unetGemmLimits, Self.tight)
        XCTAssertEqual(RunContext().unetGemmLimits, .standard)
    }
    func testReleasingBoundsDropAWeightsMappedPagesOnceDequantizedAndKeepTheResult() throws {
        // A 3×3 conv weight of 1024 × 512 channels as Q8_0 in a file of its own (5 MB, larger than the 2 MiB folios a
        // fault can map at once), mapped as the models are.
        var random = TorchRandom(seed: 9)
        let (o, c) = (1024, 512)
        let bytes = Quantizer.quantize(random.randn([o * c * 9]).data.map { $0 * 0.05 }, to: .q8_0)
        let url = Self.dir.appendingPathComponent("conv.q8_0")
        try Data(bytes).write(to: url)
        let file = try MappedFile(url: url)
        let w = Weight(shape: [o, c, 3, 3], type: .q8_0, bytes: file.bytes, owner: file)
        let x = random.randn([2, c, 4, 4])
        var limits = GemmLimits.uniform(floats: 1 << 15)  // panels of 7 rows of 4,608 values (33 KB of Q8_0)
        let kept = conv2d(x, weight: w, bias: nil, stride: 1, padding: 1, limits: limits)
        XCTAssertEqual(try mappedRSS(file), file.size, "dequantizing mapped every page")
        file.release(0..<file.size)
        XCTAssertEqual(try mappedRSS(file), 0)
        limits.releasesMappedWeights = true
        let released = conv2d(x, weight: w, bias: nil, stride: 1, padding: 1, limits: limits)
        // What may stay mapped: around the last panel each core read, what a later fault mapped from the page cache
        // (a folio of up to `refaultReachBytes` on either side) after that panel's release (measured: nothing).
        let left = try mappedRSS(file)
        print("released panels: \(left) of \(file.size) bytes still mapped")
        XCTAssertLessThanOrEqual(left, Parallel.cores * 2 * Weight.refaultReachBytes)
        XCTAssertLessThan(left, file.size / 2)
        XCTAssertEqual(released.data, kept.data, "the same rows, refaulted from the page cache where read again")
    }

    /// SD 1.5's configs (diffusers' runwayml/stable-diffusion-v1-5) with Q8_0 weight figures by arithmetic.
    private func sd15() throws -> (StableDiffusionModel, WeightFigures) {
        let tiny = try StableDiffusionModel(url: ModelFixtures.tinyModel)
        let decode = JSONDecoder()
        let model = try StableDiffusionModel(
            url: URL(fileURLWithPath: "/sd15"), pipelineClass: "StableDiffusionPipeline",
            unet: try decode.decode(UNetConfig.self, from: Data(#"{"cross_attention_dim": 768}"#.utf8)),
            vae: try decode.decode(VAEConfig.self, from: Data(#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}"#.utf8)),
            textEncoder: try decode.decode(CLIPTextConfig.self, from: Data(
                #"{"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}"#.utf8)),
            scheduler: tiny.scheduler, tokenizer: tiny.tokenizer, weights: { _ in throw PipelineError.invalidRequest("configs only") })
        let q8 = 34.0 / 32.0
        // The largest group: the first half of up_blocks.1.resnets.0 — conv1 2560 → 1280 3×3, the 1×1 shortcut
        // 2560 → 1280 and the time projection 1280 → 1280 as Q8_0; norm1 and the biases as F32.
        let typed = 1280 * 2560 * 9 + 1280 * 2560 + 1280 * 1280
        let f32 = (2 * 2560 + 3 * 1280) * 4
        let figures = WeightFigures(
            unetLargestGroupBytes: Int(Double(typed) * q8) + f32, unetTotalBytes: 1 << 30,
            unetLargestWeightElements: 1280 * 2560 * 9, unetLargestGroupF32Bytes: f32, unetTypedBytesPerValue: q8,
            // The VAE as F32 (its F16 weights are widened when bound): a 512-channel 3×3 conv per group at most.
            vaeLargestGroupBytes: 512 * 512 * 9 * 4 + 3 * 512 * 4, vaeTotalBytes: 200 << 20, streamed: true)
        return (model, figures)
    }

    func testSD15At512IsPlannedUnder160MAnd128M() throws {
        let (model, figures) = try sd15()
        for budget in [160 << 20, 128 << 20] {
            let plan = try MemoryPlanner.plan(budget: budget, model: model, weights: figures, width: 512, height: 512)
            print("SD 1.5 under \(MemorySize.describe(budget)): \(plan)")
            XCTAssertLessThanOrEqual(plan.peak, budget)
            XCTAssertTrue(plan.unetGemmLimits.releasesMappedWeights, "streamed typed weights leave as they are read")
            XCTAssertLessThan(plan.unetWeights, figures.unetLargestGroupBytes / 2,
                              "the rows being dequantized and the folios around them, not the 35 MiB group")
        }
        let roomy = try MemoryPlanner.plan(budget: 1 << 30, model: model, weights: figures, width: 512, height: 512)
        XCTAssertEqual(roomy.unetGemmLimits, .standard, "a budget with room keeps the fastest kernels")
    }

    /// The bytes of `file`'s mapping in this process's resident set (/proc/self/smaps "Rss:"; mincore would
    /// report the page cache instead).
    private func mappedRSS(_ file: MappedFile) throws -> Int {
        let start = UInt(bitPattern: try XCTUnwrap(file.bytes.baseAddress))
        // (Read to the end: /proc files report a size of 0.)
        let handle = try XCTUnwrap(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), fields.count >= 5,
               let lo = UInt(range.split(separator: "-")[0], radix: 16), let hi = UInt(range.split(separator: "-")[1], radix: 16) {
                inside = lo <= start && start < hi
            } else if inside, fields.first == "Rss:", fields.count >= 2, let kib = Int(fields[1]) {
                return kib * 1024
            }
        }
        XCTFail("no mapping of \(file.url.path) in /proc/self/smaps")
        return -1
    }
}
