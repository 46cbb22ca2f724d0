// `sdd serve` with another VAE: SDD_VAE is the default for --vae (as SDD_MODEL is for --model), a single-file VAE
// with --vae-config serves diffusers' image (reference/vae-kl), and --vae-config alone is a configuration error.

import Foundation
import MMapWeights
import XCTest

extension ServeTests {
    func testSDDVAEEnvironmentSwapsTheServedVAEAndJobsGetDiffusersImage() throws {
        let fixtures = GenerateCommandTests.fixtures
        let vaeFile = fixtures.appendingPathComponent("single-file/tiny-vae-kl-first-stage.safetensors").path
        try serve(["--vae-config", fixtures.appendingPathComponent("tiny-vae-kl").path],
                  environment: ["SDD_VAE": vaeFile])
        let models = try ServeHTTP.request(socketPath, "GET", "/v1/models")
        XCTAssertEqual(models.status, 200, models.text)
        XCTAssertTrue(models.text.contains("tiny-vae-kl-first-stage.safetensors"), models.text)

        // reference/vae-kl's case (tools/reference/make_sd2_fixtures.py): tiny-sd, its own PNDM, vae=tiny-vae-kl.
        let folder = fixtures.appendingPathComponent("reference/vae-kl")
        let index = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(contentsOf: folder.appendingPathComponent("pipeline.json"))) as? [String: Any])
        let c = try XCTUnwrap((index["cases"] as? [[String: Any]])?.first)
        XCTAssertEqual(c["scheduler"] as? String, "own")
        let id = try submit(["prompt": try XCTUnwrap(c["prompt"] as? String), "seed": try XCTUnwrap(c["seed"] as? Int),
                             "steps": try XCTUnwrap(c["steps"] as? Int), "guidance": try XCTUnwrap(c["guidance"] as? Double)])
        waitFinished([id])
        let served = try image(id)
        let ref = try SafetensorsFile(url: folder.appendingPathComponent(try XCTUnwrap(c["file"] as? String)))
        let expected = try floats(ref, "image").data.map { UInt8($0) }
        XCTAssertEqual(served.rgb.count, expected.count)
        let db = psnr(served.rgb, expected)
        // The whole-pipeline parity bar (ModelFamilyParityTests.minimumPSNR): ≥ 45 dB against diffusers.
        XCTAssertGreaterThanOrEqual(db, ModelFamilyParityTests.minimumPSNR)
        print("serve SDD_VAE single-file VAE: PSNR \(db.isInfinite ? "inf" : String(format: "%.1f dB", db)) against diffusers")
    }

    func testVAEConfigWithoutAVAEIsAConfigurationError() throws {
        let d = try serve(["--vae-config", GenerateCommandTests.fixtures.appendingPathComponent("tiny-vae-kl").path],
                          environment: ["SDD_VAE": ""], waitReady: false)
        XCTAssertEqual(d.waitExit(timeout: 60), 2, d.stderr)
        XCTAssertTrue(d.stderr.contains("--vae-config") && d.stderr.contains("SDD_VAE"), d.stderr)
    }
}

final class ServeVAEInstallTests: XCTestCase {
    func testInstalledEnvironmentFileAndUnitDocumentSDDVAE() throws {
        let workDir = FileManager.default.temporaryDirectory.appendingPathComponent("sdd-vae-install-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: workDir) }
        let install = ProcessRunner.repository.appendingPathComponent("scripts/install").path
        let r = try ProcessRunner.run(install, ["--bin-dir", ProcessRunner.binDirectory.path],
                                      environment: ["DESTDIR": workDir.path, "PREFIX": "/opt/sdd"])
        XCTAssertEqual(r.status, 0, r.output)
        let env = try String(contentsOf: workDir.appendingPathComponent("etc/sdd/sdd.env"), encoding: .utf8)
        XCTAssertTrue(env.contains("#SDD_VAE=/opt/models/vae-ft-mse-840000-ema-pruned.safetensors"), env)
        let unit = try String(contentsOf: ProcessRunner.repository.appendingPathComponent("systemd/sdd.service"), encoding: .utf8)
        XCTAssertTrue(unit.contains("SDD_VAE="), unit)
    }
}
