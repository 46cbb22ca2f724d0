// Few-step sampling through the command line: `sdd generate --scheduler lcm|tcd|ddim --eta --timestep-spacing`
// against diffusers' StableDiffusionPipeline (Tests/Fixtures/reference/fewstep, tools/reference/make_reference.py --few-step).

import Foundation
import MMapWeights
import Pipeline
import XCTest
import TestSupport

final class FewStepGenerateTests: XCTestCase {
    static let reference = GenerateCommandTests.fixtures.appendingPathComponent("reference/fewstep")
    /// The whole-pipeline bars of PipelineTests (issue #2's): latents within 1e-3 of their max, images ≥ 45 dB.
    static let latentTolerance: Float = 1e-3
    static let minimumPSNR = 45.0

    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-fewstep-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    /// `sdd generate` arguments for a fixture case, as a user would type them.
    static func arguments(for c: [String: Any], png: String, npy: String) throws -> [String] {
        let scheduler = try XCTUnwrap(c["scheduler"] as? String)
        var args = ["generate", "--model", GenerateCommandTests.tinyModel,
                    "--steps", "\(try XCTUnwrap(c["steps"] as? Int))",
                    "--guidance", "\(try XCTUnwrap(c["guidance"] as? Double))",
                    "--seed", "\(try XCTUnwrap(c["seed"] as? Int))",
                    "--scheduler", scheduler, "--count", "\(c["count"] as? Int ?? 1)",
                    "-o", png, "--save-latents", npy]
        if c["width_given"] as? Bool ?? true {
            args += ["--width", "\(try XCTUnwrap(c["width"] as? Int))", "--height", "\(try XCTUnwrap(c["height"] as? Int))"]
        }
        if let negative = c["negative_prompt"] as? String { args += ["--negative-prompt", negative] }
        if scheduler == "tcd", let eta = c["eta"] as? Double { args += ["--eta", "\(eta)"] }
        if let spacing = c["timestep_spacing"] as? String { args += ["--timestep-spacing", spacing] }
        return args + [try XCTUnwrap(c["prompt"] as? String)]
    }

    static func fixture(_ name: String) throws -> [String: (shape: [Int], values: [Float])] {
        let file = try SafetensorsFile(url: reference.appendingPathComponent(name))
        var out: [String: (shape: [Int], values: [Float])] = [:]
        for info in file.allInfos {
            var values = [Float](repeating: 0, count: info.elementCount)
            try values.withUnsafeMutableBufferPointer { try info.copyAsFloat32(into: $0) }
            out[info.name] = (info.shape, values)
        }
        return out
    }

    func testFewStepReferenceCasesMatchDiffusersThroughTheCommandLine() throws {
        let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.reference.appendingPathComponent("pipeline.json")))
        let cases = try XCTUnwrap((meta as? [String: Any])?["cases"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(cases.count, 4)
        for c in cases {
            let name = try XCTUnwrap(c["name"] as? String)
            let png = workDir.appendingPathComponent("\(name).png")
            let npy = workDir.appendingPathComponent("\(name).npy")
            let run = try GenerateCommandTests.runSDD(try Self.arguments(for: c, png: png.path, npy: npy.path))
            XCTAssertEqual(run.status, 0, "\(name): \(run.stderr)")
            guard run.status == 0 else { continue }
            let ref = try Self.fixture(try XCTUnwrap(c["file"] as? String))
            let expected = try XCTUnwrap(ref["latents"])
            let latents = try NPYReader.readFloat32(from: npy)
            XCTAssertEqual(latents.shape, expected.shape, name)
            var diff: Float = 0, scale: Float = 0
            for (a, b) in zip(latents.data, expected.values) {
                diff = max(diff, abs(a - b))
                scale = max(scale, abs(b))
            }
            XCTAssertLessThanOrEqual(diff / scale, Self.latentTolerance, "\(name): final latents relative error")

            let count = c["count"] as? Int ?? 1
            let images = try XCTUnwrap(ref["image"])
            let per = images.values.count / count
            for i in 0..<count {
                let file = count == 1 ? png : workDir.appendingPathComponent("\(name)-\(i + 1).png")
                let image = try PNGReader.read(from: file)
                let want = images.values[(i * per)..<((i + 1) * per)].map { UInt8($0) }
                XCTAssertEqual(image.rgb.count, want.count, name)
                var sum = 0.0
                for (a, b) in zip(image.rgb, want) { sum += (Double(a) - Double(b)) * (Double(a) - Double(b)) }
                let db = sum == 0 ? Double.infinity : 10 * log10(255 * 255 / (sum / Double(want.count)))
                XCTAssertGreaterThanOrEqual(db, Self.minimumPSNR, "\(name) image \(i): PSNR")
            }
        }
    }

    func testEtaAndTimestepSpacingAreRefusedWhereTheSchedulerHasNoUseForThem() throws {
        let png = workDir.appendingPathComponent("x.png").path
        let base = ["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "2", "--seed", "1", "-o", png]
        let eta = try GenerateCommandTests.runSDD(base + ["--scheduler", "ddim", "--eta", "0.3", "x"])
        XCTAssertNotEqual(eta.status, 0)
        XCTAssertTrue(eta.stderr.contains("eta"), eta.stderr)
        let spacing = try GenerateCommandTests.runSDD(base + ["--scheduler", "lcm", "--timestep-spacing", "trailing", "x"])
        XCTAssertNotEqual(spacing.status, 0)
        XCTAssertTrue(spacing.stderr.contains("original_inference_steps"), spacing.stderr)
        let unknown = try GenerateCommandTests.runSDD(base + ["--scheduler", "ddim", "--timestep-spacing", "sideways", "x"])
        XCTAssertNotEqual(unknown.status, 0)
        XCTAssertTrue(unknown.stderr.contains("sideways") && unknown.stderr.contains("trailing"), unknown.stderr)
        let range = try GenerateCommandTests.runSDD(base + ["--scheduler", "tcd", "--eta", "1.5", "x"])
        XCTAssertNotEqual(range.status, 0)
        XCTAssertTrue(range.stderr.contains("eta"), range.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: png), "nothing is written for a refused request")
    }

    func testPreviewFileIsTheLastPreviewedStepAndTheOutputIsByteForByteTheSame() throws {
        let common = ["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "4", "--seed", "9",
                      "--scheduler", "tcd", "--guidance", "1", "--width", "48", "--height", "80"]
        let plain = try GenerateCommandTests.runSDD(common + ["-o", workDir.appendingPathComponent("plain.png").path,
                                                             "--save-latents", workDir.appendingPathComponent("plain.npy").path, "x"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let preview = workDir.appendingPathComponent("preview.png")
        let watched = try GenerateCommandTests.runSDD(common + ["-o", workDir.appendingPathComponent("watched.png").path,
                                                               "--save-latents", workDir.appendingPathComponent("watched.npy").path,
                                                               "--preview", preview.path, "x"])
        XCTAssertEqual(watched.status, 0, watched.stderr)
        XCTAssertEqual(try Data(contentsOf: workDir.appendingPathComponent("plain.png")),
                       try Data(contentsOf: workDir.appendingPathComponent("watched.png")))
        XCTAssertEqual(try Data(contentsOf: workDir.appendingPathComponent("plain.npy")),
                       try Data(contentsOf: workDir.appendingPathComponent("watched.npy")))

        var s = GenerationSettings(prompt: "x")
        s.steps = 4
        s.seed = 9
        s.scheduler = .tcd
        s.guidance = 1
        s.width = 48
        s.height = 80
        var third: StepProgress?
        _ = try StableDiffusionPipeline(model: StableDiffusionModel(url: URL(fileURLWithPath: GenerateCommandTests.tinyModel)))
            .generate(s) { p in
                if p.step == 3 { third = p }  // 4 steps: previews after 1, 2, 3
                return true
            }
        let image = try PNGReader.read(from: preview)
        XCTAssertEqual([image.width, image.height], [6, 10])
        XCTAssertEqual(image.rgb, try XCTUnwrap(LatentPreview.rgb(try XCTUnwrap(third).latents)).rgb)

        let unwritable = try GenerateCommandTests.runSDD(common + ["-o", workDir.appendingPathComponent("u.png").path,
                                                                  "--preview", "/nonexistent-dir/p.png", "x"])
        XCTAssertNotEqual(unwritable.status, 0)
        XCTAssertTrue(unwritable.stderr.contains("/nonexistent-dir/p.png"), unwritable.stderr)
    }

    func testTimingsReportTheWholeGenerationAsTheSumOfItsStages() throws {
        let run = try GenerateCommandTests.runSDD(["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "4",
                                                   "--scheduler", "lcm", "--guidance", "1", "--seed", "2", "--timings",
                                                   "-o", workDir.appendingPathComponent("t.png").path, "x"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let line = try XCTUnwrap(run.stderr.split(separator: "\n").last { $0.hasPrefix("{") })
        let t = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double])
        XCTAssertEqual(t["unet_evaluations"], 4, "LCM runs one UNet evaluation per step, batch 1 at guidance 1")
        let sum = try XCTUnwrap(t["text_encode_seconds"]) + XCTUnwrap(t["unet_total_seconds"]) + XCTUnwrap(t["vae_decode_seconds"])
        // The same three doubles summed in the same order by sdd: equal up to the JSON round trip.
        XCTAssertEqual(try XCTUnwrap(t["generation_seconds"]), sum, accuracy: sum * 1e-12)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(t["unet_total_seconds"]), try XCTUnwrap(t["unet_step_seconds"]))
    }
}
