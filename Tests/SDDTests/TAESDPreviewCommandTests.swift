// `sdd generate --preview FILE --preview-vae DIR` and `sdd serve --preview-vae DIR`: previews decoded by a TAESD are
// diffusers' AutoencoderTiny decode of the step's latents (reference/taesd-preview, made by
// tools/reference/make_taesd_preview_fixture.py), and the final image is the same as without previews.

import Foundation
import MMapWeights
import Pipeline
import TestSupport
import XCTest

final class TAESDPreviewCommandTests: XCTestCase {
    static let taesd = GenerateCommandTests.fixtures.appendingPathComponent("tiny-taesd").path
    var workDir: URL!

    override func setUpWithError() throws {
        workDir = URL(fileURLWithPath: "/tmp").appendingPathComponent("sdd-taesd-pv-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: workDir)
    }

    func testGeneratePreviewIsDiffusersTAESDDecodeOfTheLastPreviewedStepAndTheImageIsUnchanged() throws {
        // reference/pipeline.json's pndm_default: tiny-sd, PNDM 8 steps (9 UNet evaluations), seed 0, guidance 7.5.
        let common = ["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "8", "--seed", "0",
                      "--scheduler", "pndm", "--guidance", "7.5"]
        let prompt = "a photograph of an astronaut riding a horse"
        let plain = try GenerateCommandTests.runSDD(common + ["-o", workDir.appendingPathComponent("plain.png").path,
                                                             "--save-latents", workDir.appendingPathComponent("plain.npy").path, prompt])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let preview = workDir.appendingPathComponent("preview.png")
        let watched = try GenerateCommandTests.runSDD(common + [
            "-o", workDir.appendingPathComponent("watched.png").path,
            "--save-latents", workDir.appendingPathComponent("watched.npy").path,
            "--preview", preview.path, "--preview-vae", Self.taesd, prompt])
        XCTAssertEqual(watched.status, 0, watched.stderr)
        XCTAssertEqual(try Data(contentsOf: workDir.appendingPathComponent("plain.png")),
                       try Data(contentsOf: workDir.appendingPathComponent("watched.png")), "previews never change the image")
        XCTAssertEqual(try Data(contentsOf: workDir.appendingPathComponent("plain.npy")),
                       try Data(contentsOf: workDir.appendingPathComponent("watched.npy")))

        // Every step of 9 is previewed but the last: the file holds step 8's, the latents after the 8th
        // scheduler.step (step_latents[7]), decoded by diffusers' AutoencoderTiny in the fixture.
        let image = try PNGReader.read(from: preview)
        XCTAssertEqual([image.width, image.height], [64, 64], "the TAESD's full size, not one pixel per latent cell")
        let file = try SafetensorsFile(url: GenerateCommandTests.fixtures.appendingPathComponent(
            "reference/taesd-preview/pndm_default_previews.safetensors"))
        let previews = Array(try XCTUnwrap(file.info("previews")).rawBytes)
        let pixels = 64 * 64 * 3
        let db = psnr(image.rgb, Array(previews[(7 * pixels)..<(8 * pixels)]))
        // The parity bar for images (issue #2): ≥ 45 dB against diffusers.
        XCTAssertGreaterThanOrEqual(db, 45)
        XCTAssertLessThan(psnr(image.rgb, Array(previews[(6 * pixels)..<(7 * pixels)])), db, "step 8's, not step 7's")
        print("generate --preview-vae: preview of step 8/9 against diffusers' AutoencoderTiny: \(db.isInfinite ? "inf" : String(format: "%.1f dB", db))")
    }

    func testUnderAMemoryBudgetThePreviewsShareIsKeptAside() throws {
        let run = try GenerateCommandTests.runSDD(["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "2",
                                                   "--memory-budget", "512M", "--preview", workDir.appendingPathComponent("p.png").path,
                                                   "--preview-vae", Self.taesd, "-o", workDir.appendingPathComponent("x.png").path, "x"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let reserved = try TAESDPreview(folder: URL(fileURLWithPath: Self.taesd)).reservedBytes >> 20
        XCTAssertTrue(run.stderr.contains("less \(reserved) MiB kept for TAESD previews: planned peak"), run.stderr)
    }

    func testPreviewVAEIsRefusedWithoutAPreviewFileOrWhenNotATAESD() throws {
        let png = workDir.appendingPathComponent("x.png").path
        let alone = try GenerateCommandTests.runSDD(["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "1",
                                                     "--preview-vae", Self.taesd, "-o", png, "x"])
        XCTAssertNotEqual(alone.status, 0)
        XCTAssertTrue(alone.stderr.contains("--preview FILE"), alone.stderr)
        let kl = try GenerateCommandTests.runSDD(["generate", "--model", GenerateCommandTests.tinyModel, "--steps", "1",
                                                  "--preview", workDir.appendingPathComponent("p.png").path,
                                                  "--preview-vae", GenerateCommandTests.fixtures.appendingPathComponent("tiny-vae-kl").path,
                                                  "-o", png, "x"])
        XCTAssertNotEqual(kl.status, 0)
        XCTAssertTrue(kl.stderr.contains("AutoencoderKL") && kl.stderr.contains("AutoencoderTiny"), kl.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: png))
        let small = try GenerateCommandTests.runSDD(["serve", "--model", GenerateCommandTests.tinyModel,
                                                     "--socket", workDir.appendingPathComponent("s.sock").path,
                                                     "--state-dir", workDir.appendingPathComponent("state").path,
                                                     "--memory-budget", "16M", "--preview-vae", Self.taesd])
        XCTAssertEqual(small.status, 2, small.stderr)
        XCTAssertTrue(small.stderr.contains("more than the memory budget"), small.stderr)
        let serve = try GenerateCommandTests.runSDD(["serve", "--model", GenerateCommandTests.tinyModel,
                                                     "--socket", workDir.appendingPathComponent("s.sock").path,
                                                     "--state-dir", workDir.appendingPathComponent("state").path,
                                                     "--preview-vae", workDir.appendingPathComponent("none").path])
        XCTAssertEqual(serve.status, 2, serve.stderr)
        XCTAssertTrue(serve.stderr.contains("--preview-vae"), serve.stderr)
    }
}

extension ServeTests {
    func testServePreviewVAEDrawsPreviewsWithTheTAESD() throws {
        try serve(["--preview-vae", TAESDPreviewCommandTests.taesd, "--preview-every", "2"])
        let id = try submit(["prompt": "a red circle", "steps": 6, "seed": 42, "scheduler": "lcm"])
        waitFinished([id])
        let r = try ServeHTTP.request(socketPath, "GET", "/v1/jobs/\(id)/preview")
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual(r.headers["x-sdd-preview-step"], "4/6")
        let preview = try PNGReader.decode(r.body)
        XCTAssertEqual([preview.width, preview.height], [64, 64], "a TAESD decode (the linear preview is 8×8)")
        // The served image is the one `sdd generate` makes without previews.
        let ref = dir.appendingPathComponent("ref.png").path
        let gen = try GenerateCommandTests.runSDD(["generate", "--model", Self.tinyModel, "--steps", "6", "--seed", "42",
                                                   "--scheduler", "lcm", "-o", ref, "a red circle"])
        XCTAssertEqual(gen.status, 0, gen.stderr)
        assertSameImage(try image(id).rgb, try PNGReader.read(from: URL(fileURLWithPath: ref)).rgb)
    }
}
