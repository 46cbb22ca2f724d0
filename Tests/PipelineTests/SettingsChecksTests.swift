// The settings range checks every front end shares (GenerationSettings.checkSide/checkSteps/checkCount):
// the bounds are inclusive, and each refusal names the field and the allowed range.

import XCTest

@testable import Pipeline

final class SettingsChecksTests: XCTestCase {
    func message(_ check: () throws(PipelineError) -> Void) -> String? {
        do { try check() } catch { return error.description }
        return nil
    }

    func testSidesAreMultiplesOfEightAndTheScaleFactorWithinTheLimit() {
        XCTAssertNil(message { () throws(PipelineError) in try GenerationSettings.checkSide("width", 8, scaleFactor: 8) })
        XCTAssertNil(message { () throws(PipelineError) in
            try GenerationSettings.checkSide("height", GenerationSettings.maxSide, scaleFactor: 8)
        })
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSide("width", 60, scaleFactor: 8) },
                       "width 60 is not a multiple of 8")
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSide("height", 0, scaleFactor: 8) },
                       "height 0 is out of range (8…4096)")
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSide("width", 4104, scaleFactor: 8) },
                       "width 4104 is out of range (8…4096)")
        // A VAE with a larger scale factor (16) raises both the multiple and the smallest side.
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSide("width", 8, scaleFactor: 16) },
                       "width 8 is out of range (16…4096)")
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSide("width", 24, scaleFactor: 16) },
                       "width 24 is not a multiple of 16")
    }

    func testStepsAndCountAreWithinTheirLimitsInclusive() {
        XCTAssertNil(message { () throws(PipelineError) in try GenerationSettings.checkSteps(1) })
        XCTAssertNil(message { () throws(PipelineError) in try GenerationSettings.checkSteps(GenerationSettings.maxSteps) })
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSteps(0) },
                       "steps 0 is out of range (1…1000)")
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkSteps(1001) },
                       "steps 1001 is out of range (1…1000)")
        XCTAssertNil(message { () throws(PipelineError) in try GenerationSettings.checkCount(GenerationSettings.maxCount) })
        XCTAssertEqual(message { () throws(PipelineError) in try GenerationSettings.checkCount(17) },
                       "count 17 is out of range (1…16)")
    }
}
