// `sdd generate --model FILE.safetensors --config DIR`: a CompVis single file generates diffusers'
// from_single_file latents through the command line (reference/single-file-sd1, tools/reference/make_single_file.py).

import Foundation
import MMapWeights
import Pipeline
import XCTest

final class SingleFileCommandTests: XCTestCase {
    var workDir: URL!

    override func setUpWithError() throws {
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-single-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    /// tiny-sd written with CompVis names (the layout make_single_file.py checked with from_single_file).
    func writeTinySingleFile() throws -> URL {
        let tiny = URL(fileURLWithPath: GenerateCommandTests.tinyModel)
        let model = try StableDiffusionModel(url: tiny)
        var writer = SafetensorsWriter()
        for component in ["unet", "vae", "text_encoder"] {
            let w = try ComponentWeights(directory: tiny, component: component)
            for name in w.tensorNames {
                let info = try XCTUnwrap(try w.info(name))
                let (target, shape) = try XCTUnwrap(model.compVisName(component: component, name: name, shape: info.shape))
                writer.add(target, dtype: info.dtype, shape: shape, bytes: Array(info.rawBytes))
            }
        }
        writer.add("model_ema.decay", shape: [], float32: [0.9999])
        let url = workDir.appendingPathComponent("tiny-sd1.safetensors")
        try writer.write(to: url)
        return url
    }

    /// Reads a float32 .npy written by --save-latents (v1 header, little-endian).
    func readNPY(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        let headerLength = Int(data[8]) | Int(data[9]) << 8
        let start = 10 + headerLength
        return data[start...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    func testGenerateWithConfigMatchesDiffusersFromSingleFile() throws {
        let file = try writeTinySingleFile()
        let latents = workDir.appendingPathComponent("latents.npy")
        let run = try GenerateCommandTests.runSDD([
            "generate", "--model", file.path, "--config", GenerateCommandTests.tinyModel, "--steps", "8",
            "--guidance", "7.5", "--seed", "0", "--scheduler", "pndm", "--save-latents", latents.path,
            "-o", workDir.appendingPathComponent("out.png").path, "a photograph of an astronaut riding a horse",
        ])
        XCTAssertEqual(run.status, 0, run.stderr)
        let reference = GenerateCommandTests.fixtures.appendingPathComponent("reference/single-file-sd1/pipeline_pndm_default.safetensors")
        let ref = try SafetensorsFile(url: reference)
        let info = try XCTUnwrap(try ref.info("latents"))
        var expected = [Float](repeating: 0, count: info.elementCount)
        try expected.withUnsafeMutableBufferPointer { try info.copyAsFloat32(into: $0) }
        let got = try readNPY(latents)
        XCTAssertEqual(got.count, expected.count)
        let scale = expected.map(abs).max() ?? 1
        let error = zip(got, expected).map { abs($0 - $1) }.max() ?? .infinity
        // The bar of every parity case (issue #2): final latents within 1e-3 relative.
        XCTAssertLessThanOrEqual(error / scale, 1e-3)
        print("sdd generate single file --config: final latents relative error \(error / scale)")
    }

    func testPredictionMustBeEpsilonOrV() throws {
        let run = try GenerateCommandTests.runSDD(["generate", "--model", GenerateCommandTests.tinyModel,
                                                   "--prediction", "x0", "a cat"])
        XCTAssertEqual(run.status, 64, "a usage error: \(run.stderr)")
        XCTAssertTrue(run.stderr.contains("'x0' is invalid for '--prediction"), run.stderr)
        XCTAssertTrue(run.stderr.contains("'epsilon' and 'v'"), "lists the choices: \(run.stderr)")
    }

    func testConvertSingleFileToCompVisNamesThenInspectAndGenerate() throws {
        let file = try writeTinySingleFile()
        let out = workDir.appendingPathComponent("tiny-compvis.gguf")
        let convert = try GenerateCommandTests.runSDD([
            "convert", "--model", file.path, "--config", GenerateCommandTests.tinyModel, "--type", "f32",
            "--names", "compvis", "-o", out.path,
        ])
        XCTAssertEqual(convert.status, 0, convert.stderr)
        let inspect = try GenerateCommandTests.runSDD(["inspect", out.path])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        XCTAssertTrue(inspect.stdout.contains("CompVis names"), inspect.stdout)
        XCTAssertTrue(inspect.stdout.contains("sdd.names = \"compvis\""), inspect.stdout)
        let latents = workDir.appendingPathComponent("latents.npy")
        let run = try GenerateCommandTests.runSDD([
            "generate", "--model", out.path, "--steps", "8", "--guidance", "7.5", "--seed", "0",
            "--save-latents", latents.path, "-o", workDir.appendingPathComponent("out.png").path,
            "a photograph of an astronaut riding a horse",
        ])
        XCTAssertEqual(run.status, 0, run.stderr)
        let reference = GenerateCommandTests.fixtures.appendingPathComponent("reference/single-file-sd1/pipeline_pndm_default.safetensors")
        let info = try XCTUnwrap(try SafetensorsFile(url: reference).info("latents"))
        var expected = [Float](repeating: 0, count: info.elementCount)
        try expected.withUnsafeMutableBufferPointer { try info.copyAsFloat32(into: $0) }
        let got = try readNPY(latents)
        let scale = expected.map(abs).max() ?? 1
        let error = zip(got, expected).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThanOrEqual(error / scale, 1e-3)  // the parity bar of issue #2
    }

    func testConfigAndPredictionAreRefusedForAFolder() throws {
        let run = try GenerateCommandTests.runSDD(["generate", "--model", GenerateCommandTests.tinyModel,
                                                   "--prediction", "v", "a cat"])
        XCTAssertNotEqual(run.status, 0)
        XCTAssertTrue(run.stderr.contains("--config and --prediction are for single-file models"), run.stderr)
    }

    func testConvertRefusesAnUnknownNaming() throws {
        let run = try GenerateCommandTests.runSDD(["convert", "--model", GenerateCommandTests.tinyModel, "--type", "f16",
                                                   "--names", "ldm", "-o", workDir.appendingPathComponent("x.gguf").path])
        XCTAssertEqual(run.status, 64, "a usage error: \(run.stderr)")
        XCTAssertTrue(run.stderr.contains("'ldm' is invalid for '--names"), run.stderr)
        XCTAssertTrue(run.stderr.contains("'sdd' and 'compvis'"), "lists the choices: \(run.stderr)")
    }
}
