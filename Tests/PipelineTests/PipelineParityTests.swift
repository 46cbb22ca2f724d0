// Whole-pipeline parity: `StableDiffusionPipeline.generate` against diffusers' StableDiffusionPipeline
// for every case in Tests/Fixtures/reference/pipeline.json (seeds, sizes, schedulers, guidance, batches).

import Foundation
import Pipeline
import TiledKernels
import XCTest

final class PipelineParityTests: XCTestCase {
    func testEveryReferenceCaseMatchesDiffusers() throws {
        let cases = try assertPipelineMatchesReference(model: ModelFixtures.tinyModel, folder: "")
        XCTAssertGreaterThanOrEqual(cases, 7)
    }

    func testSD2AndSDTurboMatchDiffusersAtEveryStep() throws {
        // Each SD 2.x / SD-Turbo case with its per-step latents (the SDDTests run the same cases through `sdd generate`).
        for (model, folder) in [("tiny-sd2-v", "sd2-v"), ("tiny-sd2-base", "sd2-base"), ("tiny-sd-turbo", "sd-turbo")] {
            XCTAssertGreaterThanOrEqual(try assertPipelineMatchesReference(
                model: ModelFixtures.root.appendingPathComponent(model), folder: folder), 2)
        }
    }

    /// LCM 4 steps (guidance 1, and 1.5 with a batch of 2), DDIM trailing 4 steps at guidance 0 with a negative
    /// prompt (diffusers runs no unconditional branch: guidance would give the unconditional prediction), TCD eta 0.3.
    func testFewStepCasesMatchDiffusers() throws {
        let cases = try assertPipelineMatchesReference(model: ModelFixtures.tinyModel, folder: "fewstep")
        XCTAssertGreaterThanOrEqual(cases, 4)
    }

    func testTheSameSeedGivesTheSameImage() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "a red circle")
        s.steps = 3
        s.seed = 7
        let a = try pipeline.generate(s)
        let b = try pipeline.generate(s)
        XCTAssertEqual(a.images, b.images)
        s.seed = 8
        let c = try pipeline.generate(s)
        XCTAssertNotEqual(a.images, c.images)
    }

    func testACancelledGenerationStopsAtTheStepItWasCancelledAt() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "a blue square")
        s.steps = 10
        s.seed = 1
        var seen = 0
        XCTAssertThrowsError(try pipeline.generate(s) { p in
            seen = p.step
            return p.step < 3
        }) { XCTAssertEqual($0 as? PipelineError, .cancelled) }
        XCTAssertEqual(seen, 3)
    }

    func testACancelDuringATiledDecodeStopsBetweenTilesAndTheGenerationCanStillFinish() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        let tiled = RunContext(vaeTiling: VAETiling(tileLatentSize: 4, scaleFactor: pipeline.model.vaeScaleFactor))
        var s = GenerationSettings(prompt: "a blue square")
        s.steps = 2
        s.seed = 1
        let generation = try pipeline.begin(s, context: tiled)
        var asked = 0
        XCTAssertThrowsError(try generation.finish { asked += 1; return asked < 2 }) {
            XCTAssertEqual($0 as? PipelineError, .cancelled)
        }
        XCTAssertEqual(asked, 2, "stopped after the second tile, not at the end")
        XCTAssertEqual(generation.state.stepIndex, generation.state.totalSteps, "the denoised latents are kept")
        let finished = try generation.finish()
        XCTAssertEqual(finished.images, try pipeline.generate(s, context: tiled).images)
    }

    func testAStepCountTheSchedulerCannotPlaceIsRefusedBeforeAnyWork() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "x")
        s.steps = 1000  // PNDM with steps_offset 1 would need timestep 1000, outside 0..<1000
        XCTAssertThrowsError(try pipeline.validate(s)) { XCTAssertTrue("\($0)".contains("pndm with 1000 steps"), "\($0)") }
        s.steps = 999
        XCTAssertNoThrow(try pipeline.validate(s))
    }

    func testSizesThatAreNotMultiplesOfEightAreRefusedByName() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "x")
        s.width = 60
        XCTAssertThrowsError(try pipeline.validate(s)) { error in
            XCTAssertTrue("\(error)".contains("width 60"), "\(error)")
        }
        s.width = 64
        s.steps = 0
        XCTAssertThrowsError(try pipeline.validate(s)) { XCTAssertTrue("\($0)".contains("steps"), "\($0)") }
    }
}

final class CheckpointTests: XCTestCase {
    func testAResumedCheckpointGivesTheSameImageAsAnUninterruptedRun() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        for kind in SchedulerKind.allCases {
            var s = GenerationSettings(prompt: "a green triangle")
            s.steps = 6
            s.seed = 99
            s.scheduler = kind
            s.negativePrompt = "blurry"
            let whole = try pipeline.generate(s)

            let first = try pipeline.begin(s)
            for _ in 0..<3 { _ = try first.next() }
            let saved = try JSONEncoder().encode(first.state)
            let restored = try JSONDecoder().decode(GenerationState.self, from: saved)
            XCTAssertEqual(restored.stepIndex, 3)
            let resumed = try pipeline.resume(restored).finish()
            XCTAssertEqual(resumed.latents.data, whole.latents.data, "\(kind): resumed latents differ")
            XCTAssertEqual(resumed.images, whole.images, "\(kind): resumed image differs")
        }
    }

    func testACheckpointWithLatentsOfTheWrongShapeIsRefused() throws {
        let pipeline = try StableDiffusionPipeline(model: try StableDiffusionModel(url: ModelFixtures.tinyModel))
        var s = GenerationSettings(prompt: "x")
        s.steps = 2
        s.seed = 1
        var state = try pipeline.begin(s).state
        state.latents = Tensor(zeros: [1, 4, 3, 3])
        XCTAssertThrowsError(try pipeline.resume(state))
    }
}
