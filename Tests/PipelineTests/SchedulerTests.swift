// Schedulers replayed step by step against diffusers 0.42.1 (Tests/Fixtures/reference/
// schedulers.{json,safetensors}, and schedulers_fewstep.* for LCM, TCD and DDIM trailing) with the fake
// model eps = sin(x_in) * 0.5 + (t / 1000) * 0.1.
// Tolerance: every step's max |Δ| ≤ 1e-5 × max(1, max |sample|) (observed: ≤ 6e-7), except where noted.
import Foundation
import TiledKernels
import XCTest

@testable import Pipeline

final class SchedulerTests: XCTestCase {
    static let relativeTolerance: Float = 1e-5
    /// torch 2.15's CPU sqrt (float32 and float64) is within 1 ulp but not correctly rounded (~20% of
    /// values differ from IEEE sqrt, which we use), so ~19% of the σ table differs by 1 ulp. With a
    /// zero-terminal-SNR schedule (σ_max = 4096, rescale_zero_terminal_snr dividing nearly equal tiny
    /// alphas_bar) that is amplified to a few 1e-5 (observed 4.1e-5).
    static let toleranceOverrides: [String: Float] = ["euler-zsnr-10": 1e-4]

    struct Case {
        var name: String
        var kind: SchedulerKind
        var steps: Int
        var seed: UInt64
        /// TCD's eta as the fixture passed it to step(); nil: none passed.
        var eta: Float?
        var config: SchedulerConfig
        var timesteps: [Float]
        var initNoiseSigma: Float
        var samples: [[Float]]
    }

    static func cases() throws -> [Case] {
        try cases(file: "schedulers") + cases(file: "schedulers_fewstep")
    }

    static func cases(file: String) throws -> [Case] {
        let meta = try SamplingFixtures.json(file + ".json")
        let tensors = try SamplingFixtures.safetensors(file + ".safetensors")
        let entries = try XCTUnwrap(meta["cases"] as? [[String: Any]])
        return try entries.map { e in
            let name = try XCTUnwrap(e["name"] as? String)
            let configData = try JSONSerialization.data(withJSONObject: try XCTUnwrap(e["config"]))
            let stacked = try XCTUnwrap(tensors["\(name)/samples"])
            let per = stacked.shape.dropFirst().reduce(1, *)
            return Case(
                name: name,
                kind: try XCTUnwrap(SchedulerKind(rawValue: try XCTUnwrap(e["kind"] as? String))),
                steps: try XCTUnwrap(e["steps"] as? Int),
                seed: UInt64(try XCTUnwrap(e["seed"] as? Int)),
                eta: (e["eta"] as? Double).map { Float($0) },
                config: try SchedulerConfig.decode(configData),
                timesteps: try XCTUnwrap(e["timesteps"] as? [Double]).map { Float($0) },
                initNoiseSigma: Float(try XCTUnwrap(e["init_noise_sigma"] as? Double)),
                samples: (0..<stacked.shape[0]).map { Array(stacked.values[($0 * per)..<(($0 + 1) * per)]) })
        }
    }

    /// The fixture's stand-in for the UNet, in float32 like torch.
    static func fakeModel(_ x: Tensor, _ t: Float) -> Tensor {
        let shift = Float(Double(t) / 1000.0 * 0.1)
        return Tensor(shape: x.shape, data: x.data.map { Float(sin(Double($0))) * 0.5 + shift })
    }

    /// Max over steps of max|Δ| / max(1, max|expected|).
    static func replay(_ c: Case, scheduler: inout any Scheduler, from start: Int = 0, sample: Tensor? = nil,
                       random: TorchRandom? = nil) -> (worst: Float, step: Int)
    {
        var random = random ?? TorchRandom(seed: c.seed)
        var x = sample ?? random.randn([1, 4, 4, 4])
        if sample == nil { x = Tensor(shape: x.shape, data: x.data.map { $0 * scheduler.initNoiseSigma }) }
        var worst: (Float, Int) = (relativeError(x.data, c.samples[start]), start)
        for i in start..<scheduler.timesteps.count {
            let input = scheduler.scaleModelInput(x, stepIndex: i)
            let eps = fakeModel(input, scheduler.timesteps[i])
            x = scheduler.step(output: eps, stepIndex: i, sample: x, random: &random)
            let e = relativeError(x.data, c.samples[i + 1])
            if e > worst.0 { worst = (e, i + 1) }
        }
        return worst
    }

    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        var diff: Float = 0
        var scale: Float = 1
        for (x, y) in zip(a, b) {
            diff = max(diff, abs(x - y))
            scale = max(scale, abs(y))
        }
        return diff / scale
    }

    func testTimestepsAndInitNoiseSigmaMatchDiffusers() throws {
        for c in try Self.cases() {
            let s = try makeScheduler(c.kind, config: c.config, steps: c.steps, eta: c.eta)
            if c.config.useKarrasSigmas == true {
                // Karras timesteps come from np.log of float32 σ, which numpy computes with its own
                // SIMD float32 log (not always correctly rounded; we use logf): ≤ 1e-6 relative.
                XCTAssertEqual(s.timesteps.count, c.timesteps.count, c.name)
                for (a, b) in zip(s.timesteps, c.timesteps) {
                    XCTAssertEqual(a, b, accuracy: max(1, abs(b)) * 1e-6, c.name)
                }
            } else {
                XCTAssertEqual(s.timesteps, c.timesteps, c.name)
            }
            XCTAssertEqual(s.initNoiseSigma, c.initNoiseSigma, accuracy: c.initNoiseSigma * 1e-7, c.name)
        }
    }

    func testEveryStepMatchesDiffusers() throws {
        let cases = try Self.cases()
        XCTAssertGreaterThanOrEqual(cases.count, 20)
        for kind in SchedulerKind.allCases { XCTAssertTrue(cases.contains { $0.kind == kind }, "\(kind) untested") }
        for c in cases {
            var s = try makeScheduler(c.kind, config: c.config, steps: c.steps, eta: c.eta)
            let (worst, step) = Self.replay(c, scheduler: &s)
            let tolerance = Self.toleranceOverrides[c.name] ?? Self.relativeTolerance
            XCTAssertLessThanOrEqual(worst, tolerance, "\(c.name): relative error \(worst) at step \(step)")
            if ProcessInfo.processInfo.environment["SDD_SCHEDULER_REPORT"] != nil {
                print("scheduler \(c.name): worst relative error \(worst) at step \(step)")
            }
        }
    }

    func testCheckpointMidwayResumesIdentically() throws {
        for c in try Self.cases() where ["euler-a-sd15-10", "pndm-sd15-10", "dpm++2m-sd15-10", "lms-sd15-10",
                                                 "lcm-sd15-4", "tcd-sd15-6-eta1"].contains(c.name) {
            var s = try makeScheduler(c.kind, config: c.config, steps: c.steps, eta: c.eta)
            var random = TorchRandom(seed: c.seed)
            var x = random.randn([1, 4, 4, 4])
            x = Tensor(shape: x.shape, data: x.data.map { $0 * s.initNoiseSigma })
            let half = s.timesteps.count / 2
            for i in 0..<half {
                let eps = Self.fakeModel(s.scaleModelInput(x, stepIndex: i), s.timesteps[i])
                x = s.step(output: eps, stepIndex: i, sample: x, random: &random)
            }
            var restored = try decodeScheduler(kind: c.kind, from: try encodeScheduler(s))
            let randomCopy = try JSONDecoder().decode(TorchRandom.self, from: try JSONEncoder().encode(random))
            let (worstA, _) = Self.replay(c, scheduler: &s, from: half, sample: x, random: random)
            let (worstB, _) = Self.replay(c, scheduler: &restored, from: half, sample: x, random: randomCopy)
            XCTAssertEqual(worstA, worstB, c.name)
        }
    }

    func testSD15ConfigDecodesWithDefaultsForEveryKind() throws {
        let json = """
            {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": false,
             "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
             "steps_offset": 1, "trained_betas": null, "lambda_min_clipped": -Infinity,
             "some_future_key": [1, 2]}
            """
        let config = try SchedulerConfig.decode(Data(json.utf8))
        XCTAssertEqual(config.className, "PNDMScheduler")
        XCTAssertEqual(config.lambdaMinClipped, -.infinity)
        for kind in SchedulerKind.allCases {
            let s = try makeScheduler(kind, config: config, steps: 20)
            XCTAssertEqual(s.kind, kind)
            XCTAssertEqual(s.timesteps.count, kind == .pndm ? 21 : 20)
        }
    }

    func testAbsentKeysTakeTheTargetClassDefaults() throws {
        // A config without timestep_spacing: PNDM defaults to "leading", Euler and DPM to "linspace".
        var config = SchedulerConfig.stableDiffusion15
        config.timestepSpacing = nil
        XCTAssertEqual(try makeScheduler(.pndm, config: config, steps: 10).timesteps.first, 901)
        XCTAssertEqual(try makeScheduler(.euler, config: config, steps: 10).timesteps.first, 999)
        XCTAssertEqual(try makeScheduler(.dpmSolverMultistep, config: config, steps: 10).timesteps.first, 999)
    }

    func testUseDefaultValuesKeysAreTreatedAsAbsent() throws {
        let json = """
            {"_class_name": "PNDMScheduler", "timestep_spacing": "leading", "steps_offset": 1,
             "_use_default_values": ["timestep_spacing"]}
            """
        let config = try SchedulerConfig.decode(Data(json.utf8))
        XCTAssertNil(config.timestepSpacing)
        XCTAssertEqual(config.stepsOffset, 1)
    }

    func testTimestepPastTrainingRangeIsAnError() {
        // leading spacing with steps_offset 1 and 1000 steps would index alphas_cumprod[1000].
        XCTAssertThrowsError(try makeScheduler(.ddim, config: .stableDiffusion15, steps: 1000))
    }

    func testThresholdingIsRejected() {
        var config = SchedulerConfig.stableDiffusion15
        config.thresholding = true
        XCTAssertThrowsError(try makeScheduler(.ddim, config: config, steps: 10))
        XCTAssertThrowsError(try makeScheduler(.dpmSolverMultistep, config: config, steps: 10))
        // PNDM has no thresholding key: ignored, as from_config does.
        XCTAssertNoThrow(try makeScheduler(.pndm, config: config, steps: 10))
    }

    func testUnknownBetaScheduleNamesTheField() {
        var config = SchedulerConfig.stableDiffusion15
        config.betaSchedule = "sigmoid"
        XCTAssertThrowsError(try makeScheduler(.euler, config: config, steps: 10)) { error in
            XCTAssertEqual(
                error as? SchedulerError,
                .unsupported(field: "beta_schedule", value: "sigmoid", scheduler: "EulerDiscreteScheduler"))
        }
    }

    func testZeroStepsIsAnError() {
        XCTAssertThrowsError(try makeScheduler(.pndm, config: .stableDiffusion15, steps: 0))
    }

    func testLCMAndTCDRefuseMoreStepsThanTheirDistillationSchedule() {
        for kind in [SchedulerKind.lcm, .tcd] {
            XCTAssertNoThrow(try makeScheduler(kind, config: .stableDiffusion15, steps: 50))
            XCTAssertThrowsError(try makeScheduler(kind, config: .stableDiffusion15, steps: 51)) { error in
                XCTAssertTrue("\(error)".contains("original_inference_steps 50"), "\(error)")
            }
        }
        var config = SchedulerConfig.stableDiffusion15
        config.originalInferenceSteps = 0
        XCTAssertThrowsError(try makeScheduler(.lcm, config: config, steps: 1)) { error in
            XCTAssertTrue("\(error)".contains("original_inference_steps"), "\(error)")
        }
    }

    func testEtaOutsideZeroToOneOrForASchedulerWithoutItIsAnErrorNamingIt() {
        for bad: Float in [-0.1, 1.5, .nan] {
            XCTAssertThrowsError(try makeScheduler(.tcd, config: .stableDiffusion15, steps: 4, eta: bad)) { error in
                XCTAssertTrue("\(error)".contains("eta"), "\(error)")
            }
        }
        XCTAssertThrowsError(try makeScheduler(.ddim, config: .stableDiffusion15, steps: 4, eta: 0.3)) { error in
            XCTAssertTrue("\(error)".contains("eta") && "\(error)".contains("tcd"), "\(error)")
        }
        XCTAssertEqual((try? makeScheduler(.tcd, config: .stableDiffusion15, steps: 4)) .flatMap { ($0 as? TCDScheduler)?.eta },
                       0.3, "TCDScheduler.step's default")
    }

    func testTimestepSpacingOverrideReplacesTheConfigsForSchedulersThatUseIt() throws {
        // SD 1.5's config says leading (DDIM 4 steps: 751, 501, 251, 1); Hyper-SD and PCM need trailing.
        let trailing = try SchedulerConfig.stableDiffusion15.overriding(timestepSpacing: .trailing, for: .ddim)
        XCTAssertEqual(try makeScheduler(.ddim, config: trailing, steps: 4).timesteps, [999, 749, 499, 249])
        XCTAssertEqual(try makeScheduler(.ddim, config: .stableDiffusion15, steps: 4).timesteps, [751, 501, 251, 1])
        let linspace = try SchedulerConfig.stableDiffusion15.overriding(timestepSpacing: .linspace, for: .euler)
        XCTAssertEqual(try makeScheduler(.euler, config: linspace, steps: 4).timesteps, [999, 666, 333, 0])
        XCTAssertEqual(try SchedulerConfig.stableDiffusion15.overriding(timestepSpacing: nil, for: .lcm),
                       .stableDiffusion15)
        for kind in [SchedulerKind.lcm, .tcd] {
            XCTAssertThrowsError(try SchedulerConfig.stableDiffusion15.overriding(timestepSpacing: .trailing, for: kind)) {
                XCTAssertTrue("\($0)".contains("original_inference_steps"), "\($0)")
            }
        }
    }
}
