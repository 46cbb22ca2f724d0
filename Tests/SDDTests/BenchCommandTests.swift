// BenchCommandTests: `sdd bench --stage vae` under a memory budget decodes with the tiles a generation
// under that budget would use (the planner's, after the UNet's share), and says which products ran.
import Foundation
import Pipeline
import XCTest

final class BenchCommandTests: XCTestCase {
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
}
