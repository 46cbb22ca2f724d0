// The daemon refuses out-of-range settings with Pipeline's own checks: a 400 invalid_value whose message is the one
// `sdd generate` gives for the same value.

import Daemon
import Foundation
import Pipeline
import SDDAPI
import XCTest

final class RequestChecksTests: XCTestCase {
    func refusal(_ request: JobRequest, sizeMultiple: Int = 8) -> APIError? {
        let defaults = ModelDefaults(width: 64, height: 64, sizeMultiple: sizeMultiple)
        do { _ = try RequestValidation.resolve(request, defaults: defaults) } catch { return error }
        return nil
    }

    func pipelineMessage(_ check: () throws(PipelineError) -> Void) -> String? {
        do { try check() } catch { return error.description }
        return nil
    }

    func testOutOfRangeSettingsGetPipelinesMessageAsInvalidValue() throws {
        let cases: [(JobRequest, String?)] = [
            (JobRequest(prompt: "p", width: 60), pipelineMessage { () throws(PipelineError) in
                try GenerationSettings.checkSide("width", 60, scaleFactor: 8) }),
            (JobRequest(prompt: "p", steps: 0), pipelineMessage { () throws(PipelineError) in
                try GenerationSettings.checkSteps(0) }),
            (JobRequest(prompt: "p", count: 17), pipelineMessage { () throws(PipelineError) in
                try GenerationSettings.checkCount(17) }),
        ]
        for (request, expected) in cases {
            let error = try XCTUnwrap(refusal(request), "\(request)")
            XCTAssertEqual(error.code, .invalidValue)
            XCTAssertEqual(error.message, try XCTUnwrap(expected))
        }
    }

    func testTheModelsScaleFactorRaisesTheSizeMultiple() throws {
        let error = try XCTUnwrap(refusal(JobRequest(prompt: "p", height: 24), sizeMultiple: 16))
        XCTAssertEqual(error.message, "height 24 is not a multiple of 16")
        XCTAssertNil(refusal(JobRequest(prompt: "p", height: 32), sizeMultiple: 16))
    }
}
