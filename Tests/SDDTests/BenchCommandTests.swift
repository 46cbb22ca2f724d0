// BenchCommandTests: `sdd bench --stage vae` under a memory budget decodes with the tiles a generation
// under that budget would use (the planner's, after the UNet's share), says which products ran and which
// weight types the model stores, and reports the run's measured peak beside the planner's; `--stage gemm` times
// each BF16 kernel the CPU runs.
import CKernels
import Foundation
import Pipeline
import TiledKernels
import XCTest

final class BenchCommandTests: XCTestCase {
    func testGEMMStageTimesF32AndEachBF16KernelTheCPURuns() throws {
        let run = try GenerateCommandTests.runSDD(["bench", "--stage", "gemm", "--repeats", "1"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let lines = run.stdout.split(separator: "\n").map(String.init)
        // The child inherits this process's environment (SDD_BF16_KERNEL included), so it chooses the same kernel.
        XCTAssertTrue(lines.first?.hasSuffix("BF16 products run on \(MachineInfo.bf16KernelName())") ?? false, run.stdout)
        XCTAssertEqual(lines.count, 7, run.stdout)
        for line in lines.dropFirst() {
            XCTAssertTrue(line.contains("): f32 "), line)
            XCTAssertEqual(line.contains(", avx512bf16 "), ck_gemm_bf16_available() != 0, line)
            XCTAssertEqual(line.contains(", amx "), ck_gemm_bf16_amx_available() != 0, line)
        }
    }

    func testVAEStageUsesTheGenerationPlansTiles() throws {
        let budget = "68M"
        let run = try GenerateCommandTests.runSDD([
            "bench", "--model", GenerateCommandTests.tinyModel, "--stage", "vae", "--repeats", "1",
            "--memory-budget", budget, "--width", "512", "--height", "512", "--json",
        ])
        XCTAssertEqual(run.status, 0, run.stderr)
        let report = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], run.stdout)
        let pipeline = try StableDiffusionPipeline(
            model: try StableDiffusionModel(url: URL(fileURLWithPath: GenerateCommandTests.tinyModel)))
        let plan = try MemoryPlanner.plan(budget: try MemorySize.parse(budget), pipeline: pipeline, width: 512,
                                          height: 512)
        let planned = try XCTUnwrap(plan.vaeTiling, "the tiny model's 512×512 decode should tile under \(budget)")
        XCTAssertEqual(report["tile_latent_size"] as? Int, planned.tileLatentSize)
        XCTAssertEqual(report["tiled"] as? Bool, true)
        XCTAssertEqual(report["products"] as? String, "f32")  // a safetensors folder: F32 products
    }

    func testTheReportNamesTheWeightTypesMostTensorsFirst() throws {
        let dir = URL(fileURLWithPath: "/tmp/sdd-bench-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let q8 = dir.appendingPathComponent("tiny-q8_0.gguf").path
        let convert = try GenerateCommandTests.runSDD(["convert", "--model", GenerateCommandTests.tinyModel,
                                                       "--type", "q8_0", "-o", q8])
        XCTAssertEqual(convert.status, 0, convert.stderr)
        var reported: [String: Set<String>] = [:]
        for model in [GenerateCommandTests.tinyModel, q8] {
            let run = try GenerateCommandTests.runSDD(["bench", "--model", model, "--steps", "1", "--json"])
            XCTAssertEqual(run.status, 0, run.stderr)
            let report = try XCTUnwrap(
                JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], run.stdout)
            let types = try XCTUnwrap(report["weight_types"] as? String, run.stdout).split(separator: "+").map(String.init)
            reported[model] = Set(types)
            // What the headers hold, as `sdd inspect` counts it.
            var counts: [String: Int] = [:]
            for c in try ModelInspection(url: URL(fileURLWithPath: model)).components {
                for (type, n) in c.countsByType { counts[type.lowercased(), default: 0] += n }
            }
            XCTAssertEqual(Set(types), Set(counts.keys), "\(model): \(types)")
            XCTAssertEqual(types.map { counts[$0] ?? 0 }, types.map { counts[$0] ?? 0 }.sorted(by: >),
                           "most tensors first: \(types) \(counts)")
        }
        // The fixture mixes F32, F16 and BF16 tensors; the conversion adds Q8_0 (norms, biases stay F32, VAE F16).
        XCTAssertEqual(reported[GenerateCommandTests.tinyModel], ["f32", "f16", "bf16"])
        XCTAssertEqual(reported[q8], ["q8_0", "f32", "f16"])
    }

    func testTheReportPutsTheMeasuredPeakBesideThePlannedOne() throws {
        let budget = "1G"
        let args = ["bench", "--model", GenerateCommandTests.tinyModel, "--steps", "1", "--width", "128", "--height", "128",
                    "--memory-budget", budget]
        let run = try GenerateCommandTests.runSDD(args + ["--json"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let report = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any], run.stdout)
        let measured = try XCTUnwrap(report["peak_rss_bytes"] as? Int, run.stdout)
        XCTAssertGreaterThan(measured, 1 << 20, "a process's VmHWM is at least a MiB")
        XCTAssertEqual(report["bf16_kernel"] as? String, MachineInfo.bf16KernelName(), "the BF16 kernel beside the BLAS core")
        // The planned peak is the planner's own number for this run.
        let pipeline = try StableDiffusionPipeline(
            model: try StableDiffusionModel(url: URL(fileURLWithPath: GenerateCommandTests.tinyModel)))
        let plan = try MemoryPlanner.plan(budget: try MemorySize.parse(budget), pipeline: pipeline, width: 128,
                                          height: 128)
        XCTAssertEqual(report["planned_peak_bytes"] as? Int, plan.peak, run.stdout)
        XCTAssertEqual(report["memory_budget_bytes"] as? Int, 1 << 30, run.stdout)
        XCTAssertTrue(run.stderr.contains("planned peak"), run.stderr)

        let text = try GenerateCommandTests.runSDD(args)
        XCTAssertEqual(text.status, 0, text.stderr)
        let line = try XCTUnwrap(text.stdout.split(separator: "\n").first { $0.hasPrefix("peak memory") }, text.stdout)
        XCTAssertTrue(line.contains("VmHWM measured, planned "), String(line))
        XCTAssertTrue(line.contains("under a 1024.0 MiB budget"), String(line))

        // Without planning there is no planned peak, and both forms say so.
        let unplanned = try GenerateCommandTests.runSDD(["bench", "--model", GenerateCommandTests.tinyModel, "--steps", "1",
                                                         "--width", "64", "--height", "64", "--memory-budget", "none",
                                                         "--json"])
        XCTAssertEqual(unplanned.status, 0, unplanned.stderr)
        let object = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(unplanned.stdout.utf8)) as? [String: Any], unplanned.stdout)
        XCTAssertTrue(object["planned_peak_bytes"] is NSNull, unplanned.stdout)
        XCTAssertGreaterThan(object["peak_rss_bytes"] as? Int ?? 0, 0, unplanned.stdout)
        XCTAssertTrue(unplanned.stderr.contains("no memory budget (--memory-budget none)"), unplanned.stderr)
    }
}
